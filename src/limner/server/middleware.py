"""ASGI middleware: body caps, Host and Origin checks, security headers, and Idempotency-Key.

``Idempotency-Key`` follows the IETF draft: the same key and body replay the first response;
the same key with a different body gets 422; a duplicate that arrives while the first is still
running gets 409. Keys are scoped to the presented API key so clients cannot probe each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from limner.server.auth import hash_key
from limner.store import Store
from limner.store.jobs_schema import idempotency_keys

__all__ = ["GuardMiddleware", "IdempotencyMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KEEP_S = 24 * 3600.0
STALE_IN_PROGRESS_S = 15 * 60.0
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _json_error(
    send: Send,
    status: int,
    message: str,
    code: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Refuse oversized bodies, foreign Host headers (DNS rebinding) and cross-site writes."""

    def __init__(self, app: ASGIApp, *, max_body: int, allowed_hosts: set[str] | None) -> None:
        self.app, self.max_body, self.allowed_hosts = app, max_body, allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = (_header(scope, b"host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            await _json_error(send, 421, f"Host {host!r} is not served here.", "invalid_host")
            return
        origin = _header(scope, b"origin")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and origin and origin != "null":
            origin_host = (urlsplit(origin).netloc or "").lower()
            if origin_host != (_header(scope, b"host") or "").lower():
                await _json_error(send, 403, "Cross-origin requests are refused.", "cross_origin")
                return
        length = _header(scope, b"content-length")
        if length and length.isdigit() and int(length) > self.max_body:
            await _json_error(
                send,
                413,
                f"The request body is larger than {self.max_body // 2**20} MiB.",
                "body_too_large",
            )
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise _BodyTooLarge
            return message

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        try:
            await self.app(scope, counted, with_headers)
        except _BodyTooLarge:
            await _json_error(
                send,
                413,
                f"The request body is larger than {self.max_body // 2**20} MiB.",
                "body_too_large",
            )


class _BodyTooLarge(Exception):
    pass


def _fingerprint(scope: Scope, body: bytes) -> str:
    """The request's identity: method, path, and body with any multipart boundary normalised
    (clients draw a fresh boundary for every attempt)."""
    content_type = _header(scope, b"content-type") or ""
    if "boundary=" in content_type:
        boundary = content_type.split("boundary=", 1)[1].split(";")[0].strip().strip('"').encode()
        if boundary:
            body = body.replace(boundary, b"B")
        content_type = content_type.split(";")[0]
    digest = hashlib.sha256()
    for part in (scope["method"].encode(), scope["path"].encode(), content_type.encode(), body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def _owner(scope: Scope) -> str:
    auth = _header(scope, b"authorization") or _header(scope, b"x-api-key") or ""
    return hash_key(auth)[:32] if auth else "anonymous"


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, *, store: Store) -> None:
        self.app, self.store = app, store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _header(scope, b"idempotency-key") if scope["type"] == "http" else None
        if key is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if not 1 <= len(key) <= 255:
            await _json_error(
                send, 400, "Idempotency-Key must be 1 to 255 characters.", "invalid_idempotency_key"
            )
            return
        body = await _read_body(receive)
        if body is None:
            await _json_error(send, 400, "The request body could not be read.", "invalid_body")
            return
        owner, fingerprint = _owner(scope), _fingerprint(scope, body)
        claimed = await asyncio.to_thread(self._claim, owner, key, fingerprint)
        if claimed is not None:
            await self._answer_existing(send, claimed, fingerprint)
            return
        status, headers, chunks = 500, [], []

        async def replay() -> Message:
            nonlocal body
            chunk, body = body, b""
            return {"type": "http.request", "body": chunk, "more_body": False}

        async def capture(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], message.get("headers", [])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay, capture)
        finally:
            media = next(
                (v.decode() for k, v in headers if k.lower() == b"content-type"), "application/json"
            )
            await asyncio.to_thread(self._finish, owner, key, status, media, b"".join(chunks))

    def _claim(self, owner: str, key: str, fingerprint: str) -> Any:
        """Insert an in-progress record; return the existing row when the key is taken."""
        table, now = idempotency_keys, time.time()
        with self.store.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.created_at < now - KEEP_S))
            conn.execute(
                table.delete().where(
                    table.c.scope == owner, table.c.key == key, table.c.state == "in_progress",
                    table.c.created_at < now - STALE_IN_PROGRESS_S,
                )
            )  # fmt: skip
        try:
            with self.store.engine.begin() as conn:
                conn.execute(
                    table.insert().values(
                        scope=owner,
                        key=key,
                        fingerprint=fingerprint,
                        state="in_progress",
                        created_at=now,
                    )
                )
            return None
        except IntegrityError:
            with self.store.engine.connect() as conn:
                return conn.execute(
                    sa.select(table).where(table.c.scope == owner, table.c.key == key)
                ).first()

    def _finish(self, owner: str, key: str, status: int, media: str, body: bytes) -> None:
        table = idempotency_keys
        where = sa.and_(table.c.scope == owner, table.c.key == key)
        with self.store.engine.begin() as conn:
            if status >= 500:
                # A server failure is not an answer to keep: the client may retry with the key.
                conn.execute(table.delete().where(where))
            else:
                conn.execute(
                    table.update()
                    .where(where)
                    .values(state="done", status_code=status, media_type=media, body=body)
                )

    async def _answer_existing(self, send: Send, row: Any, fingerprint: str) -> None:
        if row is None:
            await _json_error(
                send,
                409,
                "A request with this Idempotency-Key is still in progress.",
                "idempotency_conflict",
            )
            return
        if row.fingerprint != fingerprint:
            await _json_error(
                send,
                422,
                "This Idempotency-Key was already used with a different request body.",
                "idempotency_mismatch",
            )
            return
        if row.state != "done":
            await _json_error(
                send, 409, "A request with this Idempotency-Key is still in progress; retry later.",
                "idempotency_conflict", [(b"retry-after", b"1")],
            )  # fmt: skip
            return
        body = row.body or b""
        await send(
            {
                "type": "http.response.start",
                "status": row.status_code,
                "headers": [
                    (b"content-type", (row.media_type or "application/json").encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"idempotent-replayed", b"true"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)
