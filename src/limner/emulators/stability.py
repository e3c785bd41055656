"""An emulator of Stability AI's REST v2beta Stable Image API.

Generate (``ultra``, ``core``, ``sd3`` with its ``model`` and ``mode``), edit (``inpaint``,
``outpaint``, ``erase``, ``search-and-replace``, ``remove-background``), upscale (``fast``,
``conservative``, and ``creative`` which is asynchronous) and control (``sketch``,
``structure``, ``style``). Bodies must be multipart/form-data. ``Accept: image/*`` answers raw
bytes with ``finish-reason`` and ``seed`` headers; ``Accept: application/json`` answers
``{image, finish_reason, seed}``. A prompt holding ``BLOCKED_WORD`` comes back blurred with
``CONTENT_FILTERED``; one starting with it is refused with 403 ``content_moderation``. Errors
share ``{"id", "name", "errors": [...]}``; 429 past ``rate_limit`` requests in 10 seconds.
``GET /v2beta/results/{id}`` answers 202 while running, 200 with the result, and 404 once the
result has expired.

    POST /_emulator/jobs {"polls": 1, "result_ttl": 86400, "rate_limit": 150}
"""

from __future__ import annotations

import io
import random
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
    media_type_for,
    render_image,
)

__all__ = ["BASE_PATH", "SERVICES", "create_app"]

BASE_PATH = ""
ASPECTS = {"16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21"}
SD3_MODELS = {"sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium", "sd3.5-flash"}
STYLE_PRESETS = {
    "3d-model",
    "analog-film",
    "anime",
    "cinematic",
    "comic-book",
    "digital-art",
    "enhance",
    "fantasy-art",
    "isometric",
    "line-art",
    "low-poly",
    "modeling-compound",
    "neon-punk",
    "origami",
    "photographic",
    "pixel-art",
    "tile-texture",
}
MAX_BODY = 10 * 1024 * 1024
# needs: required fields; output: how the result size is derived.
SERVICES: dict[str, dict[str, Any]] = {
    "generate/ultra": {"needs": ["prompt"], "output": "aspect"},
    "generate/core": {"needs": ["prompt"], "output": "aspect"},
    "generate/sd3": {"needs": ["prompt"], "output": "aspect"},
    "edit/inpaint": {"needs": ["image", "prompt"], "output": "same"},
    "edit/outpaint": {"needs": ["image"], "output": "padded"},
    "edit/erase": {"needs": ["image"], "output": "same"},
    "edit/search-and-replace": {"needs": ["image", "prompt", "search_prompt"], "output": "same"},
    "edit/remove-background": {"needs": ["image"], "output": "same", "formats": {"png", "webp"}},
    "upscale/fast": {"needs": ["image"], "output": "x4"},
    "upscale/conservative": {"needs": ["image", "prompt"], "output": "x4"},
    "upscale/creative": {"needs": ["image", "prompt"], "output": "x4", "async": True},
    "control/sketch": {"needs": ["image", "prompt"], "output": "same"},
    "control/structure": {"needs": ["image", "prompt"], "output": "same"},
    "control/style": {"needs": ["image", "prompt"], "output": "aspect"},
}


class APIError(Exception):
    def __init__(self, status: int, name: str, *messages: str) -> None:
        super().__init__("; ".join(messages))
        self.status, self.name, self.messages = status, name, list(messages)

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"id": uuid.uuid4().hex, "name": self.name, "errors": self.messages},
            status_code=self.status,
        )


def error_body(status: int, message: str) -> dict[str, Any]:
    name = {
        400: "bad_request",
        401: "unauthorized",
        402: "payment_required",
        403: "forbidden",
        429: "rate_limit_exceeded",
    }.get(status, "internal_error")
    return {"id": uuid.uuid4().hex, "name": name, "errors": [message]}


def _aspect_size(aspect: str) -> tuple[int, int]:
    a, b = (int(v) for v in aspect.split(":"))
    height = (1_048_576 * b / a) ** 0.5
    return int(height * a / b) // 64 * 64, int(height) // 64 * 64


async def _read_image(field: str, upload: UploadFile) -> tuple[int, int]:
    from PIL import Image

    data = await upload.read()
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width, img.height
    except Exception:
        raise APIError(
            400, "invalid_image", f"{field}: the file is not a supported image"
        ) from None


def _number(params: dict[str, str], name: str, low: float, high: float, default: float) -> float:
    try:
        value = float(params.get(name, default))
    except ValueError:
        raise APIError(400, "bad_request", f"{name}: must be a number") from None
    if not low <= value <= high:
        raise APIError(400, "bad_request", f"{name}: must be between {low:g} and {high:g}")
    return value


def _check_params(service: str, params: dict[str, str], files: dict[str, UploadFile]) -> None:
    rules = SERVICES[service]
    for name in rules["needs"]:
        if name not in params and name not in files:
            raise APIError(400, "bad_request", f"{name}: required")
    if "aspect_ratio" in params and params["aspect_ratio"] not in ASPECTS:
        raise APIError(
            400, "bad_request", f"aspect_ratio: must be one of {', '.join(sorted(ASPECTS))}"
        )
    formats = rules.get("formats", {"jpeg", "png", "webp"})
    if params.get("output_format", "png") not in formats:
        raise APIError(
            400, "bad_request", f"output_format: must be one of {', '.join(sorted(formats))}"
        )
    if "style_preset" in params and params["style_preset"] not in STYLE_PRESETS:
        raise APIError(400, "bad_request", "style_preset: unknown preset")
    if service == "generate/sd3":
        if params.get("model", "sd3.5-large") not in SD3_MODELS:
            raise APIError(
                400, "bad_request", f"model: must be one of {', '.join(sorted(SD3_MODELS))}"
            )
        if params.get("mode") == "image-to-image" and (
            "image" not in files or "strength" not in params
        ):
            raise APIError(400, "bad_request", "image-to-image mode requires image and strength")
        _number(params, "cfg_scale", 1, 10, 4)
    if "strength" in params:
        _number(params, "strength", 0, 1, 0.5)
    if "creativity" in params:
        _number(params, "creativity", 0, 1, 0.35)
    if "control_strength" in params:
        _number(params, "control_strength", 0, 1, 0.7)
    _number(params, "seed", 0, 4294967294, 0)


async def _output_size(
    service: str, params: dict[str, str], files: dict[str, UploadFile]
) -> tuple[int, int]:
    rules = SERVICES[service]
    size = await _read_image("image", files["image"]) if "image" in files else None
    if "mask" in files and size and await _read_image("mask", files["mask"]) != size:
        raise APIError(400, "bad_request", "mask: must have the same dimensions as image")
    if rules["output"] == "same" or (rules["output"] == "aspect" and size and "strength" in params):
        assert size is not None
        return size
    if rules["output"] == "aspect":
        return _aspect_size(params.get("aspect_ratio", "1:1"))
    assert size is not None
    if rules["output"] == "padded":
        pads = {k: int(_number(params, k, 0, 2000, 0)) for k in ("left", "right", "up", "down")}
        if not any(pads.values()):
            raise APIError(
                400,
                "bad_request",
                "outpaint: at least one of left, right, up, down must be above 0",
            )
        return size[0] + pads["left"] + pads["right"], size[1] + pads["up"] + pads["down"]
    return size[0] * 4, size[1] * 4


def _blur(data: bytes, fmt: str) -> bytes:
    from PIL import Image, ImageFilter

    img = Image.open(io.BytesIO(data)).filter(ImageFilter.GaussianBlur(8))
    buf = io.BytesIO()
    img.save(buf, format={"jpeg": "JPEG", "webp": "WEBP"}.get(fmt, "PNG"))
    return buf.getvalue()


def _artifact(
    service: str, params: dict[str, str], size: tuple[int, int]
) -> tuple[bytes, str, str, int]:
    """(bytes, format, finish reason, seed) of a finished generation."""
    prompt = params.get("prompt", service)
    fmt = params.get("output_format", "png")
    seed = int(float(params.get("seed", 0))) or random.randint(1, 4294967294)
    data = render_image(prompt, seed, size[0], size[1], fmt)
    if service == "edit/remove-background":
        from PIL import Image

        img = Image.open(io.BytesIO(data)).convert("RGBA")
        img.putalpha(128)
        buf = io.BytesIO()
        img.save(buf, format="WEBP" if fmt == "webp" else "PNG")
        data = buf.getvalue()
    finish = "SUCCESS"
    if BLOCKED_WORD in prompt:
        data, finish = _blur(data, fmt), "CONTENT_FILTERED"
    return data, fmt, finish, seed


def _answer(request: Request, data: bytes, fmt: str, finish: str, seed: int) -> Response:
    if request.headers.get("accept", "image/*").startswith("application/json"):
        return JSONResponse({"image": codec.b64encode(data), "finish_reason": finish, "seed": seed})
    headers = {"finish-reason": finish, "seed": str(seed), "x-request-id": uuid.uuid4().hex}
    return Response(data, media_type=media_type_for(fmt), headers=headers)


class _StabilityEmulator:
    """Request handlers; jobs live in the shared ``EmulatorState.jobs``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.settings: dict[str, Any] = {"polls": 1, "result_ttl": 86400.0, "rate_limit": 150}
        self.recent: list[float] = []

    def check(self, request: Request) -> None:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            raise APIError(401, "unauthorized", "authorization: invalid or missing header value")
        accept = request.headers.get("accept", "image/*")
        if not (
            accept.startswith("image/") or accept.startswith("application/json") or accept == "*/*"
        ):
            raise APIError(400, "bad_request", "accept: must be image/* or application/json")
        now = time.time()
        self.recent[:] = [t for t in self.recent if now - t < 10]
        if len(self.recent) >= self.settings["rate_limit"]:
            raise APIError(
                429,
                "rate_limit_exceeded",
                f"You have exceeded the rate limit of {self.settings['rate_limit']} requests within a 10 second period.",
            )
        self.recent.append(now)

    async def service_call(self, request: Request) -> Response:
        service = request.path_params["service"]
        try:
            self.check(request)
            if service not in SERVICES:
                raise APIError(404, "not_found", f"{service}: no such service")
            if not request.headers.get("content-type", "").startswith("multipart/form-data"):
                raise APIError(400, "bad_request", "content-type: must be multipart/form-data")
            if int(request.headers.get("content-length", 0)) > MAX_BODY:
                raise APIError(413, "payload_too_large", "body: must be at most 10MiB")
            form = await request.form()
            params = {k: str(v) for k, v in form.multi_items() if not isinstance(v, UploadFile)}
            files = {k: v for k, v in form.multi_items() if isinstance(v, UploadFile)}
            _check_params(service, params, files)
            if params.get("prompt", "").startswith(BLOCKED_WORD):
                raise APIError(
                    403,
                    "content_moderation",
                    "Your request was flagged by our content moderation system, as a result your request was denied and you were not charged.",
                )
            size = await _output_size(service, params, files)
            artifact = _artifact(service, params, size)
            if SERVICES[service].get("async"):
                gid = uuid.uuid4().hex + uuid.uuid4().hex
                self.state.jobs[gid] = {"artifact": artifact, "polls": 0, "done_at": None}
                return JSONResponse({"id": gid})
            return _answer(request, *artifact)
        except APIError as exc:
            return exc.response()

    async def results(self, request: Request) -> Response:
        try:
            self.check(request)
            job = self.state.jobs.get(request.path_params["id"])
            expired = (
                job is not None
                and job["done_at"] is not None
                and time.time() - job["done_at"] > self.settings["result_ttl"]
            )
            if job is None or expired:
                raise APIError(
                    404,
                    "not_found",
                    f"generation {request.path_params['id']}: not found or expired",
                )
            job["polls"] += 1
            if job["polls"] <= self.settings["polls"]:
                return JSONResponse(
                    {"id": request.path_params["id"], "status": "in-progress"}, status_code=202
                )
            job["done_at"] = job["done_at"] or time.time()
            return _answer(request, *job["artifact"])
        except APIError as exc:
            return exc.response()

    async def jobs_settings(self, request: Request) -> Response:
        body = await request.json()
        for name, cast in (("polls", int), ("result_ttl", float), ("rate_limit", int)):
            if name in body:
                self.settings[name] = cast(body[name])
        return JSONResponse(self.settings)


def create_app(state: EmulatorState | None = None) -> Any:
    state = state or EmulatorState()
    emu = _StabilityEmulator(state)
    routes = [
        Route("/_emulator/jobs", emu.jobs_settings, methods=["POST"]),
        Route("/v2beta/results/{id}", emu.results, methods=["GET"]),
        Route("/v2beta/stable-image/{service:path}", emu.service_call, methods=["POST"]),
    ]
    return emulator_app(routes, state, error_body)
