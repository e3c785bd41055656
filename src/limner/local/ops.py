"""The operations of the local engine on a loaded pipeline: text-to-image, img2img, inpainting
(with a feathered mask), outpainting (an expanded canvas), ControlNet and LoRA.

Each image of a batch gets its own ``torch.Generator`` seeded ``seed + k``, so image k of a
batch is the image that seed gives alone. Cancellation and progress go through
``callback_on_step_end``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from limner import errors
from limner.catalog import ModelSpec
from limner.local.models import FAMILIES
from limner.local.options import LocalOptions, target_size
from limner.local.pipelines import LoadedModel, apply_loras, dtype_kwarg, fresh_scheduler
from limner.types import ImageRequest, Operation

__all__ = ["JobCancelled", "OperationResult", "run_operation"]

IMG2IMG_OPS = (Operation.EDIT, Operation.VARIATION)
INPAINT_OPS = (Operation.INPAINT, Operation.OUTPAINT)
# family -> (ControlNet class, the wrapper that runs several at once), all from diffusers.
CONTROLNET_CLASSES = {
    "sd": ("ControlNetModel", "MultiControlNetModel"),
    "sdxl": ("ControlNetModel", "MultiControlNetModel"),
    "sd3": ("SD3ControlNetModel", "SD3MultiControlNetModel"),
    "flux": ("FluxControlNetModel", "FluxMultiControlNetModel"),
}
DEFAULT_STRENGTH = {
    Operation.EDIT: 0.75,
    Operation.VARIATION: 0.6,
    Operation.INPAINT: 1.0,
    Operation.OUTPAINT: 1.0,
}


class JobCancelled(Exception):
    """Raised from the step callback when the job was cancelled."""


@dataclass
class OperationResult:
    images: list[Any]
    seeds: list[int]
    info: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _pil(data: bytes) -> Any:
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _controlnet_model(model: LoadedModel, location: str) -> Any:
    """A ControlNet, loaded once per resident model (safetensors only)."""
    if location in model.controlnets:
        return model.controlnets[location]
    from pathlib import Path

    import diffusers

    from limner.local.models import refuse_pickle

    refuse_pickle(location)
    class_name, _ = CONTROLNET_CLASSES[model.family]
    local = Path(location).expanduser().exists()
    try:
        net = getattr(diffusers, class_name).from_pretrained(
            location, **dtype_kwarg(model.pipe.dtype), use_safetensors=True, local_files_only=local
        )
    except (OSError, ValueError) as exc:
        raise errors.UserError(
            f"Could not load ControlNet {location}: {exc}",
            hint="Give a diffusers ControlNet folder or repo with safetensors weights.",
        ) from exc
    net.to(model.pipe.device)
    model.controlnets[location] = net
    return net


def _task_pipeline(
    model: LoadedModel, op: Operation, has_mask: bool, controlnets: list[Any]
) -> Any:
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        AutoPipelineForText2Image,
    )

    extra: dict[str, Any] = {}
    if controlnets:
        if len(controlnets) == 1:
            extra["controlnet"] = controlnets[0]
        else:
            import diffusers

            _, multi_name = CONTROLNET_CLASSES[model.family]
            extra["controlnet"] = getattr(diffusers, multi_name)(controlnets)
    if op in INPAINT_OPS or has_mask:
        auto: Any = AutoPipelineForInpainting
    elif op in IMG2IMG_OPS:
        auto = AutoPipelineForImage2Image
    else:
        auto = AutoPipelineForText2Image
    try:
        pipe = auto.from_pipe(model.pipe, **extra)
    except ValueError as exc:
        raise errors.UnsupportedOperationError(
            f"{model.source.location} cannot {op.value} here: {exc}"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generators(device: str, seeds: list[int]) -> list[Any]:
    import torch

    # CPU generators on every device: the same seed then gives the same noise on CPU and GPU.
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def _feather(mask: Any, blur: int) -> Any:
    from PIL import ImageFilter

    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur else mask


def _outpaint_canvas(image: Any, expand: dict[str, int], blur: int) -> tuple[Any, Any]:
    """The expanded canvas (edges replicated as a starting point) and the mask of new area."""
    import cv2
    import numpy as np
    from PIL import Image

    rgb = np.asarray(image.convert("RGB"))
    left, top, right, bottom = (expand.get(k, 0) for k in ("left", "top", "right", "bottom"))
    canvas = cv2.copyMakeBorder(rgb, top, bottom, left, right, cv2.BORDER_REPLICATE)
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    # Overlap the original by the blur radius so the seam is repainted too.
    inset = min(blur, rgb.shape[0] // 4, rgb.shape[1] // 4)
    y0, x0 = top + (inset if top else 0), left + (inset if left else 0)
    y1 = top + rgb.shape[0] - (inset if bottom else 0)
    x1 = left + rgb.shape[1] - (inset if right else 0)
    mask[y0:y1, x0:x1] = 0
    return Image.fromarray(canvas), _feather(Image.fromarray(mask), blur)


def _inputs(
    op: Operation, request: ImageRequest, spec: ModelSpec, opts: LocalOptions, notes: list[str]
) -> tuple[dict[str, Any], tuple[int, int]]:
    """The image/mask keyword arguments and the output size."""
    from limner.images import mask_to_edit_area

    if not request.images:
        size, _ = target_size(request, spec, None)
        return {}, size
    image = _pil(request.images[0].data).convert("RGB")
    kwargs: dict[str, Any] = {}
    if op == Operation.OUTPAINT:
        image, mask = _outpaint_canvas(image, opts.expand, opts.mask_blur)
        kwargs["mask_image"] = mask
    elif request.mask is not None:
        kwargs["mask_image"] = _feather(mask_to_edit_area(request.mask), opts.mask_blur)
    (width, height), note = target_size(request, spec, image.size)
    if note:
        notes.append(note)
    if image.size != (width, height):
        from PIL import Image

        image = image.resize((width, height), Image.Resampling.LANCZOS)
        if "mask_image" in kwargs:
            kwargs["mask_image"] = kwargs["mask_image"].resize(
                (width, height), Image.Resampling.LANCZOS
            )
    if op != Operation.CONTROLNET or request.mask is not None:
        kwargs["image"] = image
        kwargs["strength"] = (
            request.strength if request.strength is not None else DEFAULT_STRENGTH.get(op, 0.75)
        )
    return kwargs, (width, height)


def _control_kwargs(
    model: LoadedModel,
    request: ImageRequest,
    opts: LocalOptions,
    size: tuple[int, int],
    img2img: bool,
) -> tuple[list[Any], dict[str, Any]]:
    from PIL import Image

    from limner.local.control import control_image

    nets, maps, scales = [], [], []
    for control in opts.controlnets:
        source = (
            _pil(request.images[control.image or 0].data)
            .convert("RGB")
            .resize(size, Image.Resampling.LANCZOS)
        )
        maps.append(
            control_image(
                control.type,
                source,
                low=control.low,
                high=control.high,
                depth_model=opts.depth_model,
            )
        )
        nets.append(_controlnet_model(model, control.model))
        scales.append(control.scale)
    # The UNet ControlNet text-to-image pipelines take the condition as ``image``; their
    # img2img/inpaint variants and every transformer ControlNet pipeline as ``control_image``.
    key = "control_image" if img2img or FAMILIES[model.family].transformer else "image"
    single = len(nets) == 1
    return nets, {
        key: maps[0] if single else maps,
        "controlnet_conditioning_scale": scales[0] if single else scales,
    }


def _step_callback(
    on_step: Callable[[int, int], None], cancelled: Callable[[], bool], total: int
) -> Callable[..., dict[str, Any]]:
    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if cancelled():
            raise JobCancelled()
        on_step(step + 1, total)
        return kwargs

    return callback


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: str) -> Iterator[None]:
    """torch's global generator seeded for one call, and restored after it."""
    import torch

    kind = torch.device(device).type
    accelerators = [torch.device(device).index or 0] if kind in ("cuda", "mps") else []
    with torch.random.fork_rng(devices=accelerators, device_type=kind if accelerators else "cuda"):
        torch.manual_seed(seed)
        yield


def _generate(
    pipe: Any, kwargs: dict[str, Any], model: LoadedModel, seeds: list[int], controlled: bool
) -> list[Any]:
    if not (controlled and model.family == "sd3"):
        return list(pipe(**kwargs).images)
    # The SD3 ControlNet pipeline samples the control image's latents from torch's global
    # generator: run each image alone, with it seeded by that image's seed, so that image k of
    # a batch is still the image its seed gives alone.
    images: list[Any] = []
    for seed, generator in zip(seeds, kwargs["generator"], strict=True):
        with _seeded_global_rng(seed, model.settings.device):
            one = {**kwargs, "num_images_per_prompt": 1, "generator": [generator]}
            images += pipe(**one).images
    return images


def _effective_steps(steps: int, strength: float | None) -> int:
    return max(1, int(steps * strength)) if strength is not None else steps


def run_operation(
    model: LoadedModel,
    op: Operation,
    request: ImageRequest,
    spec: ModelSpec,
    opts: LocalOptions,
    seeds: list[int],
    on_step: Callable[[int, int], None],
    cancelled: Callable[[], bool],
) -> OperationResult:
    """Run one operation on ``model`` (whose lock the caller holds)."""
    import torch

    from limner.local.prompts import encode_prompts

    family = FAMILIES[model.family]
    notes: list[str] = []
    image_kwargs, (width, height) = _inputs(op, request, spec, opts, notes)
    for side, value in (("width", width), ("height", height)):
        if value % family.multiple_of:
            raise errors.InvalidRequestError(
                f"The {side} {value} is not a multiple of {family.multiple_of}.", param="size"
            )
    nets: list[Any] = []
    control: dict[str, Any] = {}
    if opts.controlnets:
        nets, control = _control_kwargs(
            model, request, opts, (width, height), "image" in image_kwargs
        )
    pipe = _task_pipeline(model, op, "mask_image" in image_kwargs, nets)
    notes += apply_loras(model, opts.loras, opts.fuse_lora)
    pipe.scheduler = fresh_scheduler(model.pipe.scheduler, opts.scheduler, model.family)
    steps = request.steps or int(spec.wire.get("default_steps", family.default_steps))
    guidance = (
        request.guidance
        if request.guidance is not None
        else float(spec.wire.get("default_guidance", family.default_guidance))
    )
    accepted = set(inspect.signature(type(pipe).__call__).parameters)
    with torch.inference_mode():
        prompt_kwargs = encode_prompts(
            pipe, model.family, request.prompt, request.negative_prompt, notes
        )
    kwargs: dict[str, Any] = {
        **prompt_kwargs, **image_kwargs, **control, "num_inference_steps": steps, "guidance_scale": guidance,
        "num_images_per_prompt": len(seeds), "generator": _generators(model.settings.device, seeds),
        "height": height, "width": width, "output_type": "pil",
        "callback_on_step_end": _step_callback(on_step, cancelled, _effective_steps(steps, image_kwargs.get("strength"))),
    }  # fmt: skip
    if opts.max_sequence_length and "max_sequence_length" in accepted:
        kwargs["max_sequence_length"] = opts.max_sequence_length
    dropped = sorted(k for k in kwargs if k not in accepted)
    for key in dropped:
        kwargs.pop(key)
    if "strength" in image_kwargs and "strength" not in accepted:
        notes.append(f"{type(pipe).__name__} takes no strength; it was ignored.")
    images = _generate(pipe, kwargs, model, seeds, controlled=bool(nets))
    info = {
        "pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
        "scheduler_choice": opts.scheduler or "model default", "steps": steps, "guidance": guidance,
        "width": width, "height": height, "strength": kwargs.get("strength"),
        "loras": dict(model.active_loras), "loras_fused": bool(model.fused),
        "controlnets": [{"type": c.type, "model": c.model, "scale": c.scale} for c in opts.controlnets],
    }  # fmt: skip
    return OperationResult(images=list(images), seeds=seeds, info=info, notes=notes)
