"""An emulator of Replicate's predictions API, faithful enough for the official ``replicate`` SDK.

Both create endpoints (``/v1/models/{owner}/{name}/predictions`` and ``/v1/predictions`` with a
version), ``GET /v1/predictions/{id}`` moving ``starting`` -> ``processing`` -> ``succeeded`` over
successive polls, ``POST /v1/predictions/{id}/cancel``, ``Prefer: wait[=N]`` (the finished
prediction when it completes within the wait, else the ``starting`` one), ``Cancel-After``
(the prediction turns ``canceled`` when it passes), and Replicate's problem-JSON errors (401,
404, 422 with ``invalid_fields``, 429 ``Request was throttled``). A prompt holding
``BLOCKED_WORD`` fails with Replicate's NSFW message. Outputs are served from
``/delivery/<token>`` for an hour, as a URL or a list of URLs depending on the model.

    POST /_emulator/jobs {"polls": 2, "duration": 0.0, "rate_limit": 600}

``polls``: ``processing`` answers before success; ``duration``: seconds a prediction takes when
created with ``Prefer: wait``; ``rate_limit``: creates per minute before 429.
"""

from __future__ import annotations

import asyncio
import io
import re
import secrets
import time
from datetime import UTC, datetime
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

__all__ = ["BASE_PATH", "MODELS", "VERSIONS", "create_app"]

BASE_PATH = "/v1"
FLUX_ASPECTS = {"1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"}
SD_ASPECTS = {"1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "9:16", "9:21"}
# kind: generate | fill | upscale | rembg; output: list or a single URL string.
MODELS: dict[str, dict[str, Any]] = {
    "black-forest-labs/flux-schnell": {
        "kind": "generate",
        "output": "list",
        "max_n": 4,
        "aspects": FLUX_ASPECTS,
    },
    "black-forest-labs/flux-dev": {
        "kind": "generate",
        "output": "list",
        "max_n": 4,
        "aspects": FLUX_ASPECTS,
    },
    "black-forest-labs/flux-pro": {"kind": "generate", "output": "str", "aspects": FLUX_ASPECTS},
    "black-forest-labs/flux-1.1-pro": {
        "kind": "generate",
        "output": "str",
        "aspects": FLUX_ASPECTS | {"custom"},
    },
    "black-forest-labs/flux-1.1-pro-ultra": {
        "kind": "generate",
        "output": "str",
        "aspects": FLUX_ASPECTS,
    },
    "black-forest-labs/flux-2-pro": {
        "kind": "generate",
        "output": "str",
        "aspects": FLUX_ASPECTS | {"match_input_image"},
    },
    "black-forest-labs/flux-2-dev": {
        "kind": "generate",
        "output": "str",
        "aspects": FLUX_ASPECTS | {"match_input_image"},
    },
    "black-forest-labs/flux-fill-pro": {"kind": "fill", "output": "str"},
    "stability-ai/stable-diffusion-3.5-large": {
        "kind": "generate",
        "output": "list",
        "aspects": SD_ASPECTS,
    },
    "stability-ai/stable-diffusion-3.5-large-turbo": {
        "kind": "generate",
        "output": "list",
        "aspects": SD_ASPECTS,
    },
    "stability-ai/stable-diffusion-3.5-medium": {
        "kind": "generate",
        "output": "list",
        "aspects": SD_ASPECTS,
    },
}
VERSIONS: dict[str, dict[str, Any]] = {
    "42fed1c4974146d4d2414e2be2c5277c7fcf05fcc3a73abf41610695738c1d7b": {
        "model": "nightmareai/real-esrgan",
        "kind": "upscale",
        "output": "str",
    },
    "a029dff38972b5fda4ec5d75d7d1cd25aeff621d2cf4946a41055d7db66b80bc": {
        "model": "851-labs/background-remover",
        "kind": "rembg",
        "output": "str",
    },
}
NSFW_MESSAGE = "NSFW content detected. Try running it again, or try a different prompt."


class APIError(Exception):
    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra

    def response(self) -> JSONResponse:
        body = {"title": self.title, "detail": self.detail, "status": self.status, **self.extra}
        headers = {"retry-after": "1"} if self.status == 429 else {}
        return JSONResponse(
            body, status_code=self.status, media_type="application/problem+json", headers=headers
        )


def error_body(status: int, message: str) -> dict[str, Any]:
    if status == 429:
        message = "Request was throttled. Your rate limit resets in ~1s."
    return {
        "title": {401: "Unauthenticated", 402: "Insufficient credit", 429: "Too Many Requests"}.get(
            status, "Error"
        ),
        "detail": message,
        "status": status,
    }


def _invalid(field: str, description: str) -> APIError:
    return APIError(
        422,
        "Input validation failed",
        f"- input.{field}: {description}",
        invalid_fields=[{"type": "invalid", "field": f"input.{field}", "description": description}],
    )


def parse_duration(text: str) -> float:
    """Replicate's ``Cancel-After`` values: ``30s``, ``5m``, ``1h30m``, ``500ms`` or bare seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise APIError(400, "Invalid header", f"Cancel-After: cannot parse duration {text!r}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def _image_of(field: str, value: Any) -> tuple[int, int]:
    from PIL import Image

    if not isinstance(value, str) or not value.startswith("data:"):
        raise _invalid(field, "must be a data URL in this emulator (it reaches no other host)")
    try:
        with Image.open(io.BytesIO(codec.b64decode(value.split(",", 1)[1]))) as img:
            return img.width, img.height
    except Exception:
        raise _invalid(field, "is not a decodable image") from None


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


def _dims_for(aspect: str, megapixels: float) -> tuple[int, int]:
    a, b = (float(v) for v in aspect.split(":"))
    height = (megapixels * 1_000_000 * b / a) ** 0.5
    return int(height * a / b) // 16 * 16, int(height) // 16 * 16


def _plan_outputs(rules: dict[str, Any], inp: dict[str, Any]) -> tuple[int, tuple[int, int], bool]:
    """Validate ``inp`` for the model; return (count, (width, height), transparent)."""
    kind = rules["kind"]
    if kind in ("upscale", "rembg", "fill"):
        if "image" not in inp:
            raise _invalid("image", "image is required")
        width, height = _image_of("image", inp["image"])
        if kind == "fill":
            if "mask" in inp and _image_of("mask", inp["mask"]) != (width, height):
                raise _invalid("mask", "mask must be the same size as image")
            if not inp.get("prompt"):
                raise _invalid("prompt", "prompt is required")
        scale = float(inp.get("scale", 4)) if kind == "upscale" else 1.0
        if not 0 < scale <= 10:
            raise _invalid("scale", "must be between 0 and 10")
        return 1, (int(width * scale), int(height * scale)), kind == "rembg"
    if not inp.get("prompt"):
        raise _invalid("prompt", "prompt is required")
    count = int(inp.get("num_outputs", 1))
    if not 1 <= count <= rules.get("max_n", 1):
        raise _invalid("num_outputs", f"must be between 1 and {rules.get('max_n', 1)}")
    aspect = str(inp.get("aspect_ratio", "1:1"))
    if aspect not in rules["aspects"]:
        raise _invalid(
            "aspect_ratio", f"aspect_ratio must be one of: {', '.join(sorted(rules['aspects']))}"
        )
    images = inp.get("input_images") or ([inp["image"]] if "image" in inp else [])
    sizes = [_image_of("input_images", img) for img in images]
    if aspect == "custom" or ("width" in inp and "height" in inp):
        return count, (int(inp.get("width", 1024)), int(inp.get("height", 1024))), False
    if aspect == "match_input_image" and sizes:
        return count, sizes[0], False
    megapixels = (
        float(inp.get("megapixels", 1)) if str(inp.get("megapixels", "1")) != "match_input" else 1.0
    )
    return count, _dims_for("1:1" if aspect == "match_input_image" else aspect, megapixels), False


class _ReplicateEmulator:
    """Request handlers; predictions live in the shared ``EmulatorState.jobs``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.settings: dict[str, Any] = {"polls": 2, "duration": 0.0, "rate_limit": 600}
        self.creates: list[float] = []

    def check_auth(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        if (
            not (header.startswith("Bearer ") or header.startswith("Token "))
            or len(header.split(" ", 1)[1]) < 2
        ):
            raise APIError(401, "Unauthenticated", "You did not pass a valid authentication token")

    def throttle(self) -> None:
        now = time.time()
        self.creates[:] = [t for t in self.creates if now - t < 60]
        if len(self.creates) >= self.settings["rate_limit"]:
            raise APIError(
                429, "Too Many Requests", "Request was throttled. Your rate limit resets in ~1s."
            )
        self.creates.append(now)

    def to_json(self, request: Request, job: dict[str, Any]) -> dict[str, Any]:
        base = str(request.base_url).rstrip("/") + BASE_PATH + "/predictions/" + job["id"]
        predict = (
            (job["completed"] - job["started"])
            if job.get("completed") and job.get("started")
            else None
        )
        return {
            "id": job["id"],
            "model": job["model"],
            "version": job["version"],
            "input": job["input"],
            "logs": job["logs"],
            "output": job.get("output"),
            "data_removed": False,
            "error": job.get("error"),
            "status": job["status"],
            "source": "api",
            "created_at": _iso(job["created"]),
            "started_at": _iso(job.get("started")),
            "completed_at": _iso(job.get("completed")),
            "deadline": _iso(job.get("deadline")),
            "urls": {
                "get": base,
                "cancel": base + "/cancel",
                "web": f"https://replicate.com/p/{job['id']}",
            },
            "metrics": {"predict_time": round(predict, 4)} if predict is not None else {},
        }

    def finish(self, request: Request, job: dict[str, Any]) -> None:
        now = time.time()
        job.setdefault("started", now)
        job["completed"] = now
        inp = job["input"]
        if BLOCKED_WORD in str(inp.get("prompt", "")):
            job["status"], job["error"] = "failed", NSFW_MESSAGE
            return
        count, (width, height), transparent = job["plan"]
        fmt = {"jpg": "jpeg"}.get(
            str(inp.get("output_format", "webp")), str(inp.get("output_format", "webp"))
        )
        if transparent:
            fmt = "png"
        urls = []
        for i in range(count):
            data = render_image(
                str(inp.get("prompt", job["model"])),
                int(inp.get("seed", 0)) + i,
                width,
                height,
                fmt,
            )
            urls.append(self.state.delivery.put(data, media_type_for(fmt), str(request.base_url)))
        job["output"] = urls if job["rules"]["output"] == "list" else urls[0]
        job["status"] = "succeeded"
        job["logs"] += "100%|##########| 4/4\n"

    def advance(self, request: Request, job: dict[str, Any]) -> None:
        if job["status"] in ("succeeded", "failed", "canceled"):
            return
        if job.get("deadline") and time.time() > job["deadline"]:
            job["status"], job["completed"] = "canceled", time.time()
            job["error"] = "Prediction was canceled: it ran past its Cancel-After deadline."
            return
        job["polls"] += 1
        if job["polls"] == 1:
            job["status"] = "starting"
        elif job["polls"] <= self.settings["polls"]:
            job["status"], job["started"] = "processing", job.get("started", time.time())
            job["logs"] += (
                f"{int(100 * job['polls'] / (self.settings['polls'] + 1))}%|###  | step\n"
            )
        else:
            self.finish(request, job)

    async def create(
        self, request: Request, model: str, version: str, rules: dict[str, Any]
    ) -> Response:
        try:
            body = await request.json()
        except ValueError:
            raise APIError(400, "Bad request", "The request body is not valid JSON.") from None
        inp = body.get("input")
        if not isinstance(inp, dict):
            raise APIError(422, "Input validation failed", "- input: input is required")
        plan = _plan_outputs(rules, inp)
        self.throttle()
        job: dict[str, Any] = {
            "id": secrets.token_hex(13)[:26],
            "model": model,
            "version": version,
            "input": inp,
            "logs": "",
            "status": "starting",
            "created": time.time(),
            "polls": 0,
            "plan": plan,
            "rules": rules,
        }
        if request.headers.get("cancel-after"):
            job["deadline"] = job["created"] + parse_duration(request.headers["cancel-after"])
        self.state.jobs[job["id"]] = job
        prefer = request.headers.get("prefer", "")
        if prefer.startswith("wait"):
            wait = float(prefer.partition("=")[2] or 60)
            if self.settings["duration"] <= wait:
                await asyncio.sleep(self.settings["duration"])
                self.finish(request, job)
            else:
                await asyncio.sleep(wait)
        return JSONResponse(self.to_json(request, job), status_code=201)

    async def create_for_model(self, request: Request) -> Response:
        try:
            self.check_auth(request)
            model = f"{request.path_params['owner']}/{request.path_params['name']}"
            rules = MODELS.get(model)
            if rules is None:
                raise APIError(
                    404,
                    "Not found",
                    f"Model {model} not found, or it has no official predictions endpoint.",
                )
            return await self.create(request, model, "hidden", rules)
        except APIError as exc:
            return exc.response()

    async def create_for_version(self, request: Request) -> Response:
        try:
            self.check_auth(request)
            try:
                body = await request.json()
            except ValueError:
                raise APIError(400, "Bad request", "The request body is not valid JSON.") from None
            ref = str(body.get("version", ""))
            version = ref.rpartition(":")[2]
            if version in VERSIONS:
                return await self.create(
                    request, VERSIONS[version]["model"], version, VERSIONS[version]
                )
            if ref in MODELS:
                return await self.create(request, ref, "hidden", MODELS[ref])
            raise _invalid("version", f"Invalid version or not permitted: {ref!r}")
        except APIError as exc:
            return exc.response()

    def find(self, request: Request) -> dict[str, Any]:
        job = self.state.jobs.get(request.path_params["id"])
        if job is None:
            raise APIError(404, "Not found", "The requested resource could not be found.")
        return job

    async def get_prediction(self, request: Request) -> Response:
        try:
            self.check_auth(request)
            job = self.find(request)
            with self.state.lock:
                self.advance(request, job)
            return JSONResponse(self.to_json(request, job))
        except APIError as exc:
            return exc.response()

    async def cancel(self, request: Request) -> Response:
        try:
            self.check_auth(request)
            job = self.find(request)
            with self.state.lock:
                if job["status"] not in ("succeeded", "failed", "canceled"):
                    job["status"], job["completed"] = "canceled", time.time()
            return JSONResponse(self.to_json(request, job))
        except APIError as exc:
            return exc.response()

    async def jobs_settings(self, request: Request) -> Response:
        body = await request.json()
        for name, cast in (("polls", int), ("duration", float), ("rate_limit", int)):
            if name in body:
                self.settings[name] = cast(body[name])
        return JSONResponse(self.settings)


def create_app(state: EmulatorState | None = None) -> Any:
    state = state or EmulatorState()
    state.delivery.ttl = 3600.0  # API prediction outputs are kept for an hour
    emu = _ReplicateEmulator(state)
    routes = [
        Route("/_emulator/jobs", emu.jobs_settings, methods=["POST"]),
        Route(
            BASE_PATH + "/models/{owner}/{name}/predictions", emu.create_for_model, methods=["POST"]
        ),
        Route(BASE_PATH + "/predictions", emu.create_for_version, methods=["POST"]),
        Route(BASE_PATH + "/predictions/{id}", emu.get_prediction, methods=["GET"]),
        Route(BASE_PATH + "/predictions/{id}/cancel", emu.cancel, methods=["POST"]),
    ]
    return emulator_app(routes, state, error_body)
