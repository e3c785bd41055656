"""Masks (shapes, colour, alpha, subject, refinements) and outpaint canvases."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from _ops_photos import photo, png_bytes
from limner import errors
from limner.ops import masks
from limner.ops.outpaint import Padding, build_canvas, outpaint, padding_for_aspect


def white(mask: Image.Image) -> int:
    return int((np.asarray(mask) > 127).sum())


def test_rectangle_and_polygon() -> None:
    rect = masks.rectangle_mask((40, 30), masks.parse_box("10,5,30,25"))
    assert white(rect) == 20 * 20 and rect.getpixel((10, 5)) == 255 and rect.getpixel((30, 25)) == 0
    tri = masks.polygon_mask((40, 40), masks.parse_points("0,0 39,0 0,39"))
    assert 700 < white(tri) < 900 and tri.getpixel((2, 2)) == 255 and tri.getpixel((38, 38)) == 0
    with pytest.raises(errors.InvalidRequestError, match="x1 > x0"):
        masks.parse_box("10,10,5,5")
    with pytest.raises(errors.InvalidRequestError, match="3 points"):
        masks.polygon_mask((10, 10), [(0, 0), (1, 1)])


def test_colour_range_finds_the_sky_of_a_real_photo() -> None:
    img = photo("coffee", 120)
    img.paste((0, 200, 0), (10, 10, 30, 30))
    mask = masks.colour_range_mask(img, (0, 200, 0), tolerance=10)
    assert white(mask) == 400


def test_alpha_mask_and_its_absence() -> None:
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 5, 10))
    assert white(masks.alpha_mask(img)) == 50
    with pytest.raises(errors.InputImageError, match="no alpha"):
        masks.alpha_mask(Image.new("RGB", (4, 4)))


def test_grow_shrink_feather_invert_preview() -> None:
    base = masks.rectangle_mask((50, 50), (20, 20, 30, 30))
    assert white(masks.grow(base, 3)) == 16 * 16
    assert white(masks.shrink(base, 2)) == 6 * 6
    soft = np.asarray(masks.feather(base, 3))
    assert 0 < soft[20, 17] < 255
    assert white(masks.invert(base)) == 2500 - 100
    tinted = masks.preview(Image.new("RGB", (50, 50), (0, 0, 255)), base)
    assert tinted.getpixel((25, 25)) != (0, 0, 255) and tinted.getpixel((0, 0)) == (0, 0, 255)


def test_subject_and_background_areas_are_complements() -> None:
    img = Image.new("RGB", (96, 96), (40, 60, 40))
    ImageDraw.Draw(img).ellipse([30, 30, 66, 66], fill=(240, 200, 30))
    subject = masks.background_mask(img, None, "subject")
    background = masks.background_mask(img, None, "background")
    assert subject.getpixel((48, 48)) == 255 and background.getpixel((48, 48)) == 0
    assert white(subject) + white(background) == 96 * 96


def test_points_without_a_segment_anything_model_say_what_to_do() -> None:
    with pytest.raises(errors.InvalidRequestError, match="segment-anything") as info:
        masks.sam_mask(Image.new("RGB", (8, 8)), [(2.0, 2.0)], None)
    assert "--sam-model" in (info.value.hint or "")


def test_outpaint_canvas_follows_the_recipe() -> None:
    img = photo("chelsea", 120)
    canvas, mask = build_canvas(img, Padding(left=16, right=8, top=0, bottom=8))
    assert canvas.size == (img.width + 24, img.height + 8) and canvas.mode == "RGBA"
    assert canvas.size[0] % 8 == 0 and canvas.size[1] % 8 == 0
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((16 + 5, 5)) == 0
    assert canvas.getpixel((0, 0))[3] == 0 and canvas.getpixel((20, 5))[3] == 255
    inner = canvas.crop((16, 0, 16 + img.width, img.height)).convert("RGB")
    assert np.array_equal(np.asarray(inner), np.asarray(img))
    with pytest.raises(errors.InvalidRequestError, match="Nothing to outpaint"):
        build_canvas(img, Padding())


def test_padding_for_aspect() -> None:
    pad = padding_for_aspect(300, 300, "16:9")
    assert (pad.left, pad.right, pad.top, pad.bottom) == (
        116,
        117,
        0,
        0,
    )  # 300 + 233 = 533 = 300 * 16 / 9
    pad = padding_for_aspect(1600, 300, "16:9")
    assert pad.top + pad.bottom == 600
    with pytest.raises(errors.InvalidRequestError, match="W:H"):
        padding_for_aspect(10, 10, "wide")


def test_outpaint_runs_on_an_inpainting_model(openai_env: Any) -> None:
    from limner.client import Limner

    server, _ = openai_env
    with Limner() as client:
        result = outpaint(
            client,
            png_bytes(photo("coffee", 256)),
            model="openai:gpt-image-2",
            prompt="more of the table",
            to_aspect="16:9",
        )
        entry = client.store.get(result.generation_id or "")
    assert result.operation.value == "inpaint" and result.images
    assert entry is not None and entry.params.get("mask")
    assert server.app.state.emulator.stats["POST /v1/images/edits"] == 1


@pytest.mark.parametrize(
    ("provider", "model", "key_env", "path"),
    [
        (
            "stability",
            "stability:outpaint",
            "STABILITY_API_KEY",
            "POST /v2beta/stable-image/edit/outpaint",
        ),
        ("bfl", "bfl:flux-pro-1.0-expand", "BFL_API_KEY", "POST /v1/flux-pro-1.0-expand"),
    ],
)
def test_outpaint_only_models_get_the_image_and_how_far_to_expand(
    emulator: Any,
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
    model: str,
    key_env: str,
    path: str,
) -> None:
    from limner.client import Limner
    from limner.ops.outpaint import Padding

    source = photo("coffee", 64)
    server, url = emulator(provider)
    monkeypatch.setenv(key_env, "test-key")
    monkeypatch.setenv(f"LIMNER_{provider.upper()}_BASE_URL", url)
    with Limner() as client:
        result = outpaint(
            client, png_bytes(source), model=model, prompt="more table",
            pad=Padding(right=32, bottom=16), provider_options={"poll_interval": 0.01},
        )  # fmt: skip
    assert result.operation.value == "outpaint"
    expected = (source.width + 32, source.height + 16)
    assert (result.images[0].width, result.images[0].height) == expected
    assert server.app.state.emulator.stats[path] == 1
