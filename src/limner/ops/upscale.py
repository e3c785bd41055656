"""Upscaling: learned models, OpenCV super-resolution, Lanczos, or a cloud upscaler.

Backends, chosen from ``model``:

* ``None`` or ``"lanczos"``: Pillow's Lanczos filter (no model, always available).
* a ``.pb`` file, or ``fsrcnn`` / ``fsrcnn-small`` / ``espcn`` by name: OpenCV's DNN module runs
  the FSRCNN / ESPCN TensorFlow graphs the way ``cv2.dnn_superres`` does (the luma channel through
  the network, chroma by bicubic). Names are looked up in ``LIMNER_SUPERRES_DIR`` and
  ``<home>/models/superres`` as ``FSRCNN_x2.pb`` and so on (the files' upstream names).
* a ``.onnx`` file: an image-to-image super-resolution network through onnxruntime
  (input ``[1, 3, H, W]`` in 0..1, output ``[1, 3, sH, sW]``).
* a ``.safetensors`` file: ESRGAN, Real-ESRGAN, SwinIR and the other architectures spandrel knows.
* ``provider:model``: a cloud upscaler through :meth:`limner.Limner.run`.

Pickle checkpoints (``.pth``, ``.pt``, ``.ckpt``, ``.bin``) can run code when loaded, so they are
refused with a hint to convert them to safetensors. Networks run tile by tile with an overlap, so
large images fit in memory and show no seams.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from limner import errors
from limner.ops._common import OpResult, as_rgb, input_sha, read_image, record_op

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

    from limner.client import Limner
    from limner.store import Store

__all__ = ["PICKLE_SUFFIXES", "find_superres_model", "upscale", "upscale_image"]

PICKLE_SUFFIXES = {".pth", ".pt", ".ckpt", ".bin", ".pkl", ".pickle"}
OPENCV_ALGORITHMS = {"fsrcnn": "FSRCNN", "fsrcnn-small": "FSRCNN-small", "espcn": "ESPCN"}
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 16

Tiler = Callable[["np.ndarray"], "np.ndarray"]


def superres_dirs() -> list[Path]:
    from limner.config import limner_home

    dirs = [Path(p) for p in os.environ.get("LIMNER_SUPERRES_DIR", "").split(os.pathsep) if p]
    return [*dirs, limner_home() / "models" / "superres"]


def find_superres_model(name: str, scale: int) -> Path:
    """The ``.pb`` file for an OpenCV super-resolution model name at ``scale``."""
    stem = f"{OPENCV_ALGORITHMS[name]}_x{scale}.pb"
    for folder in superres_dirs():
        if (folder / stem).is_file():
            return folder / stem
    raise errors.InvalidRequestError(
        f"The {name} x{scale} model file ({stem}) was not found.",
        param="model",
        hint=(
            "Pass its path with --model, or put it in LIMNER_SUPERRES_DIR or "
            "<LIMNER_HOME>/models/superres (FSRCNN: github.com/Saafke/FSRCNN_Tensorflow, "
            "ESPCN: github.com/fannymonori/TF-ESPCN)."
        ),
    )


def _check_scale(scale: int) -> None:
    if scale not in (2, 3, 4):
        raise errors.InvalidRequestError(
            f"Scale {scale} is not supported.", param="scale", hint="Use 2, 3 or 4."
        )


# -- tiling ------------------------------------------------------------------------------------
def run_tiled(
    array: np.ndarray,
    scale: int,
    fn: Tiler,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
) -> np.ndarray:
    """Apply an upscaling ``fn`` (HxW[xC] -> sHxsW[xC]) tile by tile.

    Each tile is run with ``overlap`` pixels of context on every side and only its centre is
    kept, so the network sees its neighbours and tiles meet without seams.
    """
    import numpy as np

    height, width = array.shape[:2]
    if height <= tile and width <= tile:
        return fn(array)
    out = np.zeros((height * scale, width * scale, *array.shape[2:]), dtype=array.dtype)
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            py0, px0 = max(y0 - overlap, 0), max(x0 - overlap, 0)
            py1, px1 = min(y1 + overlap, height), min(x1 + overlap, width)
            result = fn(array[py0:py1, px0:px1])
            top, left = (y0 - py0) * scale, (x0 - px0) * scale
            out[y0 * scale : y1 * scale, x0 * scale : x1 * scale] = result[
                top : top + (y1 - y0) * scale, left : left + (x1 - x0) * scale
            ]
    return out


# -- backends ----------------------------------------------------------------------------------
def lanczos(img: Image, scale: int) -> Image:
    from PIL import Image as PILImage

    return img.resize((img.width * scale, img.height * scale), PILImage.Resampling.LANCZOS)


@lru_cache(maxsize=8)
def _opencv_net(path: str) -> Any:
    import cv2
    import numpy as np

    from limner.ops._tfgraph import add_blocksize_attr

    try:
        graph = add_blocksize_attr(Path(path).read_bytes())
        return cv2.dnn.readNetFromTensorflow(np.frombuffer(graph, dtype=np.uint8))
    except (cv2.error, ValueError, IndexError) as exc:
        raise errors.InvalidRequestError(
            f"{Path(path).name} is not a TensorFlow super-resolution graph OpenCV can read.",
            param="model",
        ) from exc


def opencv_superres(img: Image, path: Path, scale: int, tile: int = DEFAULT_TILE) -> Image:
    """FSRCNN / ESPCN as ``cv2.dnn_superres`` runs them: luma through the net, chroma bicubic."""
    import cv2
    import numpy as np
    from PIL import Image as PILImage

    net = _opencv_net(str(path))
    ycrcb = cv2.cvtColor(np.asarray(as_rgb(img)), cv2.COLOR_RGB2YCrCb)
    luma = ycrcb[:, :, 0].astype(np.float32) / 255.0

    def forward(part: np.ndarray) -> np.ndarray:
        net.setInput(cv2.dnn.blobFromImage(part, 1.0))
        result = net.forward()[0, 0]
        if result.shape != (part.shape[0] * scale, part.shape[1] * scale):
            raise errors.InvalidRequestError(
                f"{path.name} does not upscale by {scale}.",
                param="scale",
                hint="Pick the model file for this scale (e.g. FSRCNN_x4.pb for --scale 4).",
            )
        return np.asarray(result, dtype=np.float32)

    big_luma = run_tiled(luma, scale, forward, tile)
    size = (img.width * scale, img.height * scale)
    chroma = cv2.resize(ycrcb, size, interpolation=cv2.INTER_CUBIC)
    chroma[:, :, 0] = np.clip(big_luma * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return PILImage.fromarray(cv2.cvtColor(chroma, cv2.COLOR_YCrCb2RGB))


def onnx_superres(img: Image, path: Path, scale: int, tile: int = DEFAULT_TILE) -> Image:
    import numpy as np
    import onnxruntime as ort
    from PIL import Image as PILImage

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rgb = np.asarray(as_rgb(img), dtype=np.float32) / 255.0

    def forward(part: np.ndarray) -> np.ndarray:
        blob = np.ascontiguousarray(part.transpose(2, 0, 1)[None])
        result = np.asarray(session.run(None, {name: blob})[0][0]).transpose(1, 2, 0)
        if result.shape[:2] != (part.shape[0] * scale, part.shape[1] * scale):
            raise errors.InvalidRequestError(
                f"{path.name} does not upscale by {scale}.", param="scale"
            )
        return result

    out = run_tiled(rgb, scale, forward, tile)
    return PILImage.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8))


def spandrel_superres(img: Image, path: Path, scale: int, tile: int = DEFAULT_TILE) -> Image:
    try:
        import numpy as np
        import torch
        from spandrel import ImageModelDescriptor, ModelLoader
    except ImportError as exc:
        raise errors.UserError(
            f"Loading {path.name} needs spandrel and torch ({exc}).",
            hint="pip install 'limner[upscale-models]' (spandrel, torch, torchvision).",
        ) from exc
    from PIL import Image as PILImage

    model = ModelLoader().load_from_file(str(path))
    if not isinstance(model, ImageModelDescriptor):
        raise errors.InvalidRequestError(
            f"{path.name} is not an image-to-image model.", param="model"
        )
    if model.scale != scale:
        raise errors.InvalidRequestError(
            f"{path.name} upscales by {model.scale}, not {scale}.",
            param="scale",
            hint=f"Use --scale {model.scale}.",
        )
    model.eval()
    rgb = np.asarray(as_rgb(img), dtype=np.float32) / 255.0

    def forward(part: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(part.transpose(2, 0, 1)))[None]
            result: np.ndarray = model(tensor)[0].clamp(0, 1).numpy().transpose(1, 2, 0)
        return result

    out = run_tiled(rgb, scale, forward, tile)
    return PILImage.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _model_file(model: str) -> Path:
    path = Path(model).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise errors.InvalidRequestError(
            f"{path.name} is a pickle checkpoint; loading one can run arbitrary code, so limner refuses it.",
            param="model",
            hint="Convert it to .safetensors (safetensors.torch.save_file) or export it to ONNX.",
        )
    if not path.is_file():
        raise errors.InvalidRequestError(f"Model file {path} does not exist.", param="model")
    return path


def upscale_image(
    img: Image, scale: int = 2, model: str | None = None, *, tile: int = DEFAULT_TILE
) -> tuple[Image, str]:
    """Upscale a PIL image locally; return it and the name of the backend used.

    The alpha channel, if any, is upscaled with Lanczos and put back.
    """
    _check_scale(scale)
    alpha = img.getchannel("A") if "A" in img.getbands() else None
    name = (model or "lanczos").strip()
    lowered = name.lower()
    if lowered == "lanczos":
        out, used = lanczos(as_rgb(img) if alpha is None else img.convert("RGB"), scale), "lanczos"
    elif lowered in OPENCV_ALGORITHMS:
        path = find_superres_model(lowered, scale)
        out, used = opencv_superres(img, path, scale, tile), f"{lowered}_x{scale}"
    else:
        path = _model_file(name)
        suffix = path.suffix.lower()
        if suffix == ".pb":
            match = re.search(r"_x(\d)", path.stem)
            if match and int(match.group(1)) != scale:
                raise errors.InvalidRequestError(
                    f"{path.name} upscales by {match.group(1)}, not {scale}.", param="scale"
                )
            out = opencv_superres(img, path, scale, tile)
        elif suffix == ".onnx":
            out = onnx_superres(img, path, scale, tile)
        elif suffix == ".safetensors":
            out = spandrel_superres(img, path, scale, tile)
        else:
            raise errors.InvalidRequestError(
                f"limner cannot load {path.name} as an upscaler.",
                param="model",
                hint="Give a .safetensors, .onnx or OpenCV .pb file, a name (fsrcnn, espcn, lanczos) or provider:model.",
            )
        used = path.name
    if alpha is not None:
        out = out.convert("RGBA")
        out.putalpha(lanczos(alpha, scale))
    return out, used


def upscale(
    source: Any,
    scale: int = 2,
    model: str | None = None,
    *,
    store: Store | None = None,
    client: Limner | None = None,
    tile: int = DEFAULT_TILE,
    parent_id: str | None = None,
    provider_options: dict[str, Any] | None = None,
) -> OpResult:
    """Upscale an image (path, bytes or PIL image), store the result and log it.

    ``model`` of the form ``provider:model`` runs a cloud upscaler through ``client``; those
    choose their own factor, set through ``provider_options`` where the provider takes one
    (``{"scale": 4}`` on Replicate's Real-ESRGAN, say).
    """
    _check_scale(scale)
    if model and ":" in model and not Path(model).expanduser().exists():
        return _cloud_upscale(source, model, client, parent_id, provider_options or {})
    from limner.store import Store

    started = time.perf_counter()
    img, notes = read_image(source)
    out, used = upscale_image(img, scale, model, tile=tile)
    return record_op(
        store or Store(),
        operation="upscale",
        model=used,
        outputs=[out],
        params={"scale": scale, "model": model or "lanczos", "size": f"{out.width}x{out.height}"},
        inputs=[input_sha(img)],
        started=started,
        warnings=notes,
        parent_id=parent_id,
    )


def _cloud_upscale(
    source: Any, model: str, client: Limner | None, parent_id: str | None, options: dict[str, Any]
) -> OpResult:
    from limner.client import Limner
    from limner.images import load_image
    from limner.types import ImageRequest, Operation

    engine = client or Limner()
    request = ImageRequest(model=model, images=[load_image(source)], provider_options=options)
    result = engine.run(Operation.UPSCALE, request, parent_id=parent_id)
    warnings = list(result.warnings)
    if "scale" not in options:
        warnings.append(
            f"{result.model} upscales by its own factor; pass the provider's option "
            "(e.g. -O scale=4) where it takes one."
        )
    return OpResult(
        images=result.images,
        operation="upscale",
        model=result.model,
        generation_id=result.generation_id,
        warnings=warnings,
        timings=result.timings,
    )
