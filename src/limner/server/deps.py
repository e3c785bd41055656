"""FastAPI dependencies: the server context and the caller's key, checked for a scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from limner.server.auth import Principal, require
from limner.server.context import ServerContext

__all__ = ["context", "needs"]


# Both are async so FastAPI calls them on the event loop: a sync dependency costs a trip
# through the thread pool on every request.
async def context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


def needs(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that authenticates the caller, applies its rate limit and checks ``scope``.

    Key lookups are cached for a few seconds, so the occasional store read stays inline."""

    async def dependency(request: Request) -> Principal:
        ctx: ServerContext = request.app.state.ctx
        principal = ctx.keys.authenticate(request)
        require(principal, scope)
        ctx.keys.check_rate(principal)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"needs_{scope}"
    return dependency
