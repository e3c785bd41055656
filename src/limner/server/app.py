"""The limner server: one ASGI app with the OpenAI- and A1111-compatible APIs, the durable job
queue and the gallery.

    from limner.server.app import create_app
    from limner.server.settings import ServerSettings
    app = create_app(ServerSettings.from_env())
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from limner.responses import FastJSONResponse
from limner.server.context import ServerContext
from limner.server.errors import install_error_handlers
from limner.server.middleware import GuardMiddleware, IdempotencyMiddleware
from limner.server.settings import ServerSettings

__all__ = ["create_app"]

log = logging.getLogger("limner.server")
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


def _allowed_hosts(settings: ServerSettings) -> set[str] | None:
    """On loopback, only loopback Host headers (defeats DNS rebinding); elsewhere any, since
    every request must authenticate."""
    if not settings.loopback:
        return None
    hosts = set(LOOPBACK_NAMES)
    if settings.public_url:
        from urllib.parse import urlsplit

        hosts.add((urlsplit(settings.public_url).hostname or "").lower())
    return hosts


def _mcp_server(settings: ServerSettings) -> Any:
    """The MCP tools over streamable HTTP at ``/mcp/``, where the mcp package is installed."""
    import importlib.util

    if not settings.mcp or importlib.util.find_spec("mcp") is None:
        return None
    from limner.server.mcp_server import build_server

    return build_server(settings.home)


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    from limner import __version__
    from limner.server import a1111_routes, gallery, jobs, openai_routes

    settings = settings or ServerSettings.from_env()
    ctx = ServerContext.create(settings)
    queue = jobs.JobQueue(ctx)
    mcp_server = _mcp_server(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Store writes and checks run in threads; the default pool (CPUs + 4) would queue them
        # behind each other at a few hundred requests in flight.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=64))
        ctx.open()
        # What start-up built (modules, routes, the catalog) lives as long as the process: keep
        # it out of the collector's full passes, which otherwise walk it again and again.
        gc.collect()
        gc.freeze()
        if settings.run_worker:
            await queue.start()
        try:
            if mcp_server is not None:
                async with mcp_server.session_manager.run():
                    yield
            else:
                yield
        finally:
            await queue.stop()
            await ctx.aclose()

    app = FastAPI(
        title="limner",
        version=__version__,
        description="Image generation across providers: OpenAI- and A1111-compatible APIs, jobs, gallery.",
        lifespan=lifespan,
        default_response_class=FastJSONResponse,
    )
    app.state.ctx = ctx
    app.state.jobs = queue
    ctx.jobs = queue
    install_error_handlers(app)
    app.include_router(openai_routes.router)
    app.include_router(a1111_routes.router)
    app.include_router(jobs.router)
    if settings.gallery:
        app.include_router(gallery.router)

    if mcp_server is not None:
        from limner.server.mcp_server import McpAuth

        mcp_app = mcp_server.streamable_http_app(
            streamable_http_path="/", stateless_http=True, host=settings.host
        )
        app.mount("/mcp", McpAuth(mcp_app, ctx))

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    # Added last = outermost: the guard runs first, then idempotency, then the routes.
    app.add_middleware(IdempotencyMiddleware, store=ctx.store)
    app.add_middleware(
        GuardMiddleware, max_body=settings.max_request_bytes, allowed_hosts=_allowed_hosts(settings)
    )
    return app
