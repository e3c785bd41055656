"""An emulator of the Black Forest Labs API: FLUX.2, Kontext, FLUX 1.1 [pro] / Ultra, Fill, Expand.

Submit answers ``{id, polling_url, cost, input_mp, output_mp}``; ``GET /v1/get_result?id=``
moves ``Pending`` (with progress) -> ``Ready`` over successive polls, or to ``Request Moderated``
for a prompt holding ``BLOCKED_WORD``. Samples are served from ``/delivery/<token>`` and expire
after 10 minutes. Errors use FastAPI's ``{"detail": ...}`` shape: 403 without ``x-key``, 402 when
the account's credits run out, 422 for invalid fields, 429 past the active-task limit (24, or 6
for Kontext Max).

Emulator controls (besides the shared ``/_emulator/faults``):

    POST /_emulator/jobs {"polls": 2, "not_found_polls": 0, "credits": 1000, "generation_s": 0}

``polls`` is the number of ``Pending`` answers before ``Ready``; ``not_found_polls`` the number
of ``Task not found`` answers first (the real API shows them right after a submit).
``generation_s`` > 0 makes a task take that long instead (``Pending`` until that many seconds
after its submit, however often it is polled): the time goes into generation, as on the real
API, while the submit answers at once (the shared ``latency`` setting delays every request).
Requests to the delivery path that carry ``x-key`` are counted in stats as ``delivery_with_key``.
"""

from __future__ import annotations

import io
import random
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from limner import codec
from limner.emulators.common import (
    BLOCKED_WORD,
    EmulatorState,
    JSONResponse,
    emulator_app,
    media_type_for,
    render_image,
)

__all__ = ["BASE_PATH", "ENDPOINTS", "create_app"]

BASE_PATH = "/v1"

# Prices in credits (1 credit = $0.01): FLUX.2 bills per megapixel (first MP, each further MP,
# each input MP); the others a flat price per image.
ENDPOINTS: dict[str, dict[str, Any]] = {
    "flux-2-klein-4b": {"kind": "flux2", "first": 1.4, "mp": 0.1, "refs": 4},
    "flux-2-klein-9b": {"kind": "flux2", "first": 1.5, "mp": 0.2, "refs": 4},
    "flux-2-pro": {"kind": "flux2", "first": 3.0, "mp": 1.5, "refs": 8},
    "flux-2-max": {"kind": "flux2", "first": 7.0, "mp": 3.0, "refs": 8},
    "flux-2-flex": {"kind": "flux2", "first": 5.0, "mp": 5.0, "refs": 8, "steps": True},
    "flux-kontext-pro": {"kind": "kontext", "flat": 4.0, "refs": 4},
    "flux-kontext-max": {"kind": "kontext", "flat": 8.0, "refs": 4, "limit": 6},
    "flux-pro-1.1": {"kind": "pro", "flat": 4.0, "refs": 1},
    "flux-pro-1.1-ultra": {"kind": "ultra", "flat": 6.0, "refs": 1},
    "flux-pro-1.0-fill": {"kind": "fill", "flat": 5.0, "refs": 0, "steps": True},
    "flux-pro-1.0-expand": {"kind": "expand", "flat": 5.0, "refs": 0, "steps": True},
}
ACTIVE_LIMIT = 24
ASPECT_LIMIT = 4.0  # Kontext takes 1:4 .. 4:1 (21:9 .. 9:21 among them)


class APIError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status, self.detail = status, detail

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.detail}, status_code=self.status)


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"detail": message}


def _invalid(field: str, message: str) -> APIError:
    return APIError(422, [{"loc": ["body", field], "msg": message, "type": "value_error"}])


def _decode_image(field: str, value: Any) -> tuple[int, int]:
    from PIL import Image

    if not isinstance(value, str):
        raise _invalid(field, "must be a base64 string or URL")
    try:
        with Image.open(io.BytesIO(codec.b64decode(value.split(",")[-1]))) as img:
            return img.width, img.height
    except Exception:
        raise _invalid(field, "is not a decodable image") from None


def _aspect_size(aspect: str, megapixels: float, multiple: int) -> tuple[int, int]:
    try:
        a, b = (float(v) for v in aspect.split(":"))
    except ValueError:
        raise _invalid("aspect_ratio", "must look like W:H") from None
    if max(a / b, b / a) > ASPECT_LIMIT:
        raise _invalid("aspect_ratio", "must be between 1:4 and 4:1")
    height = (megapixels * 1_000_000 * b / a) ** 0.5
    width = height * a / b
    return int(width // multiple * multiple), int(height // multiple * multiple)


def _output_size(
    endpoint: str, rules: dict[str, Any], body: dict[str, Any], inputs: list[tuple[int, int]]
) -> tuple[int, int]:
    kind = rules["kind"]
    if kind == "flux2":
        width, height = int(body.get("width", 1024)), int(body.get("height", 1024))
        if width % 16 or height % 16 or min(width, height) < 64 or width * height > 4_194_304:
            raise _invalid(
                "width", "width and height must be multiples of 16, at least 64, at most 4 MP"
            )
        return width, height
    if kind == "pro":
        width, height = int(body.get("width", 1024)), int(body.get("height", 768))
        if width % 32 or height % 32 or not (256 <= width <= 1440 and 256 <= height <= 1440):
            raise _invalid("width", "width and height must be multiples of 32 between 256 and 1440")
        return width, height
    if kind == "ultra":
        return _aspect_size(str(body.get("aspect_ratio", "16:9")), 4.0, 32)
    if kind == "kontext":
        if "aspect_ratio" in body:
            return _aspect_size(str(body["aspect_ratio"]), 1.0, 32)
        return inputs[0] if inputs else (1024, 1024)
    if not inputs:
        raise _invalid("image", "field required")
    width, height = inputs[0]
    if kind == "expand":
        pads = {k: int(body.get(k, 0)) for k in ("top", "bottom", "left", "right")}
        if any(not 0 <= v <= 2048 for v in pads.values()):
            raise _invalid("top", "padding must be between 0 and 2048")
        return width + pads["left"] + pads["right"], height + pads["top"] + pads["bottom"]
    return width, height


def _validate(
    endpoint: str, rules: dict[str, Any], body: dict[str, Any]
) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    if not isinstance(body.get("prompt", ""), str) or (
        rules["kind"] not in ("fill", "expand") and not body.get("prompt")
    ):
        raise _invalid("prompt", "field required")
    tolerance = body.get("safety_tolerance", 2)
    if not isinstance(tolerance, int) or not 0 <= tolerance <= 6:
        raise _invalid("safety_tolerance", "must be an integer between 0 and 6")
    if body.get("output_format", "jpeg") not in ("jpeg", "png"):
        raise _invalid("output_format", "must be 'jpeg' or 'png'")
    if ("steps" in body or "guidance" in body) and not rules.get("steps"):
        raise _invalid(
            "steps" if "steps" in body else "guidance", f"extra field not permitted for {endpoint}"
        )
    image_fields = ["input_image", *(f"input_image_{i}" for i in range(2, 11))]
    refs = [body[f] for f in image_fields if f in body]
    if len(refs) > rules["refs"]:
        raise _invalid("input_image", f"{endpoint} takes at most {rules['refs']} input images")
    inputs = [_decode_image(f, body[f]) for f in image_fields if f in body]
    for field in ("image", "image_prompt"):
        if field in body:
            inputs.insert(0, _decode_image(field, body[field]))
    if "mask" in body:
        mask = _decode_image("mask", body["mask"])
        if inputs and mask != inputs[0]:
            raise _invalid("mask", "mask and image must have the same dimensions")
    return _output_size(endpoint, rules, body, inputs), inputs


def _cost(
    rules: dict[str, Any], out: tuple[int, int], inputs: list[tuple[int, int]]
) -> tuple[float, float, float]:
    out_mp = out[0] * out[1] / 1_000_000
    in_mp = sum(w * h for w, h in inputs) / 1_000_000
    if "flat" in rules:
        return rules["flat"], round(in_mp, 4), round(out_mp, 4)
    extra = max(out_mp - 1.0, 0.0) * rules["mp"] + in_mp * rules["mp"]
    return round(rules["first"] + extra, 2), round(in_mp, 4), round(out_mp, 4)


class _DeliveryKeyProbe:
    """Counts delivery requests that carry the API key: a client must never send it there."""

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers", []) if scope["type"] == "http" else []
        if (
            scope["type"] == "http"
            and scope["path"].startswith("/delivery/")
            and any(name.lower() == b"x-key" for name, _ in headers)
        ):
            self.state.stats["delivery_with_key"] += 1
        await self.app(scope, receive, send)


class _BFLEmulator:
    """Request handlers; state lives in the shared ``EmulatorState`` and ``settings``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.settings: dict[str, Any] = {
            "polls": 2, "not_found_polls": 0, "credits": 100_000.0, "generation_s": 0.0,
        }  # fmt: skip

    @staticmethod
    def check_key(request: Request) -> str:
        key = request.headers.get("x-key")
        if not key:
            raise APIError(403, "Not authenticated")
        return key

    def active(self, key: str, endpoint: str | None = None) -> int:
        return sum(
            1
            for job in self.state.jobs.values()
            if job["key"] == key
            and job["status"] == "Pending"
            and (endpoint is None or job["endpoint"] == endpoint)
        )

    def charge(self, cost: float) -> None:
        with self.state.lock:
            if self.settings["credits"] < cost:
                raise APIError(
                    402, "Insufficient credits. Add credits at https://dashboard.bfl.ai."
                )
            self.settings["credits"] -= cost

    async def submit(self, request: Request) -> Response:
        endpoint = request.path_params["endpoint"]
        try:
            key = self.check_key(request)
            rules = ENDPOINTS.get(endpoint)
            if rules is None:
                raise APIError(404, "Not Found")
            try:
                body = await request.json()
            except ValueError:
                raise APIError(
                    422,
                    [{"loc": ["body"], "msg": "invalid JSON", "type": "value_error.jsondecode"}],
                ) from None
            out, inputs = _validate(endpoint, rules, body)
            limit = rules.get("limit", ACTIVE_LIMIT)
            if self.active(key, endpoint if "limit" in rules else None) >= limit:
                raise APIError(
                    429,
                    f"You have reached the limit of {limit} active tasks. Wait for a task to finish.",
                )
            cost, in_mp, out_mp = _cost(rules, out, inputs)
            self.charge(cost)
        except APIError as exc:
            return exc.response()
        task_id = str(uuid.uuid4())
        base = str(request.base_url).rstrip("/")
        self.state.jobs[task_id] = {
            "key": key, "endpoint": endpoint, "status": "Pending", "polls": 0, "body": body,
            "size": out, "created": time.time(), "seed": body.get("seed", random.randint(0, 2**31)),
        }  # fmt: skip
        return JSONResponse({
            "id": task_id, "polling_url": f"{base}{BASE_PATH}/get_result?id={task_id}",
            "cost": cost, "input_mp": in_mp, "output_mp": out_mp,
        })  # fmt: skip

    def generating(self, job: dict[str, Any]) -> bool:
        settings = self.settings
        if job["polls"] <= settings["not_found_polls"]:
            return True
        if settings["generation_s"] > 0:
            return time.time() - job["created"] < settings["generation_s"]
        return bool(job["polls"] <= settings["not_found_polls"] + settings["polls"])

    def progress(self, job: dict[str, Any]) -> float:
        if self.settings["generation_s"] > 0:
            elapsed = (time.time() - job["created"]) / self.settings["generation_s"]
            return round(min(elapsed, 0.99), 2)
        hidden = self.settings["not_found_polls"]
        return round((job["polls"] - hidden) / (self.settings["polls"] + 1), 2)

    def advance(self, request: Request, job: dict[str, Any]) -> None:
        job["polls"] += 1
        if job["status"] != "Pending" or self.generating(job):
            return
        body = job["body"]
        if BLOCKED_WORD in str(body.get("prompt", "")):
            job["status"] = "Request Moderated"
            job["details"] = {"Moderation Reasons": ["Derivative Works Filter"]}
            return
        fmt = body.get("output_format", "jpeg")
        width, height = job["size"]
        data = render_image(str(body.get("prompt", "")), job["seed"], width, height, fmt)
        sample = self.state.delivery.put(data, media_type_for(fmt), str(request.base_url))
        now = time.time()
        job["status"] = "Ready"
        job["result"] = {
            "sample": sample, "prompt": body.get("prompt", ""), "seed": job["seed"],
            "start_time": job["created"], "end_time": now, "duration": round(now - job["created"], 3),
        }  # fmt: skip

    async def get_result(self, request: Request) -> Response:
        try:
            self.check_key(request)
        except APIError as exc:
            return exc.response()
        task_id = request.query_params.get("id", "")
        job = self.state.jobs.get(task_id)
        not_found = {"id": task_id, "status": "Task not found", "result": None, "progress": None}
        if job is None:
            return JSONResponse(not_found)
        with self.state.lock:
            self.advance(request, job)
        hidden = self.settings["not_found_polls"]
        if job["polls"] <= hidden:
            return JSONResponse(not_found)
        progress = self.progress(job) if job["status"] == "Pending" else None
        return JSONResponse({
            "id": task_id, "status": job["status"], "result": job.get("result"),
            "progress": progress, "details": job.get("details"), "preview": None,
        })  # fmt: skip

    async def credits(self, request: Request) -> Response:
        try:
            self.check_key(request)
        except APIError as exc:
            return exc.response()
        return JSONResponse({"credits": round(self.settings["credits"], 2)})

    async def jobs_settings(self, request: Request) -> Response:
        body = await request.json()
        for name in ("polls", "not_found_polls"):
            if name in body:
                self.settings[name] = int(body[name])
        for name in ("credits", "generation_s"):
            if name in body:
                self.settings[name] = float(body[name])
        return JSONResponse(self.settings)


def create_app(state: EmulatorState | None = None) -> Any:
    state = state or EmulatorState()
    state.delivery.ttl = 600.0  # BFL samples expire after 10 minutes
    emu = _BFLEmulator(state)
    routes = [
        Route("/_emulator/jobs", emu.jobs_settings, methods=["POST"]),
        Route(f"{BASE_PATH}/get_result", emu.get_result, methods=["GET"]),
        Route(f"{BASE_PATH}/credits", emu.credits, methods=["GET"]),
        Route(BASE_PATH + "/{endpoint}", emu.submit, methods=["POST"]),
    ]
    app = emulator_app(routes, state, error_body)
    app.add_middleware(_DeliveryKeyProbe, state=state)
    return app
