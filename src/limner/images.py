"""Reading input images safely, and converting masks between provider conventions.

Inputs are checked before decoding: a format allowlist, a pixel cap that turns decompression
bombs into a clear error, animated images reduced to their first frame with a warning. Inputs
are re-encoded, never passed through.

Masks: users give one convention (white marks the area to change, or an RGBA image whose
transparent pixels mark it); :func:`mask_to_edit_area` turns either into an "L" image where
255 marks the area, and each provider converts that to its own convention.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

from limner import errors
from limner.types import ImageInput

__all__ = [
    "ALLOWED_FORMATS",
    "MAX_PIXELS",
    "encode_mask",
    "load_image",
    "mask_to_edit_area",
    "open_checked",
]

ALLOWED_FORMATS = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
MAX_PIXELS = int(os.environ.get("LIMNER_MAX_INPUT_PIXELS", 64 * 1024 * 1024))
MAX_INPUT_BYTES = 50 * 1024 * 1024


def open_checked(
    data: bytes, *, name: str = "image", max_pixels: int = MAX_PIXELS
) -> tuple[Any, list[str]]:
    """Open ``data`` as a PIL image after checking format and pixel count; decode it fully."""
    from PIL import Image, UnidentifiedImageError

    notes: list[str] = []
    if len(data) > MAX_INPUT_BYTES:
        raise errors.InputImageError(f"{name} is larger than {MAX_INPUT_BYTES // 2**20} MiB.")
    try:
        # Image.open reads the header only; Pillow's own bomb check fires here for huge sizes.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(name, max_pixels, "beyond Pillow's decompression-bomb size") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise errors.InputImageError(
            f"{name} is not an image limner can read.",
            hint="Use a PNG, JPEG or WebP file.",
        ) from exc
    width, height = img.size
    if width * height > max_pixels:
        raise _too_many_pixels(name, max_pixels, f"{width}x{height} ({width * height:,} pixels)")
    # is_animated stops at the second frame header; n_frames would walk the whole file.
    if getattr(img, "is_animated", False):
        notes.append(f"{name} is animated; only its first frame is used.")
        img.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise errors.InputImageError(f"{name} could not be decoded: {exc}.") from exc
    return img, notes


def _too_many_pixels(name: str, max_pixels: int, size: str) -> errors.InputImageError:
    return errors.InputImageError(
        f"{name} is {size}, above the limit of {max_pixels:,} pixels; it was not decoded.",
        hint="Resize it first, or raise LIMNER_MAX_INPUT_PIXELS.",
    )


def load_image(source: Any, *, name: str | None = None) -> ImageInput:
    """Read a path, bytes, file object or PIL image into a checked, re-encoded PNG input."""
    from PIL import Image

    label = name or "image"
    if isinstance(source, ImageInput):
        return source
    if isinstance(source, Image.Image):
        img = source
        label = name or "image.png"
    else:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            label = name or path.name
            try:
                data = path.read_bytes()
            except FileNotFoundError as exc:
                raise errors.InputImageError(f"{path} does not exist.") from exc
            except OSError as exc:
                raise errors.InputImageError(f"{path} cannot be read: {exc.strerror}.") from exc
        elif isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        elif hasattr(source, "read"):
            data = source.read()
        else:
            raise errors.InputImageError(f"Cannot read an image from {type(source).__name__}.")
        img, _ = open_checked(data, name=label)
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    stem = Path(label).stem or "image"
    return ImageInput(
        data=buf.getvalue(),
        media_type="image/png",
        width=img.width,
        height=img.height,
        name=f"{stem}.png",
    )


def to_pil(image: ImageInput) -> Any:
    from PIL import Image

    img = Image.open(io.BytesIO(image.data))
    img.load()
    return img


def mask_to_edit_area(mask: ImageInput) -> Any:
    """An "L" image where 255 marks the area to change.

    A mask with any transparent pixel is read as "transparent marks the area"; otherwise it is
    read as "white marks the area" (its luminance).
    """
    img = to_pil(mask)
    if img.mode in ("RGBA", "LA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha.point(lambda a: 255 if a < 128 else 0)
        img = rgba.convert("RGB")
    return img.convert("L").point(lambda v: 255 if v >= 128 else 0)


def encode_mask(mask: ImageInput, convention: str) -> bytes:
    """Encode ``mask`` as PNG in a provider's convention: alpha, white or black marks the area."""
    from PIL import Image

    area = mask_to_edit_area(mask)
    if convention == "alpha":
        out = Image.new("RGBA", area.size, (0, 0, 0, 255))
        out.putalpha(area.point(lambda v: 0 if v else 255))
    elif convention == "black":
        out = area.point(lambda v: 0 if v else 255)
    else:
        out = area
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def check_mask_matches(image: ImageInput, mask: ImageInput) -> None:
    if (image.width, image.height) != (mask.width, mask.height):
        raise errors.InputImageError(
            f"The mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}.",
            hint="Give a mask of the same size as the image.",
        )
