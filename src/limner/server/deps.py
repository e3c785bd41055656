"""FastAPI dependencies: the server context and the caller's key, checked for a scope."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from limner.server.auth import Principal, require
from limner.server.context import ServerContext

__all__ = ["context", "needs"]


def context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


def needs(scope: str) -> Callable[[Request], Principal]:
    """A dependency that authenticates the caller, applies its rate limit and checks ``scope``."""

    def dependency(request: Request) -> Principal:
        ctx = context(request)
        principal = ctx.keys.authenticate(request)
        require(principal, scope)
        ctx.keys.check_rate(principal)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"needs_{scope}"
    return dependency
