from __future__ import annotations

import io

import pytest
from PIL import Image

from limner import errors
from limner.catalog import get_catalog
from limner.images import encode_mask, load_image, mask_to_edit_area
from limner.types import ImageRequest, Operation
from limner.validate import check_request


def png(w: int, h: int, color: tuple[int, ...] = (10, 20, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def catalog():
    return get_catalog()


def test_negative_prompt_folded_with_warning(catalog) -> None:
    spec = catalog.resolve("openai:gpt-image-2")
    req, warnings = check_request(
        Operation.GENERATE, ImageRequest(prompt="a cat", negative_prompt="dogs"), spec
    )
    assert req.negative_prompt is None
    assert "Avoid: dogs" in req.prompt
    assert any("negative prompt" in w for w in warnings)


def test_aspect_ratio_translated_to_nearest_size(catalog) -> None:
    spec = catalog.resolve("openai:dall-e-3")
    req, warnings = check_request(
        Operation.GENERATE, ImageRequest(prompt="a", aspect_ratio="16:9"), spec
    )
    assert req.size == "1792x1024"
    assert any("16:9" in w for w in warnings)


def test_unsupported_params_warn_not_drop_silently(catalog) -> None:
    spec = catalog.resolve("openai:gpt-image-2")
    req, warnings = check_request(
        Operation.GENERATE, ImageRequest(prompt="a", seed=3, steps=20, guidance=5), spec
    )
    assert req.steps is None and req.guidance is None
    assert len(warnings) == 3


@pytest.mark.parametrize(
    ("model", "op", "kwargs", "error"),
    [
        ("openai:dall-e-3", Operation.VARIATION, {}, errors.UnsupportedOperationError),
        (
            "openai:gpt-image-2",
            Operation.GENERATE,
            {"quality": "ultra"},
            errors.InvalidRequestError,
        ),
        ("openai:dall-e-3", Operation.GENERATE, {"style": "anime"}, errors.InvalidRequestError),
        ("openai:gpt-image-2", Operation.GENERATE, {"n": 65}, errors.InvalidRequestError),
        ("openai:gpt-image-2", Operation.GENERATE, {"prompt": "   "}, errors.InvalidRequestError),
        (
            "openai:gpt-image-2",
            Operation.GENERATE,
            {"background": "transparent", "output_format": "jpeg"},
            errors.InvalidRequestError,
        ),
        ("openai:gpt-image-2", Operation.EDIT, {}, errors.InvalidRequestError),
    ],
)
def test_refusals(catalog, model, op, kwargs, error) -> None:
    fields = {"prompt": "a cat", **kwargs}
    with pytest.raises(error):
        check_request(op, ImageRequest(**fields), catalog.resolve(model), catalog)


def test_unsupported_operation_names_models_that_can(catalog) -> None:
    image = load_image(png(64, 64))
    with pytest.raises(errors.UnsupportedOperationError) as info:
        check_request(
            Operation.VARIATION,
            ImageRequest(images=[image]),
            catalog.resolve("openai:gpt-image-2"),
            catalog,
        )
    assert "openai:dall-e-2" not in str(info.value)  # retired models are not suggested


def test_mask_size_mismatch(catalog) -> None:
    image, mask = load_image(png(64, 64)), load_image(png(32, 32), name="mask.png")
    with pytest.raises(errors.InputImageError, match="mask is 32x32"):
        check_request(
            Operation.INPAINT,
            ImageRequest(prompt="x", images=[image], mask=mask),
            catalog.resolve("openai:gpt-image-2"),
        )


def test_mask_conventions_round_trip() -> None:
    white = Image.new("L", (8, 8), 0)
    white.paste(255, (0, 0, 4, 8))
    buf = io.BytesIO()
    white.save(buf, format="PNG")
    mask = load_image(buf.getvalue())
    area = mask_to_edit_area(mask)
    assert area.getpixel((1, 1)) == 255 and area.getpixel((6, 1)) == 0
    alpha = Image.open(io.BytesIO(encode_mask(mask, "alpha")))
    assert alpha.getchannel("A").getpixel((1, 1)) == 0  # transparent = edit, OpenAI's convention
    assert alpha.getchannel("A").getpixel((6, 1)) == 255
    black = Image.open(io.BytesIO(encode_mask(mask, "black")))
    assert black.getpixel((1, 1)) == 0 and black.getpixel((6, 1)) == 255
    # an RGBA mask whose transparent pixels mark the area reads the same
    again = mask_to_edit_area(load_image(encode_mask(mask, "alpha")))
    assert again.tobytes() == area.tobytes()


def test_load_image_refuses_non_images_and_bombs(tmp_path, monkeypatch) -> None:
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    with pytest.raises(errors.InputImageError, match="not an image"):
        load_image(bad)
    with pytest.raises(errors.InputImageError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    import limner.images as images

    with pytest.raises(errors.InputImageError, match="above the limit"):
        images.open_checked(png(300, 300), max_pixels=10_000)
