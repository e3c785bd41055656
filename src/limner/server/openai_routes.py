"""The OpenAI-compatible Images API: generations, edits, variations, models, and asset URLs.

``model`` routes to any limner model (``openai:gpt-image-2``, ``bfl:flux-2-pro``, an alias).
Besides OpenAI's fields, requests may carry limner's own (``negative_prompt``, ``seed``,
``steps``, ``guidance``, ``aspect_ratio``, ``tags``, ``project``, ``provider_options``); every
response adds a ``limner`` object with the generation id, the model used, cost and warnings.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import FormData, UploadFile

from limner import codec, errors
from limner.responses import FastJSONResponse
from limner.server.auth import Principal
from limner.server.context import ServerContext
from limner.server.deps import context, needs
from limner.server.errors import ApiError
from limner.server.inputs import ASPECT_PATTERN, SIZE_PATTERN, image_from_upload
from limner.types import SEED_MAX, SEED_MIN, ImageInput, ImageRequest, Operation, Result

__all__ = ["router"]

router = APIRouter()

ResponseFormat = Literal["b64_json", "url"]


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    n: int = Field(1, ge=1, le=10)
    size: str | None = Field(None, pattern=SIZE_PATTERN)
    quality: str | None = None
    response_format: ResponseFormat | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    moderation: Literal["auto", "low"] | None = None
    user: str | None = Field(None, max_length=256)
    # limner's own fields
    negative_prompt: str | None = Field(None, max_length=32000)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    steps: int | None = Field(None, ge=1, le=500)
    guidance: float | None = Field(None, ge=0, le=100)
    aspect_ratio: str | None = Field(None, pattern=ASPECT_PATTERN)
    tags: list[str] = Field(default_factory=list, max_length=32)
    project: str | None = Field(None, max_length=200)
    provider_options: dict[str, Any] = Field(default_factory=dict)


class GenerationBody(_Common):
    prompt: str = Field(min_length=1, max_length=32000)
    style: str | None = None
    stream: bool | None = None
    partial_images: int | None = Field(None, ge=0, le=3)


class EditFields(_Common):
    prompt: str = Field(min_length=1, max_length=32000)
    input_fidelity: Literal["high", "low"] | None = None
    strength: float | None = Field(None, ge=0, le=1)


class VariationFields(_Common):
    pass


BINARY = {"type": "string", "format": "binary"}
IMAGE_FILES = {
    "type": "array", "items": BINARY, "maxItems": 16,
    "description": "The input image file(s): PNG, JPEG or WebP. Repeat the part for several.",
}  # fmt: skip


def multipart_body(fields: type[_Common], files: dict[str, Any], required: list[str]) -> Any:
    """The OpenAPI ``requestBody`` of a multipart route that reads its form by hand: the text
    fields of ``fields`` (as form fields: no nulls, no JSON objects) plus the ``files``."""
    schema = fields.model_json_schema()
    properties: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        if name == "provider_options":
            continue  # an object: the JSON routes take it, a form field cannot
        options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
        kept = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
        properties[name] = (
            {**kept, **options[0]} if len(options) == 1 else {**kept, "anyOf": options}
        )
    properties.update(files)
    body = {
        "type": "object", "properties": properties, "required": required,
        "additionalProperties": False,
    }  # fmt: skip
    encoding = {name: {"contentType": "image/png, image/jpeg, image/webp"} for name in files}
    content = {"multipart/form-data": {"schema": body, "encoding": encoding}}
    return {"requestBody": {"required": True, "content": content}}


def to_image_request(body: _Common, prompt: str = "", **extra: Any) -> ImageRequest:
    """Translate the OpenAI fields to an :class:`ImageRequest`; wire-only options pass through."""
    if getattr(body, "stream", None):
        raise errors.InvalidRequestError(
            "Streaming is not supported by this server.", param="stream", hint="Omit 'stream'."
        )
    options = dict(body.provider_options)
    for name in ("output_compression", "moderation", "input_fidelity"):
        value = getattr(body, name, None)
        if value is not None:
            options[name] = value
    return ImageRequest(
        prompt=prompt, model=body.model, n=body.n, size=body.size, quality=body.quality,
        style=getattr(body, "style", None), output_format=body.output_format,
        background=body.background, negative_prompt=body.negative_prompt, seed=body.seed,
        steps=body.steps, guidance=body.guidance, aspect_ratio=body.aspect_ratio,
        tags=body.tags, project=body.project, provider_options=options, **extra,
    )  # fmt: skip


def images_payload(
    ctx: ServerContext, result: Result, response_format: str | None
) -> dict[str, Any]:
    data = []
    for image in result.images:
        item: dict[str, Any] = {}
        if response_format == "url" and image.sha256:
            item["url"] = ctx.absolute(ctx.sign(image.sha256))
        else:
            item["b64_json"] = codec.b64encode(image.data)
        if image.revised_prompt:
            item["revised_prompt"] = image.revised_prompt
        data.append(item)
    payload: dict[str, Any] = {"created": int(time.time()), "data": data}
    usage = result.usage
    if usage.input_tokens is not None or usage.output_tokens is not None:
        payload["usage"] = {
            "input_tokens": usage.input_tokens or 0,
            "output_tokens": usage.output_tokens or 0,
            "total_tokens": (usage.input_tokens or 0) + (usage.output_tokens or 0),
            "input_tokens_details": {
                "text_tokens": usage.input_text_tokens or 0,
                "image_tokens": usage.input_image_tokens or 0,
            },
        }
    if result.images:
        payload["output_format"] = result.images[0].extension.replace("jpg", "jpeg")
    payload["limner"] = {
        "generation_id": result.generation_id, "model": result.model, "provider": result.provider,
        "cost_usd": result.cost_usd, "warnings": result.warnings, "cache_hit": result.cache_hit,
        "seeds": [img.seed for img in result.images],
    }  # fmt: skip
    return payload


@router.post("/v1/images/generations", tags=["openai"])
async def generations(
    body: GenerationBody,
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("generate")),
) -> FastJSONResponse:
    request = to_image_request(body, body.prompt)
    result = await ctx.run(Operation.GENERATE, request, principal=principal)
    return FastJSONResponse(images_payload(ctx, result, body.response_format))


async def _form(request: Request, ctx: ServerContext) -> FormData:
    try:
        return await request.form(
            max_files=ctx.settings.max_images + 1, max_fields=64, max_part_size=64 * 1024
        )
    except Exception as exc:  # multipart parse errors of every kind are the client's
        raise ApiError(
            400, f"The multipart body could not be parsed: {exc}.", code="invalid_multipart"
        ) from None


async def _split_form(
    form: FormData, ctx: ServerContext
) -> tuple[dict[str, Any], list[ImageInput], ImageInput | None]:
    fields: dict[str, Any] = {}
    images: list[ImageInput] = []
    mask: ImageInput | None = None
    limit = ctx.settings.max_upload_bytes
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key in ("image", "image[]"):
                if len(images) >= ctx.settings.max_images:
                    raise errors.InputImageError(
                        f"At most {ctx.settings.max_images} images per request."
                    )
                images.append(
                    await image_from_upload(value, name=f"image {len(images) + 1}", max_bytes=limit)
                )
            elif key == "mask":
                mask = await image_from_upload(value, name="mask", max_bytes=limit)
            else:
                raise errors.InvalidRequestError(f"Unknown file field {key!r}.", param=key)
        elif key in ("tags", "tags[]"):
            fields.setdefault("tags", []).append(value)
        elif key in ("image", "image[]", "mask"):
            raise errors.InputImageError(
                f"{key!r} must be a file upload.", hint="Send it as a multipart file part."
            )
        else:
            fields[key] = value
    return fields, images, mask


def _parse_fields(model: type[_Common], fields: dict[str, Any]) -> Any:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first.get("loc", ())) or None
        if first["type"] == "extra_forbidden":
            raise errors.InvalidRequestError(f"Unknown field {name!r}.", param=name) from None
        if first["type"] == "missing":
            raise errors.InvalidRequestError(
                f"Missing required field {name!r}.", param=name
            ) from None
        raise errors.InvalidRequestError(f"Invalid {name}: {first['msg']}.", param=name) from None


@router.post(
    "/v1/images/edits",
    tags=["openai"],
    openapi_extra=multipart_body(
        EditFields,
        {
            "image": IMAGE_FILES,
            "image[]": {**IMAGE_FILES, "description": "The same as 'image' (OpenAI's array form)."},
            "mask": {
                **BINARY,
                "description": "PNG the size of the first image; transparent (or white) where it may change.",
            },
        },
        ["prompt", "image"],
    ),
)
async def edits(
    request: Request,
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("generate")),
) -> FastJSONResponse:
    fields, images, mask = await _split_form(await _form(request, ctx), ctx)
    body = _parse_fields(EditFields, fields)
    if not images:
        raise errors.InvalidRequestError("Missing required file 'image'.", param="image")
    image_request = to_image_request(
        body, body.prompt, images=images, mask=mask, strength=body.strength
    )
    op = Operation.INPAINT if mask is not None else Operation.EDIT
    result = await ctx.run(op, image_request, principal=principal)
    return FastJSONResponse(images_payload(ctx, result, body.response_format))


@router.post(
    "/v1/images/variations",
    tags=["openai"],
    openapi_extra=multipart_body(
        VariationFields,
        {
            "image": {
                **BINARY,
                "description": "The image to make variations of (PNG, JPEG or WebP).",
            }
        },
        ["image"],
    ),
)
async def variations(
    request: Request,
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("generate")),
) -> FastJSONResponse:
    fields, images, mask = await _split_form(await _form(request, ctx), ctx)
    body = _parse_fields(VariationFields, fields)
    if len(images) != 1 or mask is not None:
        raise errors.InvalidRequestError(
            "Send exactly one 'image' file and no mask.", param="image"
        )
    result = await ctx.run(
        Operation.VARIATION, to_image_request(body, "", images=images), principal=principal
    )
    return FastJSONResponse(images_payload(ctx, result, body.response_format))


@router.get("/v1/models", tags=["openai"])
async def models(
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("read")),
) -> dict[str, Any]:
    data = [
        {
            "id": spec.ref, "object": "model", "created": 0, "owned_by": spec.provider,
            "limner": {"name": spec.name, "operations": [op.value for op in spec.operations],
                       "status": spec.status(), "aliases": spec.aliases},
        }
        for spec in ctx.catalog.filter(include_retired=False)
    ]  # fmt: skip
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}", tags=["openai"])
async def model(
    model_id: str,
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("read")),
) -> dict[str, Any]:
    spec = ctx.catalog.resolve(model_id)
    return {"id": spec.ref, "object": "model", "created": 0, "owned_by": spec.provider}


@router.get("/v1/assets/{sha256}", tags=["assets"], response_class=Response)
async def asset(
    sha256: str,
    expires: Annotated[int, Query()],
    sig: Annotated[str, Query(max_length=64)],
    ctx: ServerContext = Depends(context),
) -> Response:
    """An image by its opaque id, on a signed URL that expires (no API key needed)."""
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        raise ApiError(404, "No such asset.", code="not_found")
    if not ctx.verify(sha256, expires, sig):
        raise ApiError(403, "The asset URL is invalid or has expired.", code="url_expired")
    found = await ctx.in_thread(ctx.store.read_asset, sha256)
    if found is None:
        raise ApiError(404, "No such asset.", code="not_found")
    data, media_type = found
    ext = media_type.rpartition("/")[2].replace("jpeg", "jpg")
    return Response(
        data, media_type=media_type,
        headers={
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Content-Disposition": f'inline; filename="{sha256[:16]}.{ext}"',
            "Cache-Control": "private, max-age=3600",
        },
    )  # fmt: skip
