"""Outpainting: an expanded canvas and its mask, then any model that can inpaint or outpaint.

The canvas follows the classic recipe: the original placed on a larger canvas whose new area is
transparent, and a mask where white marks the area to generate. Core converts the mask to each
provider's convention. The new area is pre-filled by stretching the border pixels, which gives
models that ignore transparency a sensible start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from limner import errors

if TYPE_CHECKING:
    from PIL.Image import Image

    from limner.client import Limner
    from limner.types import ImageRequest, Operation, Result

__all__ = ["Padding", "build_canvas", "outpaint", "padding_for_aspect"]

ROUND_TO = 8


@dataclass(frozen=True)
class Padding:
    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0

    @property
    def empty(self) -> bool:
        return not (self.left or self.right or self.top or self.bottom)


def _parse_aspect(text: str) -> float:
    a, sep, b = text.partition(":")
    try:
        value = float(a) / float(b)
    except (ValueError, ZeroDivisionError) as exc:
        raise errors.InvalidRequestError(
            f"Aspect {text!r} is not W:H.", param="to_aspect", hint="E.g. 16:9."
        ) from exc
    if not sep or value <= 0:
        raise errors.InvalidRequestError(
            f"Aspect {text!r} is not W:H.", param="to_aspect", hint="E.g. 16:9."
        )
    return value


def padding_for_aspect(width: int, height: int, aspect: str) -> Padding:
    """The smallest centred padding that brings ``width x height`` to ``aspect``."""
    target = _parse_aspect(aspect)
    if width / height < target:
        extra = round(height * target) - width
        return Padding(left=extra // 2, right=extra - extra // 2)
    extra = round(width / target) - height
    return Padding(top=extra // 2, bottom=extra - extra // 2)


def _rounded(pad: Padding, width: int, height: int) -> Padding:
    """Grow the padding so the canvas edges are multiples of 8, as most models need."""
    dw = -(width + pad.left + pad.right) % ROUND_TO
    dh = -(height + pad.top + pad.bottom) % ROUND_TO
    return Padding(
        pad.left + dw // 2, pad.right + dw - dw // 2, pad.top + dh // 2, pad.bottom + dh - dh // 2
    )


def build_canvas(img: Image, pad: Padding) -> tuple[Image, Image]:
    """The expanded RGBA canvas (new area transparent, pre-filled colour) and its L mask."""
    import numpy as np
    from PIL import Image as PILImage

    if min(pad.left, pad.right, pad.top, pad.bottom) < 0:
        raise errors.InvalidRequestError("Padding cannot be negative.", param="padding")
    if pad.empty:
        raise errors.InvalidRequestError(
            "Nothing to outpaint.",
            param="padding",
            hint="Give --left/--right/--top/--bottom or --to-aspect.",
        )
    pad = _rounded(pad, img.width, img.height)
    rgb = np.asarray(img.convert("RGB"))
    filled = np.pad(rgb, ((pad.top, pad.bottom), (pad.left, pad.right), (0, 0)), mode="edge")
    canvas = PILImage.fromarray(filled).convert("RGBA")
    mask = PILImage.new("L", canvas.size, 255)
    mask.paste(0, (pad.left, pad.top, pad.left + img.width, pad.top + img.height))
    canvas.putalpha(mask.point(lambda v: 0 if v else 255))
    return canvas, mask


def outpaint_request(
    client: Limner,
    source: Any,
    *,
    model: str | None,
    prompt: str,
    pad: Padding | None = None,
    to_aspect: str | None = None,
    **params: Any,
) -> tuple[Operation, ImageRequest, list[str]]:
    """The request that extends ``source``: the image and how far to expand it for models that
    outpaint; the expanded canvas and its mask for models that only inpaint."""
    from limner.images import load_image
    from limner.ops._common import encode_png, read_image
    from limner.types import ImageRequest, Operation

    img, notes = read_image(source)
    if to_aspect:
        pad = padding_for_aspect(img.width, img.height, to_aspect)
    pad = pad or Padding()
    spec = client.resolve(model)
    if spec.supports(Operation.OUTPAINT):
        expand = {"left": pad.left, "right": pad.right, "top": pad.top, "bottom": pad.bottom}
        request = ImageRequest(
            prompt=prompt, model=spec.ref, images=[load_image(encode_png(img), name="image.png")],
            expand=expand, **params,
        )  # fmt: skip
        return Operation.OUTPAINT, request, notes
    if not spec.supports(Operation.INPAINT):
        raise errors.UnsupportedOperationError(
            f"{spec.ref} can neither outpaint nor inpaint.",
            hint="Pick a model with outpaint or inpaint in `limner models`.",
        )
    canvas, mask = build_canvas(img, pad)
    request = ImageRequest(
        prompt=prompt,
        model=spec.ref,
        images=[load_image(encode_png(canvas), name="canvas.png")],
        mask=load_image(encode_png(mask), name="mask.png"),
        **params,
    )
    return Operation.INPAINT, request, notes


def outpaint(
    client: Limner,
    source: Any,
    *,
    model: str | None,
    prompt: str,
    pad: Padding | None = None,
    to_aspect: str | None = None,
    **params: Any,
) -> Result:
    """Expand ``source`` and fill the new area with ``model`` (outpaint, else inpaint)."""
    op, request, notes = outpaint_request(
        client, source, model=model, prompt=prompt, pad=pad, to_aspect=to_aspect, **params
    )
    result = client.run(op, request)
    result.warnings[:0] = notes
    return result
