"""Loading diffusers pipelines: device and dtype, offload, the resident-model LRU, schedulers
and LoRA adapters.

Pipelines are chosen by architecture through diffusers' auto pipelines; the task variants
(img2img, inpaint, ControlNet) are made with ``from_pipe`` and share the loaded weights. Each
job gets a fresh scheduler, because schedulers keep per-run state (step index, sigmas).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limner import errors
from limner.local.models import ModelSource

__all__ = [
    "SCHEDULERS",
    "LoadSettings",
    "LoadedModel",
    "ModelCache",
    "choose_device",
    "choose_dtype",
    "fresh_scheduler",
]

# User-facing scheduler names -> (diffusers class, config overrides). The names follow the
# samplers of A1111/Forge so that settings copied from there mean the same here.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++-2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm++-2m-karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "dpm++-2m-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++-sde": ("DPMSolverSinglestepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}),
}
SCHEDULER_ALIASES = {"euler a": "euler-a", "euler_a": "euler-a", "eulera": "euler-a", "dpm++ 2m": "dpm++-2m",
                     "dpm++ 2m karras": "dpm++-2m-karras", "dpmpp_2m": "dpm++-2m", "uni_pc": "unipc"}  # fmt: skip
FLOW_MATCH_ONLY = ("sd3", "flux", "flux2")


def scheduler_name(name: str) -> str:
    key = name.strip().lower()
    key = SCHEDULER_ALIASES.get(key, key)
    if key not in SCHEDULERS:
        raise errors.InvalidRequestError(
            f"Unknown scheduler {name!r}.",
            param="scheduler",
            hint=f"Choose one of {', '.join(SCHEDULERS)}.",
        )
    return key


def fresh_scheduler(base_scheduler: Any, name: str | None, family: str) -> Any:
    """A new scheduler for one job, from the model's own configuration (plus the choice)."""
    import diffusers

    if name is None:
        return type(base_scheduler).from_config(base_scheduler.config)
    key = scheduler_name(name)
    if family in FLOW_MATCH_ONLY and key != "flow-euler":
        raise errors.InvalidRequestError(
            f"{family} models are flow-matching models; scheduler {name!r} does not apply.",
            param="scheduler",
            hint="Use flow-euler (the default) or leave the scheduler unset.",
        )
    if family not in FLOW_MATCH_ONLY and key == "flow-euler":
        raise errors.InvalidRequestError(
            "flow-euler is for SD3 and FLUX models.", param="scheduler"
        )
    class_name, overrides = SCHEDULERS[key]
    return getattr(diffusers, class_name).from_config(base_scheduler.config, **overrides)


def choose_device(requested: str | None = None) -> str:
    """cuda, then mps, then cpu; or what was asked for (checked to exist)."""
    import torch

    wanted = (requested or os.environ.get("LIMNER_LOCAL_DEVICE") or "auto").lower()
    if wanted == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    base = wanted.split(":")[0]
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}  # fmt: skip
    if base not in available:
        raise errors.InvalidRequestError(
            f"Unknown device {requested!r}.", param="device", hint="Use auto, cuda, mps or cpu."
        )
    if not available[base]:
        raise errors.InvalidRequestError(
            f"Device {wanted} is not available on this machine.",
            param="device",
            hint="Use --device auto or cpu.",
        )
    return wanted


def choose_dtype(device: str, requested: str | None = None) -> Any:
    """fp32 on CPU (bf16 is tens of times slower on CPUs without bf16 units); bf16 on recent
    GPUs, fp16 on older ones and on MPS."""
    import torch

    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}  # fmt: skip
    wanted = (requested or os.environ.get("LIMNER_LOCAL_DTYPE") or "auto").lower()
    if wanted != "auto":
        if wanted not in names:
            raise errors.InvalidRequestError(
                f"Unknown dtype {requested!r}.", param="dtype", hint="Use auto, fp32, fp16 or bf16."
            )
        return names[wanted]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


@dataclass(frozen=True)
class LoadSettings:
    device: str
    dtype: str
    offload: str = "none"  # none | model | sequential
    vae_tiling: bool = False
    optimise: bool = False


@dataclass
class LoadedModel:
    """One resident pipeline and what is attached to it. ``lock`` serialises jobs on it."""

    source: ModelSource
    settings: LoadSettings
    pipe: Any
    revision: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    loras: dict[str, str] = field(default_factory=dict)  # adapter name -> file
    active_loras: dict[str, float] = field(default_factory=dict)
    fused: tuple[tuple[str, float], ...] = ()
    controlnets: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.source.family


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """diffusers 0.42 renamed ``torch_dtype`` to ``dtype`` (the old name warns)."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("diffusers").split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (0, 42) else {"torch_dtype": dtype}


def _download(source: ModelSource) -> tuple[str, str]:
    """A local folder for a hub repo (the usual HF cache, with download progress) and its commit."""
    from diffusers import DiffusionPipeline

    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        folder = DiffusionPipeline.download(
            source.location,
            revision=source.revision,
            use_safetensors=True,
            local_files_only=offline,
        )
    except Exception as exc:  # hub errors have many classes; all mean "not obtainable now"
        raise errors.UserError(
            f"Model {source.location} is not in the local Hugging Face cache and could not be "
            f"downloaded ({type(exc).__name__}).",
            hint=f"Download it while online (`hf download {source.location}`), or accept its licence "
            "on huggingface.co and set HF_TOKEN for gated models.",
        ) from exc
    return str(folder), Path(folder).name


def _load(source: ModelSource, settings: LoadSettings) -> tuple[Any, str]:
    import torch
    from diffusers import AutoPipelineForText2Image

    dtype = getattr(torch, settings.dtype)
    if source.kind == "single_file":
        return _load_single_file(source, dtype), source.revision or "unknown"
    folder, revision = (
        _download(source) if source.kind == "hub" else (source.location, source.revision or "local")
    )
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(
            folder, **dtype_kwarg(dtype), use_safetensors=True, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise errors.UserError(
            f"Could not load {source.location}: {exc}",
            hint="Check that it is a complete diffusers model saved as safetensors.",
        ) from exc
    return pipe, revision


def _load_single_file(source: ModelSource, dtype: Any) -> Any:
    import diffusers

    class_name = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
                  "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}.get(source.family)  # fmt: skip
    if class_name is None:
        raise errors.UserError(
            f"Single-file {source.family} checkpoints are not supported; use a diffusers folder."
        )
    try:
        return getattr(diffusers, class_name).from_single_file(
            source.location, **dtype_kwarg(dtype), config=source.config
        )
    except Exception as exc:  # the single-file loader raises many kinds, all meaning "cannot load"
        raise errors.UserError(
            f"Could not load the single-file checkpoint {source.location}: {exc}",
            hint="Offline, pass the matching diffusers configuration: `limner models add NAME FILE` "
            "with config = the base model's folder or repo in models.toml.",
        ) from exc


def _place(pipe: Any, settings: LoadSettings) -> None:
    if settings.offload == "model" and settings.device != "cpu":
        pipe.enable_model_cpu_offload(device=settings.device)
    elif settings.offload == "sequential" and settings.device != "cpu":
        pipe.enable_sequential_cpu_offload(device=settings.device)
    else:
        pipe.to(settings.device)
    if settings.vae_tiling and getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    if settings.optimise:
        from limner.local.speed import optimise_pipeline

        optimise_pipeline(pipe)


class ModelCache:
    """The resident pipelines of one worker; the least recently used is dropped first."""

    def __init__(self, max_resident: int | None = None) -> None:
        self.max_resident = max_resident or int(os.environ.get("LIMNER_LOCAL_MAX_MODELS", "1"))
        self._models: OrderedDict[tuple[str, LoadSettings], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: ModelSource, settings: LoadSettings) -> LoadedModel:
        key = (source.key, settings)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            while len(self._models) >= self.max_resident:
                _, old = self._models.popitem(last=False)
                with old.lock:  # wait for a job still running on it
                    del old.pipe
                self._free_memory()
            pipe, revision = _load(source, settings)
            _place(pipe, settings)
            model = LoadedModel(source, settings, pipe, revision)
            self._models[key] = model
            return model

    def resident(self) -> list[LoadedModel]:
        return list(self._models.values())

    @staticmethod
    def _free_memory() -> None:
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# -- LoRA ------------------------------------------------------------------------------------
def _adapter_name(path: str) -> str:
    stem = Path(path).stem if Path(path).suffix else Path(path).name
    return "".join(c if c.isalnum() else "_" for c in stem)[:48] or "lora"


def apply_loras(model: LoadedModel, wanted: list[tuple[str, float]], fuse: bool) -> list[str]:
    """Load, weight and (optionally) fuse the requested LoRAs; turn the others off."""
    pipe = model.pipe
    notes: list[str] = []
    if model.fused and (not fuse or tuple(model.active_loras.items()) != model.fused):
        pipe.unfuse_lora()
        model.fused = ()
    names: dict[str, float] = {}
    for location, weight in wanted:
        name = next((n for n, f in model.loras.items() if f == location), None) or _load_lora(
            model, location
        )
        names[name] = weight
    if not names:
        if model.loras:
            pipe.disable_lora()
        model.active_loras = {}
        return notes
    pipe.enable_lora()
    pipe.set_adapters(list(names), adapter_weights=list(names.values()))
    model.active_loras = names
    if fuse and not model.fused:
        pipe.fuse_lora(adapter_names=list(names))
        model.fused = tuple(names.items())
        notes.append("LoRA fused into the weights for speed: " + ", ".join(names))
    return notes


def _load_lora(model: LoadedModel, location: str) -> str:
    from limner.local.models import refuse_pickle

    refuse_pickle(location)
    path = Path(location).expanduser()
    if not path.exists() and "/" not in location:
        raise errors.InvalidRequestError(f"LoRA {location} does not exist.", param="loras")
    name = _adapter_name(location)
    while name in model.loras:
        name += "_"
    before = set(_adapters(model.pipe))
    try:
        model.pipe.load_lora_weights(
            str(path) if path.exists() else location, adapter_name=name, use_safetensors=True
        )
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        _drop_adapter(model.pipe, name)
        raise _lora_mismatch(location, model, str(exc)) from exc
    if name not in set(_adapters(model.pipe)) - before:
        _drop_adapter(model.pipe, name)
        raise _lora_mismatch(location, model, "none of its layers match this model")
    model.loras[name] = location
    return name


def _adapters(pipe: Any) -> list[str]:
    return [name for names in pipe.get_list_adapters().values() for name in names]


def _drop_adapter(pipe: Any, name: str) -> None:
    with contextlib.suppress(ValueError, KeyError, AttributeError):
        pipe.delete_adapters(name)


def _lora_mismatch(location: str, model: LoadedModel, detail: str) -> errors.InvalidRequestError:
    return errors.InvalidRequestError(
        f"LoRA {Path(location).name} does not fit {model.source.location} ({model.family}): {detail[:300]}",
        param="loras",
        hint=f"Use a LoRA trained for a {model.family} base model.",
    )
