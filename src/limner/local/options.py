"""The local engine's options (``provider_options``), parsed and checked before any model loads.

    device        auto | cuda | cuda:N | mps | cpu          (env LIMNER_LOCAL_DEVICE)
    dtype         auto | fp32 | fp16 | bf16                 (env LIMNER_LOCAL_DTYPE)
    offload       none | model | sequential                 model CPU offload for small GPUs
    vae_tiling    bool                                      decode large images in tiles
    optimise      bool                                      channels_last, fused QKV, compile (GPU)
    scheduler     euler | euler-a | dpm++-2m | dpm++-2m-karras | unipc | lcm | ... (see SCHEDULERS)
    loras         ["path.safetensors:0.8", {"path": ..., "weight": 0.5}, ...]
    fuse_lora     bool                                      fuse the LoRAs into the weights
    controlnets   ["canny", "hed:0.5", {"type": "depth", "model": ..., "scale": 0.7, "image": 1}]
    depth_model   a transformers depth-estimation model (folder or repo) for ``depth`` control
    mask_blur     pixels of Gaussian feathering on the inpainting mask (default 4)
    expand        outpainting: {"left": 64, "right": 0, "top": 0, "bottom": 64} or one int
    max_sequence_length  T5 tokens for SD3/FLUX prompts

Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from limner import errors
from limner.catalog import ModelSpec
from limner.local.models import FAMILIES, Family
from limner.types import ImageRequest, Operation

__all__ = ["ControlSpec", "LocalOptions", "parse_options", "target_size"]

CONTROL_TYPES = ("canny", "hed", "depth", "none")
ALLOWED = {"device", "dtype", "offload", "vae_tiling", "optimise", "scheduler", "loras", "fuse_lora",
           "controlnets", "depth_model", "mask_blur", "expand", "max_sequence_length"}  # fmt: skip
SIDES = ("left", "top", "right", "bottom")


@dataclass(frozen=True)
class ControlSpec:
    type: str
    model: str
    scale: float = 1.0
    image: int | None = None  # which input image; None: its own position, else the first
    low: int = 100
    high: int = 200


@dataclass
class LocalOptions:
    device: str | None = None
    dtype: str | None = None
    offload: str = "none"
    vae_tiling: bool = False
    optimise: bool = False
    scheduler: str | None = None
    loras: list[tuple[str, float]] = field(default_factory=list)
    fuse_lora: bool = False
    controlnets: list[ControlSpec] = field(default_factory=list)
    depth_model: str | None = None
    mask_blur: int = 4
    expand: dict[str, int] = field(default_factory=dict)
    max_sequence_length: int | None = None


def _bad(message: str, param: str, hint: str | None = None) -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message, param=param, hint=hint)


def _weighted(item: Any, key: str, param: str) -> tuple[str, float]:
    """``"name:0.8"`` / ``{"path": name, "weight": 0.8}`` -> (name, 0.8)."""
    if isinstance(item, dict):
        name, weight = (
            item.get(key) or item.get("path") or item.get("model"),
            item.get("weight", item.get("scale", 1.0)),
        )
    else:
        text = str(item)
        head, sep, tail = text.rpartition(":")
        try:
            name, weight = (head, float(tail)) if sep and head else (text, 1.0)
        except ValueError:
            name, weight = text, 1.0
    if not name:
        raise _bad(f"A {param} entry names nothing: {item!r}.", param)
    try:
        return str(name), float(weight)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise _bad(f"The weight of {param} entry {item!r} is not a number.", param) from exc


def _controls(raw: Any, spec: ModelSpec) -> list[ControlSpec]:
    defaults: dict[str, str] = dict(spec.wire.get("controlnets", {}))
    out = []
    for item in raw if isinstance(raw, list) else [raw]:
        entry = dict(item) if isinstance(item, dict) else {}
        kind, scale = (
            (str(entry.get("type", "")), float(entry.get("scale", 1.0)))
            if entry
            else _weighted(item, "type", "controlnets")
        )
        if kind not in CONTROL_TYPES:
            raise _bad(
                f"Unknown ControlNet type {kind!r}.",
                "controlnets",
                f"Choose one of {', '.join(CONTROL_TYPES)}.",
            )
        model = entry.get("model") or defaults.get(kind)
        if not model:
            raise _bad(
                f"No ControlNet model for {kind!r} with {spec.ref}.", "controlnets",
                'Name one: --option controlnets=\'[{"type": "canny", "model": "PATH_OR_REPO"}]\'.',
            )  # fmt: skip
        out.append(ControlSpec(kind, str(model), scale, None if entry.get("image") is None else int(entry["image"]),
                               int(entry.get("low", 100)), int(entry.get("high", 200))))  # fmt: skip
    return out


def _expand(raw: Any) -> dict[str, int]:
    if isinstance(raw, int):
        return dict.fromkeys(SIDES, raw)
    if not isinstance(raw, dict) or set(raw) - set(SIDES):
        raise _bad("expand must be a number of pixels or {left, top, right, bottom}.", "expand")
    values = {side: int(raw.get(side, 0)) for side in SIDES}
    if any(v < 0 for v in values.values()):
        raise _bad("expand takes no negative sides.", "expand")
    return values


def _bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")


def parse_options(spec: ModelSpec, request: ImageRequest) -> LocalOptions:
    raw = dict(request.provider_options)
    unknown = set(raw) - ALLOWED
    if unknown:
        raise _bad(f"The local engine does not take option(s) {', '.join(sorted(unknown))}.",
                   "provider_options", f"Allowed: {', '.join(sorted(ALLOWED))}.")  # fmt: skip
    opts = LocalOptions(
        device=raw.get("device"), dtype=raw.get("dtype"), offload=str(raw.get("offload", "none")),
        vae_tiling=_bool(raw.get("vae_tiling", False)), optimise=_bool(raw.get("optimise", False)),
        scheduler=raw.get("scheduler"), fuse_lora=_bool(raw.get("fuse_lora", False)),
        depth_model=raw.get("depth_model"), mask_blur=int(raw.get("mask_blur", 4)),
        max_sequence_length=raw.get("max_sequence_length"),
    )  # fmt: skip
    if opts.offload not in ("none", "model", "sequential"):
        raise _bad(
            f"Unknown offload mode {opts.offload!r}.", "offload", "Use none, model or sequential."
        )
    if opts.scheduler is not None:
        from limner.local.pipelines import scheduler_name

        opts.scheduler = scheduler_name(str(opts.scheduler))
    loras = raw.get("loras", [])
    opts.loras = [
        _weighted(item, "path", "loras") for item in (loras if isinstance(loras, list) else [loras])
    ]
    if "controlnets" in raw:
        opts.controlnets = _controls(raw["controlnets"], spec)
    if "expand" in raw:
        opts.expand = _expand(raw["expand"])
    elif request.expand:
        opts.expand = _expand(request.expand)
    if not 0 <= opts.mask_blur <= 256:
        raise _bad("mask_blur must be between 0 and 256 pixels.", "mask_blur")
    return opts


def target_size(
    request: ImageRequest, spec: ModelSpec, image_size: tuple[int, int] | None
) -> tuple[tuple[int, int], str | None]:
    """The output size: the request's, else the input image's (rounded down to the model's
    multiple, with a note), else the family default."""
    family = FAMILIES[str(spec.wire.get("family", "sd"))]
    dims = request.dimensions()
    if dims:
        return dims, None
    if image_size is None:
        side = int(spec.wire.get("default_size", family.default_size))
        return (side, side), None
    m = family.multiple_of
    width, height = (max(m, image_size[0] // m * m), max(m, image_size[1] // m * m))
    note = None
    if (width, height) != image_size:
        note = f"the input is {image_size[0]}x{image_size[1]}; {spec.ref} works in multiples of {m}, so it was resized to {width}x{height}."
    return (width, height), note


def _check_controls(opts: LocalOptions, request: ImageRequest, family: Family) -> None:
    if not family.controlnet:
        raise _bad(f"ControlNet is not available for {family.name} models in the local engine.", "controlnets",
                   "Use an SD 1.5, SDXL, SD3 or FLUX.1 model.")  # fmt: skip
    for index, control in enumerate(list(opts.controlnets)):
        image = control.image
        if image is None:
            image = index if index < len(request.images) else 0
            opts.controlnets[index] = control = replace(control, image=image)
        if image >= len(request.images):
            raise _bad(
                f"ControlNet {control.type!r} needs a control image (image {image + 1}), "
                f"but {len(request.images)} image(s) were given.", "image",
                "Pass the image to derive the control map from with -i.",
            )  # fmt: skip
        if control.type == "depth" and not opts.depth_model:
            raise _bad("Depth control needs a depth estimator.", "depth_model",
                       "Set depth_model to a transformers depth-estimation model (folder or repo), or "
                       "give a ready depth map with type none.")  # fmt: skip


def precheck(op: Operation, spec: ModelSpec, request: ImageRequest) -> LocalOptions:
    """Everything about a local request that can be refused before a model loads."""
    family = FAMILIES[str(spec.wire.get("family", "sd"))]
    opts = parse_options(spec, request)
    if request.steps is not None and not 1 <= request.steps <= 500:
        raise _bad(f"steps must be between 1 and 500; got {request.steps}.", "steps")
    if request.guidance is not None and not 0 <= request.guidance <= 50:
        raise _bad(f"guidance must be between 0 and 50; got {request.guidance}.", "guidance")
    if op == Operation.CONTROLNET and not opts.controlnets:
        default = "canny" if "canny" in spec.wire.get("controlnets", {}) else None
        if default is None:
            raise _bad("ControlNet needs a controlnets option naming the type and model.", "controlnets",
                       'e.g. --option controlnets=\'[{"type": "canny", "model": "PATH_OR_REPO"}]\'.')  # fmt: skip
        opts.controlnets = _controls([default], spec)
    if opts.controlnets:
        _check_controls(opts, request, family)
        if family.name == "sd3" and (op != Operation.CONTROLNET or request.mask is not None):
            # diffusers' other SD3 ControlNet pipeline is for inpainting ControlNets, which take
            # the mask as an extra condition: a canny/depth ControlNet cannot drive it.
            raise errors.UnsupportedOperationError(
                f"ControlNet on SD3 models runs as text-to-image only, not with {op.value}.",
                hint="Use the controlnet operation without a mask, or a FLUX.1, SD 1.5 or SDXL "
                "model for ControlNet with img2img or inpainting.",
            )
    if op == Operation.INPAINT and request.mask is None:
        raise _bad(
            "Inpainting needs a mask (white marks the area to repaint).",
            "mask",
            "Pass --mask FILE.",
        )
    if op == Operation.OUTPAINT and not any(opts.expand.values()):
        raise _bad("Outpainting needs the expand option: how many pixels to add on each side.", "expand",
                   'e.g. --option expand=\'{"right": 128}\'.')  # fmt: skip
    if opts.expand and any(v % family.multiple_of for v in opts.expand.values()):
        raise _bad(
            f"expand sides must be multiples of {family.multiple_of} for {spec.ref}.", "expand"
        )
    if opts.loras and op not in (Operation.LORA, Operation.GENERATE, Operation.EDIT, Operation.INPAINT,
                                 Operation.OUTPAINT, Operation.VARIATION, Operation.CONTROLNET):  # fmt: skip
        raise _bad(f"LoRAs do not apply to {op.value}.", "loras")
    if op == Operation.LORA and not opts.loras:
        raise _bad(
            "The lora operation needs the loras option.",
            "loras",
            "e.g. --option loras='[\"style.safetensors:0.8\"]'.",
        )
    return opts
