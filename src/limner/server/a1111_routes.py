"""An AUTOMATIC1111-compatible subset (``/sdapi/v1/...``) so the tools that speak it (Open WebUI,
SillyTavern, editor plugins) can use any limner model.

The checkpoint is any limner model: ``override_settings.sd_model_checkpoint`` per request, or
``sd_model_checkpoint`` set through ``POST /sdapi/v1/options``. Fields a model cannot take
(steps, CFG scale, seed, negative prompt) are left out for that model and named in the
``info`` string's ``extra_generation_params``; A1111-only knobs (hires fix, scripts) are ignored.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from limner import codec, errors
from limner.catalog import ModelSpec
from limner.server.auth import Principal
from limner.server.context import ServerContext
from limner.server.deps import context, needs
from limner.server.inputs import image_from_b64
from limner.types import SEED_MAX, SEED_MIN, ImageRequest, Operation, Result

__all__ = ["router"]

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])

SAMPLERS = [
    "Euler a",
    "Euler",
    "DPM++ 2M",
    "DPM++ 2M Karras",
    "DPM++ SDE",
    "DDIM",
    "UniPC",
    "LMS",
    "Heun",
]


class Txt2ImgBody(BaseModel):
    # A1111 clients send dozens of fields this server does not use; they are accepted and ignored.
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field("", max_length=32000)
    negative_prompt: str = Field("", max_length=32000)
    styles: list[str] = Field(default_factory=list)
    seed: int = Field(-1, ge=SEED_MIN, le=SEED_MAX)
    sampler_name: str | None = None
    sampler_index: str | None = None
    batch_size: int = Field(1, ge=1, le=10)
    n_iter: int = Field(1, ge=1, le=10)
    steps: int = Field(50, ge=1, le=500)
    cfg_scale: float = Field(7.0, ge=0, le=100)
    width: int = Field(512, ge=16, le=8192)
    height: int = Field(512, ge=16, le=8192)
    restore_faces: bool | None = None
    tiling: bool | None = None
    denoising_strength: float | None = Field(None, ge=0, le=1)
    override_settings: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True
    save_images: bool = False


class Img2ImgBody(Txt2ImgBody):
    init_images: list[str] = Field(default_factory=list, max_length=16)
    mask: str | None = None
    denoising_strength: float | None = Field(0.75, ge=0, le=1)
    inpainting_mask_invert: int = 0
    resize_mode: int = 0
    mask_blur: int | None = None
    inpainting_fill: int | None = None
    inpaint_full_res: bool | None = None


def _options(ctx: ServerContext) -> dict[str, Any]:
    if not hasattr(ctx, "_a1111_options"):
        ctx._a1111_options = {"sd_model_checkpoint": None, "samples_format": "png"}  # type: ignore[attr-defined]
    options: dict[str, Any] = ctx._a1111_options  # type: ignore[attr-defined]
    return options


def _image_request(
    ctx: ServerContext, body: Txt2ImgBody, **extra: Any
) -> tuple[ImageRequest, ModelSpec, dict[str, Any]]:
    model = (
        body.override_settings.get("sd_model_checkpoint") or _options(ctx)["sd_model_checkpoint"]
    )
    spec = ctx.resolve(model)
    unused: dict[str, Any] = {}
    fields: dict[str, Any] = {
        "prompt": body.prompt,
        "model": spec.ref,
        "n": body.batch_size * body.n_iter,
    }
    fields["size"] = f"{body.width}x{body.height}"
    for flag, name, value in (
        (spec.steps, "steps", body.steps),
        (spec.guidance, "guidance", body.cfg_scale),
        (spec.seed, "seed", body.seed if body.seed >= 0 else None),
    ):
        if flag:
            fields[name] = value
        else:
            unused[name] = value
    if body.negative_prompt:
        fields["negative_prompt"] = body.negative_prompt
    sampler = body.sampler_name or body.sampler_index
    if sampler:
        unused["sampler"] = sampler
    return ImageRequest(**fields, **extra), spec, unused


def _info(body: Txt2ImgBody, request: ImageRequest, result: Result, unused: dict[str, Any]) -> str:
    seeds = [img.seed if img.seed is not None else -1 for img in result.images]
    width, height = (
        (result.images[0].width, result.images[0].height)
        if result.images
        else (body.width, body.height)
    )
    sampler = body.sampler_name or body.sampler_index or "Euler a"
    infotexts = []
    for seed in seeds:
        neg = f"\nNegative prompt: {body.negative_prompt}" if body.negative_prompt else ""
        infotexts.append(
            f"{body.prompt}{neg}\nSteps: {body.steps}, Sampler: {sampler}, CFG scale: {body.cfg_scale:g}, "
            f"Seed: {seed}, Size: {width}x{height}, Model: {result.model}, Version: limner"
        )
    info = {
        "prompt": body.prompt, "all_prompts": [body.prompt] * len(seeds),
        "negative_prompt": body.negative_prompt, "all_negative_prompts": [body.negative_prompt] * len(seeds),
        "seed": seeds[0] if seeds else -1, "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0, "width": width, "height": height, "sampler_name": sampler,
        "cfg_scale": body.cfg_scale, "steps": body.steps, "batch_size": body.batch_size,
        "restore_faces": bool(body.restore_faces), "face_restoration_model": None,
        "sd_model_name": result.model, "sd_model_hash": None, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": body.denoising_strength,
        "extra_generation_params": {
            "limner generation id": result.generation_id, "limner cost usd": result.cost_usd,
            **({"not used by this model": unused} if unused else {}),
            **({"warnings": result.warnings} if result.warnings else {}),
        },
        "index_of_first_image": 0, "infotexts": infotexts, "styles": body.styles,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
        "is_using_inpainting_conditioning": request.mask is not None, "version": "limner",
    }  # fmt: skip
    return json.dumps(info)


async def _run(
    ctx: ServerContext,
    op: Operation,
    body: Txt2ImgBody,
    request: ImageRequest,
    unused: dict[str, Any],
    principal: Principal | None = None,
) -> dict[str, Any]:
    state = ctx.progress.setdefault("a1111", {"active": 0, "progress": 0.0, "started": 0.0})
    state["active"] += 1
    state["started"] = time.time()

    def report(fraction: float | None, message: str) -> None:
        state["progress"] = fraction or 0.0

    try:
        result = await ctx.run(op, request, on_progress=report, principal=principal)
    finally:
        state["active"] -= 1
        state["progress"] = 0.0
    images = [codec.b64encode(img.data) for img in result.images] if body.send_images else []
    return {
        "images": images,
        "parameters": body.model_dump(),
        "info": _info(body, request, result, unused),
    }


@router.post("/txt2img")
async def txt2img(
    body: Txt2ImgBody,
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("generate")),
) -> dict[str, Any]:
    request, _, unused = _image_request(ctx, body)
    return await _run(ctx, Operation.GENERATE, body, request, unused, principal)


@router.post("/img2img")
async def img2img(
    body: Img2ImgBody,
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("generate")),
) -> dict[str, Any]:
    if not body.init_images:
        raise errors.InvalidRequestError(
            "img2img needs at least one image in 'init_images'.", param="init_images"
        )
    limit = ctx.settings.max_upload_bytes
    images = [
        image_from_b64(v, name=f"init_images[{i}]", max_bytes=limit)
        for i, v in enumerate(body.init_images)
    ]
    mask = image_from_b64(body.mask, name="mask", max_bytes=limit) if body.mask else None
    if mask is not None and body.inpainting_mask_invert:
        mask = _inverted(mask)
    request, _, unused = _image_request(
        ctx, body, images=images, mask=mask, strength=body.denoising_strength
    )
    op = Operation.INPAINT if mask is not None else Operation.EDIT
    return await _run(ctx, op, body, request, unused, principal)


def _inverted(mask: Any) -> Any:
    import io

    from PIL import ImageOps

    from limner.images import load_image, mask_to_edit_area

    area = ImageOps.invert(mask_to_edit_area(mask))
    buf = io.BytesIO()
    area.save(buf, format="PNG")
    return load_image(buf.getvalue(), name="mask.png")


@router.get("/sd-models")
async def sd_models(
    ctx: ServerContext = Depends(context), principal: Principal = Depends(needs("read"))
) -> list[dict[str, Any]]:
    return [
        {
            "title": s.ref,
            "model_name": s.ref,
            "hash": None,
            "sha256": None,
            "filename": s.ref,
            "config": None,
        }
        for s in ctx.catalog.filter(capability="generate", include_retired=False)
    ]


@router.get("/samplers")
async def samplers(principal: Principal = Depends(needs("read"))) -> list[dict[str, Any]]:
    return [{"name": name, "aliases": [], "options": {}} for name in SAMPLERS]


@router.get("/options")
async def get_options(
    ctx: ServerContext = Depends(context), principal: Principal = Depends(needs("read"))
) -> dict[str, Any]:
    options = dict(_options(ctx))
    if not options["sd_model_checkpoint"]:
        try:
            options["sd_model_checkpoint"] = ctx.resolve(None).ref
        except errors.LimnerError:
            options["sd_model_checkpoint"] = None
    return options


@router.post("/options")
async def set_options(
    body: dict[str, Any],
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("admin")),
) -> dict[str, Any]:
    options = _options(ctx)
    if "sd_model_checkpoint" in body:
        options["sd_model_checkpoint"] = ctx.resolve(str(body["sd_model_checkpoint"])).ref
    for key in ("samples_format",):
        if key in body:
            options[key] = body[key]
    return {}


@router.get("/progress")
async def progress(
    ctx: ServerContext = Depends(context), principal: Principal = Depends(needs("read"))
) -> dict[str, Any]:
    state = ctx.progress.get("a1111", {"active": 0, "progress": 0.0, "started": 0.0})
    active = state["active"] > 0
    return {
        "progress": state["progress"] if active else 0.0,
        "eta_relative": 0.0,
        "state": {
            "skipped": False, "interrupted": False, "job": "limner" if active else "",
            "job_count": state["active"], "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(state["started"] or time.time())),
            "job_no": 0, "sampling_step": 0, "sampling_steps": 0,
        },
        "current_image": None,
        "textinfo": None,
    }  # fmt: skip
