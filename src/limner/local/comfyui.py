"""ComfyUI API-format workflows (``{node_id: {class_type, inputs}}``) for a generation.

The workflow uses ComfyUI's core nodes (CheckpointLoaderSimple, CLIPTextEncode, KSampler,
VAEDecode, SaveImage; LoadImage/VAEEncode for img2img, SetLatentNoiseMask for inpainting,
LoraLoader, ControlNetLoader/ControlNetApplyAdvanced), so it loads in a stock ComfyUI with the
same checkpoint, seed, steps, CFG, sampler and size. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["SAMPLERS", "checkpoint_name", "workflow_for"]

# limner scheduler name -> (ComfyUI sampler_name, ComfyUI scheduler)
SAMPLERS: dict[str, tuple[str, str]] = {
    "euler": ("euler", "normal"),
    "euler-a": ("euler_ancestral", "normal"),
    "dpm++-2m": ("dpmpp_2m", "normal"),
    "dpm++-2m-karras": ("dpmpp_2m", "karras"),
    "dpm++-2m-sde": ("dpmpp_2m_sde", "normal"),
    "dpm++-sde": ("dpmpp_sde", "normal"),
    "ddim": ("ddim", "ddim_uniform"),
    "pndm": ("euler", "normal"),
    "heun": ("heun", "normal"),
    "lms": ("lms", "normal"),
    "unipc": ("uni_pc", "normal"),
    "lcm": ("lcm", "sgm_uniform"),
    "tcd": ("euler", "sgm_uniform"),
    "flow-euler": ("euler", "simple"),
}
FAMILY_DEFAULT_SAMPLER = {
    "sd": "euler",
    "sdxl": "euler",
    "sd3": "flow-euler",
    "flux": "flow-euler",
    "flux2": "flow-euler",
}
# The single-file checkpoints ComfyUI users put in models/checkpoints for the catalog models.
CHECKPOINTS = {
    "stabilityai/sd-turbo": "sd_turbo.safetensors",
    "stabilityai/sdxl-turbo": "sd_xl_turbo_1.0_fp16.safetensors",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "v1-5-pruned-emaonly.safetensors",
    "stabilityai/stable-diffusion-xl-base-1.0": "sd_xl_base_1.0.safetensors",
    "stabilityai/stable-diffusion-3.5-medium": "sd3.5_medium.safetensors",
    "stabilityai/stable-diffusion-3.5-large": "sd3.5_large.safetensors",
    "black-forest-labs/FLUX.1-schnell": "flux1-schnell-fp8.safetensors",
    "black-forest-labs/FLUX.1-dev": "flux1-dev-fp8.safetensors",
}


def checkpoint_name(wire: dict[str, Any], model_id: str) -> str:
    """The checkpoint file name ComfyUI should load for a local model."""
    if wire.get("comfyui_checkpoint"):
        return str(wire["comfyui_checkpoint"])
    repo = str(wire.get("repo", ""))
    if repo in CHECKPOINTS:
        return CHECKPOINTS[repo]
    path = Path(str(wire.get("path", model_id)))
    return (
        path.name
        if path.suffix == ".safetensors"
        else f"{path.name or model_id.replace('/', '_')}.safetensors"
    )


def sampler_for(scheduler: str | None, family: str) -> tuple[str, str]:
    return SAMPLERS.get(
        scheduler or FAMILY_DEFAULT_SAMPLER.get(family, "euler"), ("euler", "normal")
    )


def _node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def workflow_for(
    *,
    checkpoint: str,
    family: str,
    prompt: str,
    negative_prompt: str | None,
    seed: int,
    steps: int,
    cfg: float,
    width: int,
    height: int,
    n: int = 1,
    scheduler: str | None = None,
    operation: str = "generate",
    strength: float | None = None,
    image_name: str | None = None,
    mask_name: str | None = None,
    loras: list[tuple[str, float]] | None = None,
    controlnets: list[dict[str, Any]] | None = None,
    filename_prefix: str = "limner",
) -> dict[str, Any]:
    """An API-format workflow reproducing one generation's settings."""
    sampler_name, comfy_scheduler = sampler_for(scheduler, family)
    wf: dict[str, Any] = {"4": _node("CheckpointLoaderSimple", ckpt_name=checkpoint)}
    model_ref, clip_ref = ["4", 0], ["4", 1]
    next_id = 10
    for lora, weight in loras or []:
        wf[str(next_id)] = _node("LoraLoader", lora_name=Path(lora).name, strength_model=weight,
                                 strength_clip=weight, model=model_ref, clip=clip_ref)  # fmt: skip
        model_ref, clip_ref = [str(next_id), 0], [str(next_id), 1]
        next_id += 1
    wf["6"] = _node("CLIPTextEncode", text=prompt, clip=clip_ref)
    wf["7"] = _node("CLIPTextEncode", text=negative_prompt or "", clip=clip_ref)
    positive, negative = ["6", 0], ["7", 0]
    if family in ("flux", "flux2"):
        # FLUX takes its guidance as conditioning; the sampler's CFG stays at 1.
        wf["60"] = _node("FluxGuidance", guidance=cfg, conditioning=positive)
        positive, cfg = ["60", 0], 1.0
    denoise = 1.0
    if image_name and operation != "controlnet":
        wf["20"] = _node("LoadImage", image=image_name)
        wf["21"] = _node("VAEEncode", pixels=["20", 0], vae=["4", 2])
        latent: list[Any] = ["21", 0]
        if mask_name:
            wf["22"] = _node("LoadImage", image=mask_name)
            wf["23"] = _node("ImageToMask", channel="red", image=["22", 0])
            wf["24"] = _node("SetLatentNoiseMask", samples=latent, mask=["23", 0])
            latent = ["24", 0]
        if n > 1:
            wf["25"] = _node("RepeatLatentBatch", samples=latent, amount=n)
            latent = ["25", 0]
        denoise = strength if strength is not None else 0.75
    else:
        wf["5"] = _node("EmptyLatentImage", width=width, height=height, batch_size=n)
        latent = ["5", 0]
    for control in controlnets or []:
        loader, load_image, apply = str(next_id), str(next_id + 1), str(next_id + 2)
        wf[loader] = _node(
            "ControlNetLoader", control_net_name=Path(str(control["model"])).name + ".safetensors"
        )
        wf[load_image] = _node(
            "LoadImage", image=control.get("image_name", image_name or "control.png")
        )
        wf[apply] = _node("ControlNetApplyAdvanced", positive=positive, negative=negative,
                          control_net=[loader, 0], image=[load_image, 0], strength=control.get("scale", 1.0),
                          start_percent=0.0, end_percent=1.0, vae=["4", 2])  # fmt: skip
        positive, negative = [apply, 0], [apply, 1]
        next_id += 3
    wf["3"] = _node("KSampler", seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                    scheduler=comfy_scheduler, denoise=denoise, model=model_ref, positive=positive,
                    negative=negative, latent_image=latent)  # fmt: skip
    wf["8"] = _node("VAEDecode", samples=["3", 0], vae=["4", 2])
    wf["9"] = _node("SaveImage", filename_prefix=filename_prefix, images=["8", 0])
    return dict(sorted(wf.items(), key=lambda kv: int(kv[0])))
