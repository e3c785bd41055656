"""Quality checks on real photos: blur, exposure, size and aspect, OCR text, near-duplicates."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from _ops_photos import photo
from limner import errors
from limner.ops.checks import (
    Checks,
    check_image,
    check_images,
    parse_size,
    sharpness,
    tesseract_available,
    text_match_score,
)

needs_tesseract = pytest.mark.skipif(
    not tesseract_available(),
    reason="Tesseract OCR is not installed (apt-get install tesseract-ocr; pip install pytesseract)",
)
NO_PIXEL_CHECKS = {"min_sharpness": None, "max_clipped": None}


def with_text(text: str, size: tuple[int, int] = (420, 160)) -> Image.Image:
    img = photo("coffee").resize(size)
    draw = ImageDraw.Draw(img)
    draw.rectangle([10, 40, size[0] - 10, 120], fill=(250, 250, 245))
    draw.text((24, 52), text, fill=(20, 20, 20), font=ImageFont.load_default(size=48))
    return img


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_blur_is_caught_on_real_photos(name: str) -> None:
    sharp = photo(name)
    blurred = sharp.filter(ImageFilter.GaussianBlur(3))
    assert sharpness(sharp) > 10 * sharpness(blurred)
    assert check_image(sharp, Checks()).passed
    report = check_image(blurred, Checks())
    assert not report.passed and report.reasons[0].startswith("sharpness: blurry")


def test_exposure() -> None:
    img = photo("chelsea")
    dark = ImageEnhance.Brightness(img).enhance(0.02)
    bright = ImageEnhance.Brightness(img).enhance(6.0)
    assert check_image(img, Checks(min_sharpness=None)).passed
    assert "under-exposed" in check_image(dark, Checks(min_sharpness=None)).reasons[0]
    assert "over-exposed" in check_image(bright, Checks(min_sharpness=None)).reasons[0]


def test_size_and_aspect() -> None:
    img = photo("coffee")  # 600x400
    assert check_image(img, Checks(min_size=(600, 400), aspect="3:2", **NO_PIXEL_CHECKS)).passed
    report = check_image(img, Checks(min_size=(1024, 1024), aspect="16:9", **NO_PIXEL_CHECKS))
    assert [c.name for c in report.checks if not c.passed] == ["resolution", "aspect"]
    assert parse_size("1024x768") == (1024, 768)
    with pytest.raises(errors.InvalidRequestError, match="WIDTHxHEIGHT"):
        parse_size("big")


def test_near_duplicates_across_a_set() -> None:
    a = photo("astronaut", 256)
    near = ImageEnhance.Brightness(a.resize((200, 200))).enhance(1.05)
    other = photo("coffee", 256)
    reports = check_images([("a", a), ("near", near), ("other", other)], Checks(**NO_PIXEL_CHECKS))
    assert [r.passed for r in reports] == [True, False, True]
    assert "near-duplicate of a" in reports[1].reasons[0]


def test_text_match_score() -> None:
    assert text_match_score("FAION", "Welcome to faion!") == 1.0
    assert 0.7 < text_match_score("FAION", "FA1ON") < 1.0
    assert text_match_score("FAION", "a cat on a sofa") < Checks().text_threshold
    assert text_match_score("FAION", "") == 0.0


@needs_tesseract
def test_ocr_finds_rendered_text_and_misses_absent_text() -> None:
    img = with_text("FAION 2026")
    found = check_image(img, Checks(expect_text="FAION", **NO_PIXEL_CHECKS))
    assert found.passed and "FAION" in found.checks[0].value["found"].upper()
    report = check_image(img, Checks(expect_text="PLANET", **NO_PIXEL_CHECKS))
    assert not report.passed and "PLANET" in report.reasons[0]


@needs_tesseract
def test_text_in_a_busy_photo_is_found_by_the_sparse_pass() -> None:
    img = photo("coffee").resize((1024, 1024))
    draw = ImageDraw.Draw(img)
    draw.rectangle([60, 420, 964, 600], fill=(250, 250, 245))
    draw.text((100, 450), "FAION LAUNCH", fill=(20, 20, 20), font=ImageFont.load_default(size=80))
    assert check_image(img, Checks(expect_text="FAION LAUNCH", **NO_PIXEL_CHECKS)).passed
