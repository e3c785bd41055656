"""Errors as the clients expect them, mapped once for the whole server.

OpenAI-style routes answer ``{"error": {message, type, param, code}}``; the A1111 routes answer
that API's ``{"error", "detail"}`` shape. Unexpected exceptions are logged here with their
traceback and answered with a generic 500 that names no internals.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from limner import errors

__all__ = ["ApiError", "error_response", "install_error_handlers"]

log = logging.getLogger("limner.server")


class ApiError(Exception):
    """An error raised by the server itself (auth, limits, idempotency), with its status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.param, self.headers = param, headers or {}


def _type_for(exc: errors.LimnerError) -> str:
    if isinstance(exc, errors.MissingKeyError):
        return "invalid_request_error"
    if isinstance(exc, errors.UserError):
        return "invalid_request_error"
    if isinstance(exc, errors.PolicyError):
        return "policy_error"
    if isinstance(exc, errors.RateLimitError):
        return "rate_limit_error"
    return "provider_error"


def error_response(
    request: Request | None,
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    path = request.url.path if request is not None else ""
    body: dict[str, Any]
    if path.startswith("/sdapi/"):
        body = {"error": type_, "detail": message, "body": "", "errors": code or ""}
    else:
        body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def limner_error_response(request: Request | None, exc: errors.LimnerError) -> JSONResponse:
    headers = {}
    if isinstance(exc, errors.RateLimitError):
        headers["Retry-After"] = str(int(exc.retry_after or 1))
    status = exc.http_status if 400 <= exc.http_status < 600 else 500
    return error_response(
        request, status, str(exc), type_=_type_for(exc), code=exc.code,
        param=getattr(exc, "param", None), headers=headers,
    )  # fmt: skip


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    problems, first_param = [], None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        name = ".".join(loc) or None
        first_param = first_param or name
        kind = err.get("type", "")
        if kind == "json_invalid":
            return (
                "The request body is not valid JSON: " + str(err.get("ctx", {}).get("error", "")),
                None,
            )
        if kind == "extra_forbidden":
            problems.append(f"unknown field {name!r}")
        elif kind == "missing":
            problems.append(f"missing required field {name!r}")
        else:
            problems.append(f"{name}: {err.get('msg', 'invalid')}" if name else err.get("msg", ""))
    return "Invalid request: " + "; ".join(problems) + ".", first_param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            request, exc.status, exc.message, type_=exc.type, code=exc.code, param=exc.param,
            headers=exc.headers,
        )  # fmt: skip

    @app.exception_handler(errors.LimnerError)
    async def _limner_error(request: Request, exc: errors.LimnerError) -> JSONResponse:
        return limner_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(
            request, 400, message, type_="invalid_request_error", code="invalid_request",
            param=param,
        )  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(
            request, exc.status_code, message, type_="invalid_request_error", code=code,
            headers=getattr(exc, "headers", None),
        )  # fmt: skip

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log only; the client learns nothing internal.
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            request, 500, "Internal server error; the server log has the details.",
            type_="server_error", code="internal_error",
        )  # fmt: skip
