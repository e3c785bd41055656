"""Masks for inpainting and compositing: white (255) marks the area to change.

Sources: a rectangle, a polygon, a colour range, the alpha channel, the background-removal model
(subject or background), or point prompts with a segment-anything ONNX model the user has.
Refinements: grow, shrink, feather, invert; and a preview that tints the masked area.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from limner import errors

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "alpha_mask",
    "background_mask",
    "colour_range_mask",
    "feather",
    "grow",
    "invert",
    "parse_box",
    "parse_points",
    "polygon_mask",
    "preview",
    "rectangle_mask",
    "sam_mask",
    "shrink",
]


def _numbers(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(";", ",").replace(" ", ",").split(",") if v]
    except ValueError as exc:
        raise errors.InvalidRequestError(
            f"{what} {text!r} is not a list of numbers.", param=what
        ) from exc


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``x0,y0,x1,y1`` in pixels."""
    values = _numbers(text, "rect")
    if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
        raise errors.InvalidRequestError(
            f"Rectangle {text!r} is not x0,y0,x1,y1 with x1 > x0 and y1 > y0.", param="rect"
        )
    x0, y0, x1, y1 = (int(v) for v in values)
    return x0, y0, x1, y1


def parse_points(text: str) -> list[tuple[float, float]]:
    """``x1,y1,x2,y2,...`` as (x, y) pairs."""
    values = _numbers(text, "points")
    if len(values) < 2 or len(values) % 2:
        raise errors.InvalidRequestError(f"Points {text!r} must be x,y pairs.", param="points")
    return list(zip(values[::2], values[1::2], strict=True))


def rectangle_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image:
    from PIL import Image as PILImage
    from PIL import ImageDraw

    mask = PILImage.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=255)
    return mask


def polygon_mask(size: tuple[int, int], points: list[tuple[float, float]]) -> Image:
    from PIL import Image as PILImage
    from PIL import ImageDraw

    if len(points) < 3:
        raise errors.InvalidRequestError("A polygon needs at least 3 points.", param="polygon")
    mask = PILImage.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    return mask


def colour_range_mask(img: Image, colour: tuple[int, int, int], tolerance: int = 30) -> Image:
    """Pixels within ``tolerance`` (per channel) of ``colour``."""
    import numpy as np
    from PIL import Image as PILImage

    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    close = np.all(np.abs(rgb - np.array(colour[:3], np.int16)) <= tolerance, axis=-1)
    return PILImage.fromarray((close * 255).astype(np.uint8))


def alpha_mask(img: Image) -> Image:
    """Transparent pixels mark the area (the OpenAI convention), as a white-marks mask."""
    if "A" not in img.getbands() and "transparency" not in img.info:
        raise errors.InputImageError(
            "The image has no alpha channel.", hint="Use --rect, --polygon or --colour instead."
        )
    return img.convert("RGBA").getchannel("A").point(lambda a: 255 if a < 128 else 0)


def background_mask(
    img: Image, model: str | None = None, target: Literal["subject", "background"] = "background"
) -> Image:
    from limner.ops.background import subject_mask

    subject, _ = subject_mask(img, model)
    binary = subject.point(lambda v: 255 if v >= 128 else 0)
    return binary if target == "subject" else invert(binary)


def sam_mask(img: Image, points: list[tuple[float, float]], model: str | None) -> Image:
    """A mask from point prompts with a segment-anything model exported to ONNX.

    ``model`` is ``ENCODER.onnx,DECODER.onnx`` in the layout of segment-anything's own export
    (decoder inputs ``image_embeddings``, ``point_coords``, ``point_labels``, ``mask_input``,
    ``has_mask_input``, ``orig_im_size``), with an encoder that takes the 1024-pixel, ImageNet-
    normalised image as ``[1, 3, 1024, 1024]``.
    """
    if not model or "," not in model:
        raise errors.InvalidRequestError(
            "Point prompts need a segment-anything model.",
            param="sam_model",
            hint="Pass --sam-model ENCODER.onnx,DECODER.onnx (a SAM or MobileSAM ONNX export).",
        )
    import numpy as np
    import onnxruntime as ort
    from PIL import Image as PILImage

    encoder_path, decoder_path = (Path(p.strip()).expanduser() for p in model.split(",", 1))
    for path in (encoder_path, decoder_path):
        if path.suffix.lower() != ".onnx" or not path.is_file():
            raise errors.InvalidRequestError(
                f"{path} is not an ONNX file that exists.", param="sam_model"
            )
    scale = 1024 / max(img.size)
    resized = img.convert("RGB").resize((round(img.width * scale), round(img.height * scale)))
    canvas = np.zeros((1024, 1024, 3), np.float32)
    pixels = (np.asarray(resized, np.float32) / 255.0 - (0.485, 0.456, 0.406)) / (
        0.229,
        0.224,
        0.225,
    )
    canvas[: resized.height, : resized.width] = pixels
    encoder = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(decoder_path), providers=["CPUExecutionProvider"])
    blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32)
    embeddings = encoder.run(None, {encoder.get_inputs()[0].name: blob})[0]
    coords = np.array([[*points, (0.0, 0.0)]], np.float32) * scale
    labels = np.array([[1.0] * len(points) + [-1.0]], np.float32)
    masks = decoder.run(None, {
        "image_embeddings": embeddings, "point_coords": coords, "point_labels": labels,
        "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array([img.height, img.width], np.float32),
    })[0]  # fmt: skip
    return PILImage.fromarray(((masks[0, 0] > 0) * 255).astype(np.uint8))


def grow(mask: Image, pixels: int) -> Image:
    from PIL import ImageFilter

    return mask.filter(ImageFilter.MaxFilter(2 * pixels + 1)) if pixels > 0 else mask


def shrink(mask: Image, pixels: int) -> Image:
    from PIL import ImageFilter

    return mask.filter(ImageFilter.MinFilter(2 * pixels + 1)) if pixels > 0 else mask


def feather(mask: Image, radius: float) -> Image:
    from PIL import ImageFilter

    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask


def invert(mask: Image) -> Image:
    from PIL import ImageOps

    return ImageOps.invert(mask.convert("L"))


def preview(
    img: Image, mask: Image, colour: tuple[int, int, int] = (255, 0, 64), opacity: float = 0.5
) -> Image:
    """The image with the masked area tinted, to check a mask by eye."""
    from PIL import Image as PILImage

    base = img.convert("RGB")
    tint = PILImage.new("RGB", base.size, colour)
    weight = mask.convert("L").point(lambda v: int(v * opacity))
    return PILImage.composite(tint, base, weight)
