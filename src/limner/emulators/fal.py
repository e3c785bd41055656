"""An emulator of fal.ai's queue and sync APIs, faithful enough for the official ``fal-client``.

Queue (``/queue``, what ``queue.fal.run`` serves): ``POST /queue/{model_id}`` answers
``IN_QUEUE`` with ``status_url``/``response_url``/``cancel_url`` built from ``{owner}/{app}``
only; ``GET .../requests/{id}/status`` answers 202 ``IN_QUEUE`` (position counting down), 202
``IN_PROGRESS`` (with logs), then 200 ``COMPLETED``; ``GET .../requests/{id}`` returns the
output; ``PUT .../requests/{id}/cancel`` answers 202 ``CANCELLATION_REQUESTED`` or 400
``ALREADY_COMPLETED``. Sync (``/run``, what ``fal.run`` serves): ``POST /run/{model_id}``.
``sync_mode: true`` returns images as data URIs; otherwise they are served from
``/delivery/<token>`` for an hour. A prompt holding ``BLOCKED_WORD`` yields black images flagged
in ``has_nsfw_concepts``. Errors: 401 ``{"detail"}`` without ``Authorization: Key``, 422 with
FastAPI validation details, 429 past ``max_in_flight`` queued requests per key.

For ``fal-client``: FAL_QUEUE_RUN_HOST=<host:port>/queue and FAL_RUN_HOST=<host:port>/run.

    POST /_emulator/jobs {"queue_polls": 1, "progress_polls": 1, "max_in_flight": 10}
"""

from __future__ import annotations

import io
import random
import uuid
from typing import Any

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

__all__ = ["BASE_PATH", "MODELS", "create_app"]

BASE_PATH = "/queue"
SIZE_ENUMS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
}
ASPECTS = {"21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21", "5:4", "4:5"}
# kind: t2i (image_size), aspect (aspect_ratio), i2i (image_url), multi (image_urls), fill
# (image_url + mask_url), control (control_image_url), redux (image_url, output as input size).
MODELS: dict[str, dict[str, Any]] = {
    "fal-ai/flux/schnell": {"kind": "t2i", "max_n": 4},
    "fal-ai/flux/dev": {"kind": "t2i", "max_n": 4},
    "fal-ai/flux/dev/image-to-image": {"kind": "i2i", "max_n": 4},
    "fal-ai/flux-pro/v1.1": {"kind": "t2i", "max_n": 4},
    "fal-ai/flux-pro/v1.1-ultra": {"kind": "aspect", "max_n": 4},
    "fal-ai/flux-pro/v1.1/redux": {"kind": "redux", "max_n": 4},
    "fal-ai/flux-pro/v1/canny": {"kind": "control", "max_n": 4},
    "fal-ai/flux-pro/v1/depth": {"kind": "control", "max_n": 4},
    "fal-ai/flux-pro/v1/fill": {"kind": "fill", "max_n": 4},
    "fal-ai/flux-2-pro": {"kind": "t2i", "max_n": 1},
    "fal-ai/flux-2-pro/edit": {"kind": "multi", "max_n": 1, "max_images": 9},
    "fal-ai/nano-banana": {"kind": "aspect", "max_n": 4},
    "fal-ai/nano-banana/edit": {"kind": "multi", "max_n": 4, "max_images": 10},
    "fal-ai/nano-banana-pro": {"kind": "aspect", "max_n": 4},
    "fal-ai/nano-banana-pro/edit": {"kind": "multi", "max_n": 4, "max_images": 14},
}


class APIError(Exception):
    def __init__(self, status: int, detail: Any, error_type: str | None = None) -> None:
        super().__init__(str(detail))
        self.status, self.detail, self.error_type = status, detail, error_type

    def response(self) -> JSONResponse:
        headers = {"x-fal-request-id": str(uuid.uuid4())}
        if self.error_type:
            headers["x-fal-error-type"] = self.error_type
        return JSONResponse({"detail": self.detail}, status_code=self.status, headers=headers)


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"detail": message}


def _invalid(field: str, message: str, kind: str = "value_error") -> APIError:
    return APIError(422, [{"loc": ["body", field], "msg": message, "type": kind}])


def _image_of(field: str, value: Any) -> tuple[int, int]:
    from PIL import Image

    if not isinstance(value, str) or not value.startswith("data:"):
        raise _invalid(field, "expected a data URI in this emulator (it fetches no other host)")
    try:
        with Image.open(io.BytesIO(codec.b64decode(value.split(",", 1)[1]))) as img:
            return img.width, img.height
    except Exception:
        raise _invalid(field, "could not decode the image") from None


def _size(body: dict[str, Any]) -> tuple[int, int]:
    size = body.get("image_size", "landscape_4_3")
    if isinstance(size, str):
        if size not in SIZE_ENUMS:
            raise _invalid(
                "image_size", f"unexpected value; permitted: {', '.join(SIZE_ENUMS)}", "enum"
            )
        return SIZE_ENUMS[size]
    if not isinstance(size, dict) or not {"width", "height"} <= set(size):
        raise _invalid("image_size", "expected an enum value or {width, height}")
    width, height = int(size["width"]), int(size["height"])
    if not (1 <= width <= 14142 and 1 <= height <= 14142):
        raise _invalid("image_size", "width and height must be between 1 and 14142")
    return width, height


def _aspect(body: dict[str, Any]) -> tuple[int, int]:
    aspect = str(body.get("aspect_ratio", "1:1"))
    if aspect not in ASPECTS:
        raise _invalid(
            "aspect_ratio", f"unexpected value; permitted: {', '.join(sorted(ASPECTS))}", "enum"
        )
    a, b = (int(v) for v in aspect.split(":"))
    height = int((1_000_000 * b / a) ** 0.5)
    return height * a // b // 8 * 8, height // 8 * 8


def plan(model: str, body: dict[str, Any]) -> tuple[int, tuple[int, int]]:
    """Validate ``body`` for ``model``; return (image count, output size)."""
    rules = MODELS[model]
    kind = rules["kind"]
    if kind != "redux" and not body.get("prompt"):
        raise _invalid("prompt", "field required", "missing")
    count = int(body.get("num_images", 1))
    if not 1 <= count <= rules["max_n"]:
        raise _invalid("num_images", f"ensure this value is between 1 and {rules['max_n']}")
    if kind == "t2i":
        return count, _size(body)
    if kind == "aspect":
        return count, _aspect(body)
    if kind == "multi":
        urls = body.get("image_urls")
        if not isinstance(urls, list) or not urls:
            raise _invalid("image_urls", "field required", "missing")
        if len(urls) > rules["max_images"]:
            raise _invalid("image_urls", f"at most {rules['max_images']} images")
        sizes = [_image_of("image_urls", u) for u in urls]
        return count, _size(body) if "image_size" in body else sizes[0]
    field = "control_image_url" if kind == "control" else "image_url"
    if field not in body:
        raise _invalid(field, "field required", "missing")
    width, height = _image_of(field, body[field])
    if kind == "fill":
        if "mask_url" not in body:
            raise _invalid("mask_url", "field required", "missing")
        if _image_of("mask_url", body["mask_url"]) != (width, height):
            raise _invalid("mask_url", "mask and image must have the same size")
    if kind == "i2i" and not 0 <= float(body.get("strength", 0.95)) <= 1:
        raise _invalid("strength", "ensure this value is between 0 and 1")
    return count, (_size(body) if "image_size" in body else (width, height))


class _FalEmulator:
    """Request handlers; jobs live in the shared ``EmulatorState.jobs``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.settings: dict[str, Any] = {"queue_polls": 1, "progress_polls": 1, "max_in_flight": 10}

    def check_key(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        if not header.startswith("Key ") or not header[4:].strip():
            raise APIError(
                401, "Missing or invalid authorization header: use 'Authorization: Key <FAL_KEY>'."
            )
        return header[4:]

    def model_of(self, path: str) -> str:
        model = path.strip("/")
        if model not in MODELS:
            raise APIError(404, f"Application '{model}' not found")
        return model

    def output(
        self, request: Request, model: str, body: dict[str, Any], count: int, size: tuple[int, int]
    ) -> dict[str, Any]:
        prompt = str(body.get("prompt", model))
        blocked = BLOCKED_WORD in prompt
        fmt = str(body.get("output_format", "jpeg"))
        seed = int(body.get("seed", random.randint(0, 2**31)))
        images = []
        for i in range(count):
            data = render_image(
                "" if blocked else prompt, None if blocked else seed + i, size[0], size[1], fmt
            )
            media = media_type_for(fmt)
            if body.get("sync_mode"):
                url = f"data:{media};base64,{codec.b64encode(data)}"
            else:
                url = self.state.delivery.put(data, media, str(request.base_url))
            images.append(
                {
                    "url": url,
                    "width": size[0],
                    "height": size[1],
                    "content_type": media,
                    "file_name": f"{uuid.uuid4().hex[:8]}.{fmt}",
                    "file_size": len(data),
                }
            )
        return {
            "images": images,
            "seed": seed,
            "prompt": prompt,
            "timings": {"inference": 0.01},
            "has_nsfw_concepts": [blocked] * count,
        }

    async def read_body(self, request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise APIError(
                422, [{"loc": ["body"], "msg": "invalid JSON", "type": "json_invalid"}]
            ) from None
        if not isinstance(body, dict):
            raise _invalid("body", "expected an object")
        return body

    async def submit(self, request: Request) -> Response:
        try:
            key = self.check_key(request)
            model = self.model_of(request.path_params["model"])
            body = await self.read_body(request)
            count, size = plan(model, body)
            waiting = sum(
                1
                for j in self.state.jobs.values()
                if j["key"] == key and j["status"] != "COMPLETED"
            )
            if waiting >= self.settings["max_in_flight"]:
                raise APIError(429, "Too many requests in the queue for this user; retry later.")
            rid = str(uuid.uuid4())
            owner, app = model.split("/")[:2]
            base = f"{str(request.base_url).rstrip('/')}{BASE_PATH}/{owner}/{app}/requests/{rid}"
            self.state.jobs[rid] = {
                "key": key,
                "model": model,
                "app": f"{owner}/{app}",
                "body": body,
                "count": count,
                "size": size,
                "status": "IN_QUEUE",
                "polls": 0,
                "logs": [],
            }
            return JSONResponse(
                {
                    "status": "IN_QUEUE",
                    "request_id": rid,
                    "gateway_request_id": rid,
                    "response_url": base,
                    "status_url": base + "/status",
                    "cancel_url": base + "/cancel",
                    "queue_position": self.settings["queue_polls"],
                    "logs": None,
                    "metrics": {},
                },
                headers={"x-fal-request-id": rid},
            )
        except APIError as exc:
            return exc.response()

    def job_for(self, request: Request) -> dict[str, Any]:
        self.check_key(request)
        p = request.path_params
        job = self.state.jobs.get(p["rid"])
        # Status and result URLs carry {owner}/{app} only; another app's URL does not find it.
        if job is None or job["app"] != f"{p['owner']}/{p['app']}":
            raise APIError(404, f"Request {p['rid']} not found")
        return job

    def advance(self, request: Request, job: dict[str, Any]) -> None:
        if job["status"] == "COMPLETED":
            return
        job["polls"] += 1
        queue, running = self.settings["queue_polls"], self.settings["progress_polls"]
        if job["polls"] <= queue:
            job["status"] = "IN_QUEUE"
        elif job["polls"] <= queue + running:
            job["status"] = "IN_PROGRESS"
            job["logs"].append(
                {
                    "message": f"step {job['polls'] - queue}/{running}",
                    "level": "INFO",
                    "source": "user",
                    "timestamp": "2026-01-01T00:00:00Z",
                }
            )
        else:
            job["status"] = "COMPLETED"
            job["result"] = self.output(
                request, job["model"], job["body"], job["count"], job["size"]
            )

    async def status(self, request: Request) -> Response:
        try:
            job = self.job_for(request)
            with self.state.lock:
                self.advance(request, job)
            with_logs = request.query_params.get("logs") in ("1", "true", "True")
            body: dict[str, Any] = {
                "status": job["status"],
                "request_id": request.path_params["rid"],
                "response_url": str(request.url).split("/status")[0],
            }
            if job["status"] == "IN_QUEUE":
                body["queue_position"] = max(self.settings["queue_polls"] - job["polls"], 0)
            body["logs"] = job["logs"] if with_logs else None
            if job["status"] == "COMPLETED":
                body["metrics"] = {"inference_time": 0.01}
                if job.get("error"):
                    body["error"], body["error_type"] = job["error"], job.get("error_type")
            return JSONResponse(body, status_code=200 if job["status"] == "COMPLETED" else 202)
        except APIError as exc:
            return exc.response()

    async def result(self, request: Request) -> Response:
        try:
            job = self.job_for(request)
            if job["status"] != "COMPLETED":
                raise APIError(400, "Request is still in progress")
            if job.get("error"):
                raise APIError(400, job["error"], job.get("error_type"))
            return JSONResponse(
                job["result"], headers={"x-fal-request-id": request.path_params["rid"]}
            )
        except APIError as exc:
            return exc.response()

    async def cancel(self, request: Request) -> Response:
        try:
            job = self.job_for(request)
            with self.state.lock:
                if job["status"] == "COMPLETED":
                    return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
                job["status"], job["error"], job["error_type"] = (
                    "COMPLETED",
                    "Request was cancelled",
                    "request_cancelled",
                )
                self.state.stats["cancelled"] += 1
            return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
        except APIError as exc:
            return exc.response()

    async def run_sync(self, request: Request) -> Response:
        try:
            self.check_key(request)
            model = self.model_of(request.path_params["model"])
            body = await self.read_body(request)
            count, size = plan(model, body)
            return JSONResponse(
                self.output(request, model, body, count, size),
                headers={"x-fal-request-id": str(uuid.uuid4())},
            )
        except APIError as exc:
            return exc.response()

    async def jobs_settings(self, request: Request) -> Response:
        body = await request.json()
        for name in ("queue_polls", "progress_polls", "max_in_flight"):
            if name in body:
                self.settings[name] = int(body[name])
        return JSONResponse(self.settings)


def create_app(state: EmulatorState | None = None) -> Any:
    state = state or EmulatorState()
    state.delivery.ttl = 3600.0  # fal keeps outputs on its CDN; results expire from the queue
    emu = _FalEmulator(state)
    requests_path = BASE_PATH + "/{owner}/{app}/requests/{rid}"
    routes = [
        Route("/_emulator/jobs", emu.jobs_settings, methods=["POST"]),
        Route(requests_path + "/status", emu.status, methods=["GET"]),
        Route(requests_path + "/cancel", emu.cancel, methods=["PUT"]),
        Route(requests_path, emu.result, methods=["GET"]),
        Route(BASE_PATH + "/{model:path}", emu.submit, methods=["POST"]),
        Route("/run/{model:path}", emu.run_sync, methods=["POST"]),
    ]
    return emulator_app(routes, state, error_body)
