from __future__ import annotations

import io

import pytest
from PIL import Image

from limner.metadata import IPTC_TRAINED, a1111_parameters, embed, read_metadata, strip

META = {"prompt": "a cat", "negative_prompt": "blurry", "model": "local:sd-turbo", "seed": 42, "steps": 4,
        "guidance": 1.5, "size": "64x64", "api_key": "sk-secret"}  # fmt: skip


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format=fmt)
    return buf.getvalue()


def test_png_carries_a1111_parameters_and_json() -> None:
    out = embed(encoded("PNG"), "image/png", META)
    img = Image.open(io.BytesIO(out))
    params = img.info["parameters"]
    assert params.splitlines()[0] == "a cat"
    assert "Negative prompt: blurry" in params
    assert "Steps: 4, CFG scale: 1.5, Seed: 42, Size: 64x64, Model: local:sd-turbo" in params
    assert read_metadata(out)["seed"] == 42
    assert IPTC_TRAINED in img.info["XML:com.adobe.xmp"]
    assert b"sk-secret" not in out


@pytest.mark.parametrize(("fmt", "media"), [("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_jpeg_and_webp_carry_xmp(fmt: str, media: str) -> None:
    source = encoded(fmt)
    out = embed(source, media, META)
    assert read_metadata(out)["prompt"] == "a cat"
    assert IPTC_TRAINED.encode() in out
    assert b"sk-secret" not in out
    if fmt == "JPEG":  # pixels untouched: the segment is spliced in, not re-encoded
        assert Image.open(io.BytesIO(out)).tobytes() == Image.open(io.BytesIO(source)).tobytes()


def test_strip_removes_everything() -> None:
    out = strip(embed(encoded("PNG"), "image/png", META), "image/png")
    assert read_metadata(out) == {}
    assert "parameters" not in Image.open(io.BytesIO(out)).info


def test_a1111_parameters_without_optional_fields() -> None:
    assert a1111_parameters({"prompt": "p", "model": "m"}) == "p\nModel: m, Version: limner"


def test_png_unicode_prompt_survives() -> None:
    out = embed(encoded("PNG"), "image/png", {**META, "prompt": "café 東京 🌸"})
    img = Image.open(io.BytesIO(out))
    assert img.info["parameters"].startswith("café 東京 🌸")
    assert read_metadata(out)["prompt"] == "café 東京 🌸"
    assert img.tobytes() == Image.open(io.BytesIO(encoded("PNG"))).tobytes()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of each PNG chunk."""
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


TEXT_CHUNKS = {b"tEXt", b"iTXt", b"zTXt", b"eXIf", b"tIME", b"caBX"}


def test_strip_keeps_png_pixels_palette_and_transparency_byte_for_byte() -> None:
    from PIL import PngImagePlugin

    img = Image.new("P", (16, 8), 3)
    img.putpalette([i % 256 for i in range(768)])
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "from the provider")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>")
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, transparency=3, exif=Image.Exif().tobytes())
    signed = embed(buf.getvalue(), "image/png", META)
    # a C2PA manifest store rides in a caBX chunk just before IEND
    c2pa = len(b"jumb").to_bytes(4, "big") + b"caBX" + b"jumb" + b"\0\0\0\0"
    source = signed[:-12] + c2pa + signed[-12:] + b"trailing bytes"
    out = strip(source, "image/png")
    kinds = [kind for kind, _ in png_chunks(out)]
    assert not TEXT_CHUNKS & set(kinds)
    assert {b"PLTE", b"tRNS"} <= set(kinds)
    idat = [p for k, p in png_chunks(source) if k == b"IDAT"]
    assert [p for k, p in png_chunks(out) if k == b"IDAT"] == idat  # not re-encoded
    clean = Image.open(io.BytesIO(out))
    assert clean.mode == "P" and clean.info.get("transparency") == 3
    original = Image.open(io.BytesIO(source))
    assert clean.convert("RGBA").tobytes() == original.convert("RGBA").tobytes()
    assert out.endswith(b"IEND\xaeB`\x82")


@pytest.mark.parametrize("progressive", [False, True])
def test_strip_removes_jpeg_exif_xmp_iptc_and_comments_without_reencoding(
    progressive: bool,
) -> None:
    exif = Image.Exif()
    exif[0x010E] = "a provider description"
    buf = io.BytesIO()
    Image.effect_mandelbrot((48, 32), (-2, -1, 1, 1), 20).convert("RGB").save(
        buf, format="JPEG", exif=exif.tobytes(), comment=b"provider comment", progressive=progressive,
        icc_profile=b"\0" * 128,
    )  # fmt: skip
    data = embed(buf.getvalue(), "image/jpeg", META)
    iptc = b"\xff\xed\x00\x10Photoshop 3.0\x00"  # an APP13 (IPTC) segment, 16 bytes long
    source = data[:2] + iptc + data[2:] + b"appended"
    out = strip(source, "image/jpeg")
    for marker in (b"Exif\x00", b"http://ns.adobe.com/xap", b"provider comment", b"Photoshop"):
        assert marker in source and marker not in out
    assert read_metadata(out) == {}
    clean = Image.open(io.BytesIO(out))
    assert clean.info.get("icc_profile") == b"\0" * 128  # the colour profile stays
    assert clean.tobytes() == Image.open(io.BytesIO(source)).tobytes()
    assert out.endswith(b"\xff\xd9")


def test_strip_removes_webp_exif_and_xmp_and_clears_their_flags() -> None:
    exif = Image.Exif()
    exif[0x010E] = "a provider description"
    buf = io.BytesIO()
    Image.new("RGBA", (20, 10), (5, 6, 7, 100)).save(
        buf,
        format="WEBP",
        lossless=True,
        exif=exif.tobytes(),
        xmp=b"<x:xmpmeta>provider</x:xmpmeta>",
    )
    source = buf.getvalue()
    assert b"EXIF" in source and b"XMP " in source
    out = strip(source, "image/webp")
    assert b"EXIF" not in out and b"XMP " not in out and b"provider" not in out
    assert int.from_bytes(out[4:8], "little") == len(out) - 8
    vp8x = out.index(b"VP8X")
    assert out[vp8x + 8] & 0x0C == 0
    clean = Image.open(io.BytesIO(out))
    assert "exif" not in clean.info and "xmp" not in clean.info
    assert clean.tobytes() == Image.open(io.BytesIO(source)).tobytes()


def test_strip_reencodes_other_formats_and_leaves_svg_alone() -> None:
    buf = io.BytesIO()
    Image.new("P", (8, 8), 1).save(buf, format="GIF", comment=b"provider comment")
    assert b"provider comment" in buf.getvalue()
    out = strip(buf.getvalue(), "image/gif")
    assert b"provider comment" not in out and Image.open(io.BytesIO(out)).format == "GIF"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><metadata>m</metadata></svg>'
    assert strip(svg, "image/svg+xml") == svg


def test_no_metadata_stores_provider_images_without_the_providers_metadata(
    emulator, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """The Gemini emulator marks its PNGs the way Google does (a credit text chunk and XMP)."""
    from click.testing import CliRunner

    from limner.cli import cli
    from limner.client import Limner
    from limner.types import ImageRequest, Operation

    _, url = emulator("gemini")
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-test")
    monkeypatch.setenv("LIMNER_GEMINI_BASE_URL", url)
    request = ImageRequest(prompt="a kite", model="gemini:gemini-2.5-flash-image", seed=3)
    with Limner() as client:
        kept = client.run(Operation.GENERATE, request, use_cache=False).images[0]
        with_meta = Image.open(io.BytesIO(kept.data))
        assert with_meta.info["Credit"] == "Made with Google AI"  # the provider's, kept
        assert with_meta.info["parameters"].startswith("a kite")  # and limner's, added
    with Limner(embed_metadata=False) as client:
        bare = client.run(Operation.GENERATE, request, use_cache=False).images[0]
    assert bare.path is not None
    stored = bare.path.read_bytes()
    assert not TEXT_CHUNKS & {kind for kind, _ in png_chunks(stored)}
    idat = [payload for kind, payload in png_chunks(kept.data) if kind == b"IDAT"]
    assert [payload for kind, payload in png_chunks(stored) if kind == b"IDAT"] == idat
    out = tmp_path / "bare.png"
    result = CliRunner().invoke(
        cli, ["generate", "a kite", "-m", "gemini:gemini-2.5-flash-image", "--seed", "3",
              "--no-metadata", "--no-cache", "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == stored
