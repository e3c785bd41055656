"""An emulator of Ideogram's three API surfaces: legacy JSON ``/generate`` with multipart
``/remix``, ``/edit``, ``/upscale``, ``/describe``; the multipart ``/v1/ideogram-v3/*`` routes;
and the v2 action API ``/v2/image/{action}/{model}`` with ``?dry_run=true`` price quotes.
Tool endpoints (upscale, remove background) and ``async`` image requests answer 202 with a
``generation_id``; ``GET /v2/generations/{id}`` stays ``pending`` until the
``polls_to_finish``-th poll (``POST /_emulator/ideogram``, default 2), then ``completed``
(``failed`` for a prompt containing ``fail-task``).

``Api-Key`` auth, enum checks per surface, masks where black marks the area (same size as the
image), result URLs served from an expiring delivery path, and ``is_image_safe: false`` with
no URL for a prompt containing ``BLOCKED_WORD``."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from limner.emulators.common import (
    BLOCKED_WORD,
    EmulatorState,
    JSONResponse,
    emulator_app,
    render_image,
)

__all__ = ["BASE_PATH", "create_app"]

BASE_PATH = ""

RATIOS = [
    "1x1",
    "16x9",
    "9x16",
    "3x2",
    "2x3",
    "4x3",
    "3x4",
    "1x3",
    "3x1",
    "10x16",
    "16x10",
    "1x2",
    "2x1",
    "4x5",
    "5x4",
]
LEGACY_RATIOS = {
    "ASPECT_" + r.replace("x", "_") for r in RATIOS if r not in {"1x2", "2x1", "4x5", "5x4"}
}
LEGACY_MODELS = {"V_1", "V_1_TURBO", "V_2", "V_2_TURBO", "V_2A", "V_2A_TURBO"}
LEGACY_STYLES = {"AUTO", "GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME"}
V3_STYLES = {"AUTO", "GENERAL", "REALISTIC", "DESIGN", "FICTION"}
V3_SPEEDS = {"FLASH", "TURBO", "DEFAULT", "QUALITY"}
V2_MODELS = {"auto", "ideogram-4-6", "ideogram-4-5", "ideogram-4", "ideogram-3"}
V2_QUALITY_MICROS = {"low": 30_000, "medium": 60_000, "high": 100_000}
UTILITY_MICROS = {"upscale": 60_000, "remove-background": 10_000}
# Tool endpoints always run asynchronously; the value is the prompt the result records.
TOOL_ACTIONS = {"upscale": "upscaled", "remove-background": "cutout"}
FAIL_WORD = "fail-task"
MAGIC = {"AUTO", "ON", "OFF"}
LONG_EDGE = 512  # results are drawn small; the reported resolution is the nominal one


class APIError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.status, str(self)), status_code=self.status)


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"detail": message}


def _dims(ratio: str) -> tuple[int, int]:
    a, _, b = ratio.replace("ASPECT_", "").replace("_", "x").partition("x")
    w, h = int(a), int(b)
    if w >= h:
        return LONG_EDGE, max(LONG_EDGE * h // w // 16 * 16, 16)
    return max(LONG_EDGE * w // h // 16 * 16, 16), LONG_EDGE


def _nominal(width: int, height: int) -> str:
    scale = 1024 / max(width, height)
    return f"{round(width * scale)}x{round(height * scale)}"


def _check_auth(request: Request) -> None:
    if not request.headers.get("api-key"):
        raise APIError(401, "Unauthorized: provide your key in the Api-Key header.")


def _enum(params: dict[str, Any], key: str, allowed: set[str]) -> None:
    value = params.get(key)
    if value is not None and value not in allowed:
        raise APIError(
            422, f"Invalid value for {key}: {value!r}. Allowed: {', '.join(sorted(allowed))}."
        )


def _num_images(params: dict[str, Any]) -> int:
    n = int(params.get("num_images", 1))
    if not 1 <= n <= 8:
        raise APIError(422, "num_images must be between 1 and 8.")
    return n


def _first(files: dict[str, list[UploadFile]], name: str) -> UploadFile | None:
    items = files.get(name) or []
    return items[0] if items else None


async def _read_image(upload: Any, label: str) -> tuple[int, int, bytes]:
    from PIL import Image

    if upload is None or isinstance(upload, str):
        raise APIError(422, f"{label} is required.")
    data = await upload.read()
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width, img.height, data
    except Exception:
        raise APIError(400, f"{label} is not a valid image.") from None


async def _form(request: Request) -> tuple[dict[str, Any], dict[str, list[UploadFile]]]:
    form = await request.form()
    fields: dict[str, Any] = {}
    files: dict[str, list[UploadFile]] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.setdefault(key, []).append(value)
        elif key in fields:
            fields[key] = [
                *(fields[key] if isinstance(fields[key], list) else [fields[key]]),
                value,
            ]
        else:
            fields[key] = value
    return fields, files


def _results(
    request: Request,
    state: EmulatorState,
    params: dict[str, Any],
    dims: tuple[int, int],
    salt: str = "",
) -> JSONResponse:
    body = _result_body(str(request.base_url), state, params, dims, salt)
    return JSONResponse(
        body,
        headers={"x-request-id": hashlib.sha256(str(random.random()).encode()).hexdigest()[:16]},
    )


def _result_body(
    base_url: str, state: EmulatorState, params: dict[str, Any], dims: tuple[int, int], salt: str
) -> dict[str, Any]:
    prompt = str(params.get("prompt", ""))
    magic = str(params.get("magic_prompt_option") or params.get("magic_prompt") or "AUTO").upper()
    shown = f"{prompt}, crisp typography, balanced composition" if magic == "ON" else prompt
    base_seed = (
        int(params["seed"])
        if params.get("seed") not in (None, "")
        else random.randint(0, 2**31 - 1)
    )
    style = str(params.get("style_type") or "AUTO")
    data = []
    for i in range(_num_images(params)):
        seed = base_seed + i
        item: dict[str, Any] = {
            "prompt": shown,
            "resolution": _nominal(*dims),
            "seed": seed,
            "style_type": style,
        }
        if BLOCKED_WORD in prompt:
            item.update(is_image_safe=False, url=None)
        else:
            raw = render_image(prompt + salt, seed, dims[0], dims[1])
            item.update(is_image_safe=True, url=state.delivery.put(raw, "image/png", base_url))
        data.append(item)
    return {"created": datetime.now(UTC).isoformat(), "data": data}


def _quote(action: str, model: str, params: dict[str, Any]) -> JSONResponse:
    quantity = 1 if action in UTILITY_MICROS else _num_images(params)
    each = UTILITY_MICROS.get(action) or V2_QUALITY_MICROS[str(params.get("quality", "medium"))]
    return JSONResponse(
        {
            "object": "price_quote",
            "billing_identifier": f"{model.replace('-', '_')}_{action.replace('-', '_')}",
            "quantity": quantity,
            "usd_micros": each * quantity,
            "credit_millis": each * quantity // 10,
            "qualifier": "exact",
        }
    )


async def _mask_check(files: dict[str, list[UploadFile]], width: int, height: int) -> None:
    mw, mh, _ = await _read_image(_first(files, "mask"), "mask")
    if (mw, mh) != (width, height):
        raise APIError(400, "The mask must have the same dimensions as the image.")


class Handlers:
    """The HTTP handlers of the Ideogram emulator."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.polls_to_finish = 2

    async def legacy_generate(self, request: Request) -> Response:
        try:
            _check_auth(request)
            body = await request.json()
            params = body.get("image_request") or {}
            if not params.get("prompt"):
                raise APIError(422, "image_request.prompt is required.")
            _enum(params, "model", LEGACY_MODELS)
            _enum(params, "aspect_ratio", LEGACY_RATIOS)
            _enum(params, "style_type", LEGACY_STYLES)
            _enum(params, "magic_prompt_option", MAGIC)
            return _results(
                request, self.state, params, _dims(params.get("aspect_ratio", "ASPECT_1_1"))
            )
        except APIError as exc:
            return exc.response()

    async def legacy_multipart(self, request: Request) -> Response:
        action = request.url.path.strip("/")
        try:
            _check_auth(request)
            fields, files = await _form(request)
            width, height, data = await _read_image(_first(files, "image_file"), "image_file")
            salt = hashlib.sha256(data).hexdigest()[:12]
            if action == "describe":
                texts = [
                    f"An image ({width}x{height}) with bold colour bands, variant {i}, ref {salt[:6]}"
                    for i in (1, 2)
                ]
                return JSONResponse({"descriptions": [{"text": t} for t in texts]})
            if action == "edit":
                await _mask_check(files, width, height)
                _enum(fields, "model", LEGACY_MODELS)
                return _results(request, self.state, fields, (width, height), salt)
            params = json.loads(fields.get("image_request") or "{}")
            if action == "upscale":
                params.setdefault("prompt", "upscaled")
                return _results(request, self.state, params, (width * 2, height * 2), salt)
            if not params.get("prompt"):
                raise APIError(422, "image_request.prompt is required.")
            return _results(request, self.state, params, (width, height), salt)  # remix
        except APIError as exc:
            return exc.response()

    async def v3(self, request: Request) -> Response:
        action = request.path_params["action"]
        try:
            _check_auth(request)
            if action not in {"generate", "remix", "edit", "reframe", "replace-background"}:
                raise APIError(404, "Not Found")
            fields, files = await _form(request)
            _enum(fields, "rendering_speed", V3_SPEEDS)
            _enum(fields, "style_type", V3_STYLES)
            _enum(fields, "aspect_ratio", set(RATIOS))
            _enum(fields, "magic_prompt", MAGIC)
            refs = b"".join(
                [
                    await f.read()
                    for f in files.get("style_reference_images", [])
                    + files.get("character_reference_images", [])
                ]
            )
            salt = hashlib.sha256(refs).hexdigest()[:8] if refs else ""
            if action == "generate":
                if not fields.get("prompt"):
                    raise APIError(422, "prompt is required.")
                return _results(
                    request, self.state, fields, _dims(fields.get("aspect_ratio", "1x1")), salt
                )
            width, height, data = await _read_image(_first(files, "image"), "image")
            salt += hashlib.sha256(data).hexdigest()[:12]
            if action == "edit":
                await _mask_check(files, width, height)
            if action == "reframe":
                w, _, h = str(fields.get("resolution", "1024x1024")).partition("x")
                fields.setdefault("prompt", "reframe")
                return _results(request, self.state, fields, _dims(f"{w}x{h}"), salt)
            if not fields.get("prompt"):
                raise APIError(422, "prompt is required.")
            return _results(request, self.state, fields, (width, height), salt)
        except APIError as exc:
            return exc.response()

    async def v2(self, request: Request) -> Response:
        action, model = request.path_params["action"], request.path_params["model"]
        try:
            _check_auth(request)
            if request.headers.get("content-type", "").startswith("multipart/"):
                fields, files = await _form(request)
            else:
                fields, files = await request.json(), {}
            if action in ("generate", "remix") and model not in V2_MODELS:
                raise APIError(404, f"Unknown model {model!r}.")
            if action not in ("generate", "remix", "upscale", "remove-background"):
                raise APIError(404, "Not Found")
            _enum(fields, "quality", set(V2_QUALITY_MICROS))
            _enum(fields, "aspect_ratio", set(RATIOS))
            _enum(fields, "magic_prompt", {"auto", "on", "off"})
            if len(files.get("reference_images", [])) > 4:
                raise APIError(422, "At most 4 reference_images.")
            if action in ("generate", "remix") and not fields.get("prompt"):
                raise APIError(422, "prompt is required.")
            if request.query_params.get("dry_run") == "true":
                return _quote(action, model, fields)
            params, dims, salt = fields, (0, 0), ""
            if action == "generate":
                scale = 2 if str(fields.get("resolution", "1k")).lower() == "2k" else 1
                w, h = _dims(fields.get("aspect_ratio", "1x1"))
                dims = (w * scale, h * scale)
            else:
                width, height, data = await _read_image(_first(files, "image"), "image")
                salt = hashlib.sha256(data).hexdigest()[:12]
                factor = int(fields.get("factor", 2)) if action == "upscale" else 1
                dims = (width * factor, height * factor)
                if action in TOOL_ACTIONS:
                    params = {"prompt": TOOL_ACTIONS[action]}
            if action in TOOL_ACTIONS or str(fields.get("async", "")).lower() == "true":
                return self.accept(params, dims, salt, action, model)
            return _results(request, self.state, params, dims, salt)
        except APIError as exc:
            return exc.response()

    def accept(
        self, params: dict[str, Any], dims: tuple[int, int], salt: str, action: str, model: str
    ) -> JSONResponse:
        """Queue an asynchronous generation: it completes after ``polls_to_finish`` polls."""
        generation_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        created = datetime.now(UTC).isoformat()
        each = UTILITY_MICROS.get(action) or V2_QUALITY_MICROS[str(params.get("quality", "medium"))]
        self.state.jobs[generation_id] = {
            "params": params, "dims": dims, "salt": salt, "polls": 0, "created": created,
            "cost": each * (1 if action in UTILITY_MICROS else _num_images(params)),
        }  # fmt: skip
        body = {"generation_id": generation_id, "status": "pending", "created": created}
        return JSONResponse(body, status_code=202)

    async def generation(self, request: Request) -> Response:
        try:
            _check_auth(request)
        except APIError as exc:
            return exc.response()
        generation_id = request.path_params["generation_id"]
        job = self.state.jobs.get(generation_id)
        if job is None:
            return APIError(404, f"Generation {generation_id} not found.").response()
        job["polls"] += 1
        head = {"generation_id": generation_id, "created": job["created"]}
        if job["polls"] < self.polls_to_finish:
            return JSONResponse({**head, "status": "pending"})
        if FAIL_WORD in str(job["params"].get("prompt", "")):
            return JSONResponse({**head, "status": "failed", "failure_reason": "internal error"})
        if "data" not in job:
            done = _result_body(
                str(request.base_url), self.state, job["params"], job["dims"], job["salt"]
            )
            job["data"] = [{**item, "object_type": "image"} for item in done["data"]]
        body = {**head, "status": "completed", "response_type": "url", "data": job["data"]}
        return JSONResponse({**body, "usage_cost_usd_micros": job["cost"]})

    async def settings(self, request: Request) -> Response:
        body = await request.json()
        self.polls_to_finish = int(body.get("polls_to_finish", self.polls_to_finish))
        return JSONResponse({"polls_to_finish": self.polls_to_finish})


def create_app(state: EmulatorState | None = None) -> Any:
    state = state or EmulatorState()
    state.delivery.ttl = 3600.0
    h = Handlers(state)
    routes = [
        Route("/generate", h.legacy_generate, methods=["POST"]),
        *(
            Route(f"/{name}", h.legacy_multipart, methods=["POST"])
            for name in ("remix", "edit", "upscale", "describe")
        ),
        Route("/v1/ideogram-v3/{action}", h.v3, methods=["POST"]),
        Route("/v2/image/{action}/{model}", h.v2, methods=["POST"]),
        Route("/v2/generations/{generation_id}", h.generation, methods=["GET"]),
        Route("/_emulator/ideogram", h.settings, methods=["POST"]),
    ]
    return emulator_app(routes, state, error_body)
