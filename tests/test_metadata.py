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
