"""Parameters embedded in saved images.

PNG: the AUTOMATIC1111 ``parameters`` text chunk (what "PNG Info" tools read) plus a ``limner``
chunk holding JSON. JPEG and WebP: the same in XMP, with the IPTC digital source type that marks
the image as made by a trained algorithm. Keys and secrets never enter: only the fields listed in
``SAFE_FIELDS`` are written.
"""

from __future__ import annotations

import io
import json
import zlib
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["a1111_parameters", "embed", "read_metadata", "strip"]

IPTC_TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
SAFE_FIELDS = (
    "prompt", "negative_prompt", "model", "provider", "seed", "steps", "guidance", "size",
    "quality", "style", "scheduler", "strength", "operation", "revised_prompt", "generation_id",
    "created_at", "limner_version",
)  # fmt: skip


def a1111_parameters(meta: dict[str, Any]) -> str:
    """The ``parameters`` string as AUTOMATIC1111 writes it."""
    lines = [meta.get("prompt") or ""]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    pairs = []
    for label, key in (
        ("Steps", "steps"),
        ("Sampler", "scheduler"),
        ("CFG scale", "guidance"),
        ("Seed", "seed"),
        ("Size", "size"),
    ):
        if meta.get(key) is not None:
            pairs.append(f"{label}: {meta[key]}")
    pairs.append(f"Model: {meta.get('model', '')}")
    if meta.get("strength") is not None:
        pairs.append(f"Denoising strength: {meta['strength']}")
    pairs.append("Version: limner")
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def _xmp(meta: dict[str, Any]) -> bytes:
    body = escape(json.dumps(meta, sort_keys=True))
    params = escape(a1111_parameters(meta))
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
        ' xmlns:limner="https://limner.dev/ns/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"'
        f' Iptc4xmpExt:DigitalSourceType="{IPTC_TRAINED}">'
        f"<limner:parameters>{params}</limner:parameters>"
        f"<limner:json>{body}</limner:json>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()


def _clean(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in SAFE_FIELDS if meta.get(k) is not None}


def embed(data: bytes, media_type: str, meta: dict[str, Any]) -> bytes:
    """Return ``data`` with ``meta`` embedded. PNG and JPEG keep their pixels untouched."""
    meta = _clean(meta)
    if media_type == "image/png":
        return _embed_png(data, meta)
    if media_type == "image/jpeg":
        return _embed_jpeg(data, _xmp(meta))
    if media_type == "image/webp":
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            buf = io.BytesIO()
            img.save(buf, format="WEBP", quality=95, xmp=_xmp(meta))
            return buf.getvalue()
    return data


def _spliced(data: bytes, at: int, insert: bytes) -> bytes:
    """``insert`` put into ``data`` at ``at``, in one copy of a megabytes-long image."""
    view = memoryview(data)
    return b"".join((view[:at], insert, view[at:]))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(4, "big")
        + kind
        + payload
        + zlib.crc32(kind + payload).to_bytes(4, "big")
    )


def _embed_png(data: bytes, meta: dict[str, Any]) -> bytes:
    """Splice text chunks in after IHDR: the image data is not decoded or re-encoded."""
    signature = b"\x89PNG\r\n\x1a\n"
    if not data.startswith(signature) or data[12:16] != b"IHDR":
        return data
    ihdr_end = 8 + 12 + int.from_bytes(data[8:12], "big")
    params = a1111_parameters(meta)
    try:
        params_chunk = _png_chunk(b"tEXt", b"parameters\x00" + params.encode("latin-1"))
    except UnicodeEncodeError:  # tEXt is Latin-1 only; iTXt carries UTF-8, as A1111 does
        params_chunk = _png_chunk(b"iTXt", b"parameters\x00\x00\x00\x00\x00" + params.encode())
    chunks = (
        params_chunk,
        _png_chunk(
            b"iTXt", b"limner\x00\x00\x00\x00\x00" + json.dumps(meta, sort_keys=True).encode()
        ),
        _png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + _xmp(meta)),
    )
    return _spliced(data, ihdr_end, b"".join(chunks))


def _embed_jpeg(data: bytes, xmp: bytes) -> bytes:
    """Insert an XMP APP1 segment after SOI (and after JFIF APP0 if present), no re-encoding."""
    header = b"http://ns.adobe.com/xap/1.0/\x00"
    payload = header + xmp
    if len(payload) + 2 > 0xFFFF or data[:2] != b"\xff\xd8":
        return data
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    pos = 2
    if data[2:4] == b"\xff\xe0":
        pos = 4 + int.from_bytes(data[4:6], "big")
    return _spliced(data, pos, segment)


def read_metadata(data: bytes) -> dict[str, Any]:
    """The limner metadata of an image, from a PNG chunk or XMP; {} when there is none."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        text = img.info.get("limner")
        if text:
            return dict(json.loads(text))
        xmp = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8", "replace")
    if xmp and "<limner:json>" in xmp:
        from xml.sax.saxutils import unescape

        inner = xmp.split("<limner:json>", 1)[1].split("</limner:json>", 1)[0]
        return dict(json.loads(unescape(inner)))
    return {}


def strip(data: bytes, media_type: str) -> bytes:
    """``data`` without metadata, for ``--no-metadata`` and ``limner provenance --strip``.

    PNG, JPEG and WebP lose every text, EXIF, XMP, IPTC, C2PA and comment block by rewriting
    the container alone: the coded pixels are copied byte for byte, and what decoding needs
    (colour profile, transparency, animation) stays. An EXIF orientation goes with the EXIF;
    generated images carry none. Other raster formats are re-encoded; SVG and bytes no decoder
    reads come back unchanged. ``media_type`` is a fallback: the bytes' signature decides.
    """
    kind = _sniff(data) or media_type
    rewrite = {"image/png": _strip_png, "image/jpeg": _strip_jpeg, "image/webp": _strip_webp}
    if kind in rewrite:
        try:
            return rewrite[kind](data)
        except ValueError:  # a damaged container: let the decoder decide what is left
            pass
    return _strip_by_reencoding(data)


def _sniff(data: bytes) -> str | None:
    if data.startswith(PNG_SIGNATURE):
        return "image/png"
    if data[:2] == b"\xff\xd8":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary PNG chunks that change how the image looks (or animates). Every other ancillary
# chunk (tEXt, zTXt, iTXt, eXIf, tIME, caBX, private ones) is metadata and goes; critical
# chunks (upper-case first letter) always stay, since a decoder must understand them.
PNG_RENDERING_CHUNKS = {
    b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"cICP", b"mDCV", b"mDCv", b"cLLI", b"cLLi",
    b"sBIT", b"bKGD", b"pHYs", b"hIST", b"sPLT", b"acTL", b"fcTL", b"fdAT",
}  # fmt: skip


def _strip_png(data: bytes) -> bytes:
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    kept, pos = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError("truncated PNG chunk")
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise ValueError("truncated PNG chunk")
        if kind[:1].isupper() or kind in PNG_RENDERING_CHUNKS:
            kept.append(data[pos:end])
        pos = end
        if kind == b"IEND":  # anything appended after the image is dropped too
            break
    return b"".join(kept)


JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 carry no length


def _keep_jpeg_segment(marker: int, payload: bytes) -> bool:
    """Whether a JPEG marker segment is needed to decode or colour the image."""
    if marker == 0xFE:  # COM: a comment
        return False
    if 0xE0 <= marker <= 0xEF:  # APP0-15: only the JFIF header, ICC profile and Adobe colour
        return (
            (marker == 0xE0 and payload[:5] in (b"JFIF\x00", b"JFXX\x00"))
            or (marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00"))
            or (marker == 0xEE and payload.startswith(b"Adobe"))
        )
    return True


def _jpeg_scan_end(data: bytes, pos: int) -> int:
    """Where the entropy-coded data starting at ``pos`` ends: at the next real marker."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            raise ValueError("JPEG scan without an end")
        follower = data[pos + 1]
        if follower == 0x00 or follower in JPEG_STANDALONE or follower == 0xFF:
            pos += 1  # a stuffed 0xFF, a restart marker or fill: still inside the scan
            continue
        return pos


def _strip_jpeg(data: bytes) -> bytes:
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    kept, pos = [data[:2]], 2
    while True:
        if pos + 2 > len(data) or data[pos] != 0xFF:
            raise ValueError("JPEG marker expected")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:  # EOI; anything appended after it is dropped
            kept.append(data[pos : pos + 2])
            return b"".join(kept)
        if marker in JPEG_STANDALONE:
            kept.append(data[pos : pos + 2])
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise ValueError("truncated JPEG segment")
        if _keep_jpeg_segment(marker, data[pos + 4 : end]):
            kept.append(data[pos:end])
        pos = end
        if marker == 0xDA:  # SOS: the coded pixels follow, copied as they are
            scan_end = _jpeg_scan_end(data, pos)
            kept.append(data[pos:scan_end])
            pos = scan_end


# WebP chunks needed to show the image; EXIF, XMP and anything else go.
WEBP_IMAGE_CHUNKS = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP"}
WEBP_EXIF_XMP_FLAGS = 0x08 | 0x04  # VP8X feature bits announcing EXIF and XMP chunks


def _strip_webp(data: bytes) -> bytes:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP")
    end = min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    kept, pos = [], 12
    while pos + 8 <= end:
        fourcc, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        chunk_end = pos + 8 + size + (size & 1)  # chunks are padded to an even length
        if pos + 8 + size > end:
            raise ValueError("truncated WebP chunk")
        chunk = data[pos : min(chunk_end, end)]
        if fourcc == b"VP8X" and size >= 1:
            chunk = chunk[:8] + bytes([chunk[8] & ~WEBP_EXIF_XMP_FLAGS & 0xFF]) + chunk[9:]
        if fourcc in WEBP_IMAGE_CHUNKS:
            kept.append(chunk)
        pos = chunk_end
    body = b"WEBP" + b"".join(kept)
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def _strip_by_reencoding(data: bytes) -> bytes:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt = img.format or "PNG"
            clean = img.copy()  # keeps a palette; the metadata lives in .info, emptied here
    except (UnidentifiedImageError, OSError, SyntaxError):
        return data
    clean.info = {}
    buf = io.BytesIO()
    clean.save(buf, format=fmt)
    return buf.getvalue()
