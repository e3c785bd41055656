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

__all__ = ["a1111_parameters", "embed", "read_metadata"]

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
    return data[:ihdr_end] + b"".join(chunks) + data[ihdr_end:]


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
    return data[:pos] + segment + data[pos:]


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
    """Re-encode without any metadata, for ``--no-metadata``."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        clean = Image.frombytes(img.mode, img.size, img.tobytes())
        buf = io.BytesIO()
        fmt = {"image/jpeg": "JPEG", "image/webp": "WEBP"}.get(media_type, "PNG")
        clean.save(buf, format=fmt, **({"quality": 95} if fmt != "PNG" else {}))
        return buf.getvalue()
