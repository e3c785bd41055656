"""Shared parts of the provider emulators: deterministic images, fault injection, delivery URLs
that expire, and a loopback server that tests and users start in one line.

Fault injection is driven over HTTP so that a test (or a user's own test suite) can script it:

    POST /_emulator/faults  {"status": 429, "retry_after": 1, "count": 2, "path": "/images"}
    POST /_emulator/faults  {"delay": 2.5, "count": 1}
    POST /_emulator/settings {"latency": 2, "rpm": 60}   latency per request; a requests-per-minute
                            limit (sliding minute, 429 + Retry-After beyond it, x-ratelimit-* headers)
    POST /_emulator/settings {"noise": 3}   bits of noise per channel in rendered images, so
                            that results are photo-sized (OpenAI emulator)
    DELETE /_emulator/faults
    GET /_emulator/stats    request counts per path

A prompt containing ``BLOCKED_WORD`` is refused by each emulator's content-policy path.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import io
import math
import random
import socket
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from limner.responses import FastJSONResponse as JSONResponse

__all__ = [
    "BLOCKED_WORD",
    "Delivery",
    "EmulatorServer",
    "EmulatorState",
    "Fault",
    "JSONResponse",
    "emulator_app",
    "render_image",
]

BLOCKED_WORD = "forbidden-content"
ErrorBody = Callable[[int, str], Any]


@functools.lru_cache(maxsize=32)
def render_image(
    prompt: str, seed: int | None, width: int, height: int, fmt: str = "png", noise: int = 0
) -> bytes:
    """A deterministic image: a gradient and bands whose colours derive from prompt and seed.

    ``noise`` (0-8) adds that many bits of seeded random noise to every channel, so the file is
    as large as a real photo instead of a few kilobytes: with 3, a 1024x1024 PNG is about
    1.4 MiB. Renders are cached, as noisy ones take a while to encode."""
    from PIL import Image, ImageChops, ImageDraw

    digest = hashlib.sha256(f"{prompt}|{seed}|{width}x{height}".encode()).digest()
    c1, c2 = tuple(digest[0:3]), tuple(digest[3:6])
    img = Image.new("RGB", (width, height), c1)
    draw = ImageDraw.Draw(img)
    bands = 4 + digest[6] % 8
    for i in range(bands):
        x0 = int(i * width / bands)
        shade = tuple((a * (bands - i) + b * i) // bands for a, b in zip(c1, c2, strict=True))
        draw.rectangle([x0, 0, int((i + 1) * width / bands), height], fill=shade)
    r = max(min(width, height) // 4, 1)
    cx, cy = width * digest[7] // 256, height * digest[8] // 256
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(digest[9:12]))
    if noise > 0:
        shift = 8 - min(noise, 8)
        grain = random.Random(digest).randbytes(width * height * 3)
        img = ImageChops.add(
            img, Image.frombytes("RGB", (width, height), grain).point(lambda v: v >> shift)
        )
    buf = io.BytesIO()
    pil_format = {"jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}.get(fmt.lower(), "PNG")
    options: dict[str, Any] = {"quality": 90} if pil_format != "PNG" else {}
    if noise > 0 and pil_format == "PNG":
        # Noise has no repeats for zlib to find: Huffman coding alone is as small and far faster.
        options = {"compress_level": 1, "compress_type": zlib.Z_HUFFMAN_ONLY}
    img.save(buf, format=pil_format, **options)
    return buf.getvalue()


def media_type_for(fmt: str) -> str:
    return {"jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}.get(
        fmt.lower(), "image/png"
    )


@dataclass
class Fault:
    status: int | None = None
    delay: float = 0.0
    retry_after: float | None = None
    retry_after_ms: int | None = None
    count: int = 1
    path: str = ""
    method: str = ""
    body: Any = None

    def matches(self, request: Request) -> bool:
        if self.method and request.method != self.method.upper():
            return False
        return request.url.path.startswith(self.path) if self.path else True


@dataclass
class Delivery:
    """Result files served from ``/delivery/<token>``, each expiring ``ttl`` seconds after creation."""

    ttl: float = 600.0
    secret: bytes = field(
        default_factory=lambda: hashlib.sha256(str(time.time_ns()).encode()).digest()
    )
    files: dict[str, tuple[bytes, str, float]] = field(default_factory=dict)

    def put(self, data: bytes, media_type: str, base_url: str) -> str:
        token = hmac.new(self.secret, data + str(time.time_ns()).encode(), "sha256").hexdigest()[
            :32
        ]
        self.files[token] = (data, media_type, time.time() + self.ttl)
        return f"{base_url.rstrip('/')}/delivery/{token}"

    def get(self, token: str) -> tuple[bytes, str] | None:
        item = self.files.get(token)
        if item is None:
            return None
        data, media, expires = item
        if time.time() > expires:
            self.files.pop(token, None)
            return None
        return data, media


@dataclass
class EmulatorState:
    """Mutable state an emulator keeps: faults to inject, counters, delivery files, latency."""

    latency: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    delivery: Delivery = field(default_factory=Delivery)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    max_concurrent: int | None = None
    in_flight: int = 0
    rpm: int | None = None
    rpm_window: deque[float] = field(default_factory=deque)
    noise: int = 0  # bits of noise in rendered images (render_image): photo-sized files

    def _rpm_prune(self, now: float) -> None:
        while self.rpm_window and self.rpm_window[0] <= now - 60.0:
            self.rpm_window.popleft()

    def take_rpm_slot(self) -> float | None:
        """Admit a request under ``rpm`` (None) or return the seconds until a slot frees."""
        if not self.rpm:
            return None
        with self.lock:
            now = time.monotonic()
            self._rpm_prune(now)
            if len(self.rpm_window) >= self.rpm:
                return self.rpm_window[0] + 60.0 - now
            self.rpm_window.append(now)
            return None

    def rpm_headers(self) -> dict[str, str]:
        """OpenAI-style headers; ``reset`` is the time until the next slot frees."""
        if not self.rpm:
            return {}
        with self.lock:
            now = time.monotonic()
            self._rpm_prune(now)
            remaining = max(self.rpm - len(self.rpm_window), 0)
            reset = self.rpm_window[0] + 60.0 - now if remaining == 0 and self.rpm_window else 0.0
        return {
            "x-ratelimit-limit-requests": str(self.rpm),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{reset:.3f}s",
        }

    def take_fault(self, request: Request) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(request):
                    fault.count -= 1
                    if fault.count <= 0:
                        self.faults.remove(fault)
                    return fault
        return None


def _fault_routes(state: EmulatorState) -> list[Route]:
    async def add_fault(request: Request) -> Response:
        body = await request.json()
        items = body if isinstance(body, list) else [body]
        with state.lock:
            state.faults.extend(Fault(**item) for item in items)
        return JSONResponse({"faults": len(state.faults)})

    async def clear_faults(request: Request) -> Response:
        with state.lock:
            state.faults.clear()
        return JSONResponse({"faults": 0})

    async def stats(request: Request) -> Response:
        return JSONResponse(dict(state.stats))

    async def settings(request: Request) -> Response:
        body = await request.json()
        if "latency" in body:
            state.latency = float(body["latency"])
        if "max_concurrent" in body:
            state.max_concurrent = body["max_concurrent"]
        if "delivery_ttl" in body:
            state.delivery.ttl = float(body["delivery_ttl"])
        if "rpm" in body:
            state.rpm = int(body["rpm"]) if body["rpm"] else None
            state.rpm_window.clear()
        if "noise" in body:
            state.noise = max(0, min(int(body["noise"] or 0), 8))
        return JSONResponse({
            "latency": state.latency, "max_concurrent": state.max_concurrent, "rpm": state.rpm,
            "noise": state.noise,
        })  # fmt: skip

    async def delivery(request: Request) -> Response:
        item = state.delivery.get(request.path_params["token"])
        if item is None:
            return JSONResponse({"error": "expired or unknown"}, status_code=404)
        return Response(item[0], media_type=item[1])

    return [
        Route("/_emulator/faults", add_fault, methods=["POST"]),
        Route("/_emulator/faults", clear_faults, methods=["DELETE"]),
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/settings", settings, methods=["POST"]),
        Route("/delivery/{token}", delivery, methods=["GET"]),
    ]


def emulator_app(routes: list[Route], state: EmulatorState, error_body: ErrorBody) -> Starlette:
    """A Starlette app with the shared control routes and a middleware that injects faults."""

    async def inject(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if path.startswith("/_emulator"):
            return await call_next(request)
        state.stats[f"{request.method} {path}"] += 1
        state.stats["total"] += 1
        fault = state.take_fault(request)
        if fault and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault and fault.status:
            headers = {}
            if fault.retry_after is not None:
                headers["retry-after"] = f"{fault.retry_after:g}"
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = str(fault.retry_after_ms)
            body = (
                fault.body if fault.body is not None else error_body(fault.status, "injected fault")
            )
            return JSONResponse(body, status_code=fault.status, headers=headers)
        wait = None if path.startswith("/delivery/") else state.take_rpm_slot()
        if wait is not None:
            state.stats["rate_limited"] += 1
            retry = {
                "retry-after": str(math.ceil(wait)),
                "retry-after-ms": str(math.ceil(wait * 1000)),
            }
            return JSONResponse(
                error_body(429, "rate limit reached"), 429, {**retry, **state.rpm_headers()}
            )
        if state.max_concurrent is not None and state.in_flight >= state.max_concurrent:
            return JSONResponse(
                error_body(429, "too many concurrent requests"), 429, {"retry-after": "1"}
            )
        state.in_flight += 1
        try:
            if state.latency and not path.startswith("/delivery/"):
                await asyncio.sleep(state.latency)
            response = await call_next(request)
            response.headers.update(state.rpm_headers())
            return response
        finally:
            state.in_flight -= 1

    app = Starlette(
        routes=[*_fault_routes(state), *routes],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=inject)],
    )
    app.state.emulator = state
    return app


class EmulatorServer:
    """Run an ASGI app with uvicorn on a loopback port in a background thread.

    >>> with EmulatorServer(create_app()) as server:
    ...     server.base_url   # "http://127.0.0.1:<port>"
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.host = host
        self.port = port or _free_port(host)
        self.app = app
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmulatorServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("emulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
