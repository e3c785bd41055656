"""Untrusted inputs: decompression bombs are refused before decoding, fringe formats are not
parsed, animations give their first frame with a warning, broken files give a clear error."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from _ops_photos import photo, png_bomb, png_bytes
from limner import errors
from limner.images import load_image, open_checked
from limner.ops._common import read_image


@pytest.mark.parametrize(("width", "height"), [(12_000, 12_000), (20_000, 20_000)])
def test_png_bombs_are_refused_before_decoding(width: int, height: int) -> None:
    bomb = png_bomb(width, height)
    assert len(bomb) < 600_000  # hundreds of megapixels in a few hundred kilobytes
    with pytest.raises(errors.InputImageError, match="not decoded") as info:
        open_checked(bomb, name="bomb.png")
    assert "LIMNER_MAX_INPUT_PIXELS" in (info.value.hint or "")


def test_a_lower_pixel_cap_applies() -> None:
    with pytest.raises(errors.InputImageError, match="above the limit of 1,000"):
        open_checked(png_bytes(photo("coffee", 64)), max_pixels=1000)


def test_fringe_formats_are_not_parsed() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PCX")
    with pytest.raises(errors.InputImageError, match="not an image limner can read"):
        open_checked(buf.getvalue())
    with pytest.raises(errors.InputImageError, match="not an image limner can read"):
        open_checked(b"%PDF-1.7\n" + bytes(100))


def test_truncated_image_is_a_clear_error() -> None:
    data = png_bytes(photo("coffee", 64))
    with pytest.raises(errors.InputImageError, match="could not be decoded"):
        open_checked(data[: len(data) // 2])


def test_animated_input_gives_its_first_frame_with_a_warning() -> None:
    frames = [
        Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    ]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    img, notes = read_image(buf.getvalue(), name="anim.gif")
    assert notes == ["anim.gif is animated; only its first frame is used."]
    assert img.convert("RGB").getpixel((4, 4)) == (255, 0, 0)
    encoded = load_image(buf.getvalue())
    assert encoded.media_type == "image/png" and encoded.data[:8] == b"\x89PNG\r\n\x1a\n"
