"""An emulator of the OpenAI Images API (generations, edits, variations), faithful enough for
the official ``openai`` SDK: per-model validation, usage in tokens, ``x-request-id``, the
``moderation_blocked`` refusal, ``url`` results served from an expiring delivery path."""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from limner import codec
from limner.emulators.common import (
    BLOCKED_WORD,
    EmulatorState,
    JSONResponse,
    emulator_app,
    render_image,
)

__all__ = ["BASE_PATH", "create_app"]

BASE_PATH = "/v1"

GPT_SIZES = {"auto", "1024x1024", "1536x1024", "1024x1536"}
MODELS: dict[str, dict[str, Any]] = {
    "gpt-image-2": {
        "api": "gpt",
        "free_size": True,
        "qualities": {"auto", "low", "medium", "high"},
    },
    "gpt-image-2.5-flare": {
        "api": "gpt",
        "free_size": True,
        "qualities": {"auto", "low", "medium", "high", "xhigh", "max"},
    },
    "gpt-image-2.5-sunburst": {
        "api": "gpt",
        "free_size": True,
        "qualities": {"auto", "low", "medium", "high", "xhigh", "max"},
    },
    "gpt-image-1.5": {"api": "gpt", "qualities": {"auto", "low", "medium", "high"}},
    "gpt-image-1-mini": {"api": "gpt", "qualities": {"auto", "low", "medium", "high"}},
    "gpt-image-1": {"api": "gpt", "qualities": {"auto", "low", "medium", "high"}},
    "dall-e-3": {
        "api": "dalle",
        "sizes": {"1024x1024", "1792x1024", "1024x1792"},
        "qualities": {"standard", "hd"},
        "max_n": 1,
    },
    "dall-e-2": {
        "api": "dalle",
        "sizes": {"256x256", "512x512", "1024x1024"},
        "qualities": {"standard"},
    },
}
# Output image tokens for a 1024x1024 image, by quality (OpenAI's published token table).
OUTPUT_TOKENS = {
    "low": 272,
    "medium": 1056,
    "high": 4160,
    "xhigh": 7168,
    "max": 16384,
    "auto": 1056,
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status, self.param, self.code, self.type = status, param, code, type_
        self.extra = extra or {}

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "message": str(self),
                "type": self.type,
                "param": self.param,
                "code": self.code,
                **self.extra,
            }
        }
        return JSONResponse(body, status_code=self.status, headers={"x-request-id": _request_id()})


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = {429: "rate_limit_exceeded", 401: "invalid_api_key"}.get(status, "server_error")
    return {
        "error": {
            "message": message,
            "type": kind if status < 500 else "server_error",
            "param": None,
            "code": kind,
        }
    }


def _request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


def _model_rules(model: str) -> dict[str, Any]:
    base = model.split("-20")[0] if model.startswith("gpt-image-2.5") else model
    if base not in MODELS:
        raise APIError(
            400, f"Invalid value for 'model': '{model}'.", param="model", code="invalid_value"
        )
    return MODELS[base]


def _parse_size(size: str, rules: dict[str, Any]) -> tuple[int, int]:
    if size == "auto" and rules["api"] == "gpt":
        return 1024, 1024
    if rules.get("free_size"):
        try:
            w, h = (int(v) for v in size.split("x"))
        except ValueError:
            raise APIError(
                400, f"Invalid size '{size}'.", param="size", code="invalid_value"
            ) from None
        if w % 16 or h % 16 or max(w, h) > 3840 or max(w, h) / min(w, h) > 3:
            raise APIError(
                400,
                f"Invalid size '{size}': width and height must be multiples of 16, at most 3840, aspect within 3:1.",
                param="size",
                code="invalid_value",
            )
        return w, h
    allowed = rules.get("sizes", GPT_SIZES)
    if size not in allowed:
        raise APIError(
            400,
            f"Invalid value: '{size}'. Supported values are: {', '.join(sorted(allowed))}.",
            param="size",
            code="invalid_value",
        )
    w, h = (int(v) for v in size.split("x"))
    return w, h


def _check_params(params: dict[str, Any], rules: dict[str, Any]) -> None:
    gpt = rules["api"] == "gpt"
    if gpt and "response_format" in params:
        raise APIError(
            400,
            "Unknown parameter: 'response_format'.",
            param="response_format",
            code="unknown_parameter",
        )
    if not gpt:
        for name in ("background", "output_format", "output_compression", "moderation"):
            if name in params:
                raise APIError(
                    400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
                )
    if "style" in params and rules is not MODELS["dall-e-3"]:
        raise APIError(400, "Unknown parameter: 'style'.", param="style", code="unknown_parameter")
    n = int(params.get("n", 1))
    if not 1 <= n <= rules.get("max_n", 10):
        raise APIError(
            400,
            f"Invalid 'n': must be between 1 and {rules.get('max_n', 10)}.",
            param="n",
            code="invalid_value",
        )
    quality = params.get("quality")
    if quality and quality not in rules["qualities"]:
        raise APIError(
            400, f"Invalid value for 'quality': '{quality}'.", param="quality", code="invalid_value"
        )
    if params.get("background") == "transparent" and params.get("output_format") == "jpeg":
        raise APIError(
            400, "Transparent background requires output_format png or webp.", param="background"
        )
    if BLOCKED_WORD in str(params.get("prompt", "")):
        raise APIError(
            400,
            "Your request was rejected by the safety system. safety_violations=[violence].",
            code="moderation_blocked" if gpt else "content_policy_violation",
            type_="image_generation_user_error" if gpt else "invalid_request_error",
            extra={"moderation_details": {"moderation_stage": "input", "categories": ["violence"]}}
            if gpt
            else None,
        )


def _render_response(
    request: Request,
    state: EmulatorState,
    params: dict[str, Any],
    rules: dict[str, Any],
    input_images: int = 0,
) -> JSONResponse:
    width, height = _parse_size(
        str(params.get("size", "auto" if rules["api"] == "gpt" else "1024x1024")), rules
    )
    fmt = params.get("output_format", "png") if rules["api"] == "gpt" else "png"
    n = int(params.get("n", 1))
    prompt = str(params.get("prompt", ""))
    seed_base = int(time.time_ns() % 1_000_000) if params.get("_random") else 0
    data = []
    for i in range(n):
        raw = render_image(prompt, seed_base + i, width, height, fmt, noise=state.noise)
        item: dict[str, Any] = {}
        if rules["api"] == "dalle" and params.get("response_format", "url") == "url":
            base = str(request.base_url).rstrip("/")
            item["url"] = state.delivery.put(raw, f"image/{fmt}", base)
        else:
            item["b64_json"] = codec.b64encode(raw)
        if rules is MODELS["dall-e-3"]:
            item["revised_prompt"] = f"{prompt}, rendered in rich detail"
        data.append(item)
    body: dict[str, Any] = {"created": int(time.time()), "data": data}
    if rules["api"] == "gpt":
        quality = params.get("quality", "auto")
        scale = width * height / (1024 * 1024)
        out_tokens = int(OUTPUT_TOKENS.get(quality, 1056) * scale) * n
        text_tokens = max(len(prompt.split()), 1)
        image_tokens = 323 * input_images
        body.update(
            background=params.get("background", "opaque"),
            output_format=fmt,
            quality=quality,
            size=f"{width}x{height}",
            usage={
                "input_tokens": text_tokens + image_tokens,
                "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
                "output_tokens": out_tokens,
                "total_tokens": text_tokens + image_tokens + out_tokens,
                "output_tokens_details": {"text_tokens": 0, "image_tokens": out_tokens},
            },
        )
    return JSONResponse(body, headers={"x-request-id": _request_id(), "openai-processing-ms": "1"})


def _check_auth(request: Request) -> None:
    if not request.headers.get("authorization", "").startswith("Bearer "):
        raise APIError(
            401,
            "You didn't provide an API key.",
            code="invalid_api_key",
            type_="invalid_request_error",
        )


async def _form_params(
    request: Request,
) -> tuple[dict[str, Any], list[UploadFile], UploadFile | None]:
    form = await request.form()
    params: dict[str, Any] = {}
    images: list[UploadFile] = []
    mask: UploadFile | None = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key in ("image", "image[]"):
                images.append(value)
            elif key == "mask":
                mask = value
        else:
            params[key] = value
    return params, images, mask


async def _image_size(upload: UploadFile) -> tuple[int, int, bytes]:
    from PIL import Image

    data = await upload.read()
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width, img.height, data
    except Exception:
        raise APIError(
            400, "Invalid image file or mode for image.", param="image", code="invalid_image"
        ) from None


def _state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


async def generations(request: Request) -> Response:
    try:
        _check_auth(request)
        try:
            params = await request.json()
        except ValueError:
            raise APIError(400, "We could not parse the JSON body of your request.") from None
        if not params.get("prompt"):
            raise APIError(
                400,
                "Missing required parameter: 'prompt'.",
                param="prompt",
                code="missing_required_parameter",
            )
        rules = _model_rules(params.get("model", "dall-e-2"))
        _check_params(params, rules)
        return _render_response(request, _state(request), params, rules)
    except APIError as exc:
        return exc.response()


async def edits(request: Request) -> Response:
    try:
        _check_auth(request)
        params, images, mask = await _form_params(request)
        if not images:
            raise APIError(400, "Missing required parameter: 'image'.", param="image")
        if not params.get("prompt"):
            raise APIError(400, "Missing required parameter: 'prompt'.", param="prompt")
        rules = _model_rules(params.get("model", "gpt-image-1.5"))
        if rules is MODELS["dall-e-3"]:
            raise APIError(400, "dall-e-3 does not support edits.", param="model")
        _check_params(params, rules)
        width, height, _ = await _image_size(images[0])
        if mask is not None:
            mw, mh, _ = await _image_size(mask)
            if (mw, mh) != (width, height):
                raise APIError(
                    400,
                    "Invalid mask: the mask must have the same dimensions as the image.",
                    param="mask",
                )
        if "size" not in params:
            params["size"] = (
                f"{width}x{height}" if rules.get("free_size") or rules["api"] == "dalle" else "auto"
            )
        return _render_response(request, _state(request), params, rules, input_images=len(images))
    except APIError as exc:
        return exc.response()


async def variations(request: Request) -> Response:
    try:
        _check_auth(request)
        params, images, _ = await _form_params(request)
        if not images:
            raise APIError(400, "Missing required parameter: 'image'.", param="image")
        rules = _model_rules(params.get("model", "dall-e-2"))
        if rules is not MODELS["dall-e-2"]:
            raise APIError(400, "Variations are only supported by dall-e-2.", param="model")
        width, height, data = await _image_size(images[0])
        if width != height:
            raise APIError(400, "Uploaded image must be square.", param="image")
        params["prompt"] = "variation-" + hashlib.sha256(data).hexdigest()[:12]
        _check_params(params, rules)
        return _render_response(request, _state(request), params, rules)
    except APIError as exc:
        return exc.response()


EXTRA_ROUTES: list[Route] = []


def create_app(state: EmulatorState | None = None) -> Any:
    state = state or EmulatorState()
    state.delivery.ttl = 3600.0  # OpenAI's result URLs last 60 minutes

    async def moderations(request: Request) -> Response:
        # Flags any input holding BLOCKED_WORD, in the response shape of POST /v1/moderations.
        try:
            _check_auth(request)
            try:
                params = await request.json()
            except ValueError:
                raise APIError(400, "We could not parse the JSON body of your request.") from None
            if "input" not in params:
                raise APIError(
                    400,
                    "Missing required parameter: 'input'.",
                    param="input",
                    code="missing_required_parameter",
                )
            inputs = params["input"] if isinstance(params["input"], list) else [params["input"]]
            results = []
            for item in inputs:
                text = item.get("text", "") if isinstance(item, dict) else str(item)
                hit = BLOCKED_WORD in text
                results.append({
                    "flagged": hit,
                    "categories": {"violence": hit, "harassment": False, "sexual": False, "self-harm": False},
                    "category_scores": {"violence": 0.97 if hit else 0.001, "harassment": 0.001, "sexual": 0.001, "self-harm": 0.001},
                })  # fmt: skip
            model = params.get("model", "omni-moderation-latest")
            body = {"id": "modr-" + uuid.uuid4().hex[:20], "model": model, "results": results}
            return JSONResponse(body, headers={"x-request-id": _request_id()})
        except APIError as exc:
            return exc.response()

    routes = [
        Route(f"{BASE_PATH}/moderations", moderations, methods=["POST"]),
        Route(f"{BASE_PATH}/images/generations", generations, methods=["POST"]),
        Route(f"{BASE_PATH}/images/edits", edits, methods=["POST"]),
        Route(f"{BASE_PATH}/images/variations", variations, methods=["POST"]),
        *EXTRA_ROUTES,
    ]
    return emulator_app(routes, state, error_body)
