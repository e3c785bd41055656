"""Server API keys: stored as SHA-256 hashes, scoped, with per-key rate limits.

Scopes: ``generate`` (make images, submit jobs), ``read`` (list, fetch, search) and ``admin``
(delete, change options). With no key created, a server on loopback lets local clients in with
every scope; once a key exists, every request must carry one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from fastapi import Request

from limner import errors
from limner.server.errors import ApiError
from limner.store import Store, new_id
from limner.store.jobs_schema import server_api_keys

__all__ = ["SCOPES", "KeyRing", "Principal"]

SCOPES = ("generate", "read", "admin")
LOCAL = "local"
CACHE_S = 5.0


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    scopes: frozenset[str]
    rate_per_minute: int | None = None


@dataclass
class _Bucket:
    tokens: float
    updated: float


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class KeyRing:
    store: Store
    default_rate: int = 0
    _cache: dict[str, tuple[float, Principal | None]] = field(default_factory=dict)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _any_cached: tuple[float, bool] = (0.0, False)

    # -- management ----------------------------------------------------------------------------
    def create(
        self, name: str, scopes: list[str], rate_per_minute: int | None = None
    ) -> tuple[str, str]:
        """Create a key; return (id, secret). The secret is shown once and never stored."""
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise errors.InvalidRequestError(
                f"Unknown or missing scope(s): {', '.join(sorted(unknown)) or 'none given'}.",
                param="scope",
                hint=f"Scopes: {', '.join(SCOPES)}.",
            )
        secret = "lmn_" + secrets.token_urlsafe(32)
        key_id = new_id()
        with self.store.engine.begin() as conn:
            conn.execute(
                server_api_keys.insert().values(
                    id=key_id, name=name, key_hash=hash_key(secret), prefix=secret[:8],
                    scopes=sorted(set(scopes)), rate_per_minute=rate_per_minute,
                    created_at=time.time(),
                )
            )  # fmt: skip
        self._any_cached = (0.0, False)
        return key_id, secret

    def list(self) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(server_api_keys).order_by(server_api_keys.c.created_at))
            return [
                {
                    "id": r.id, "name": r.name, "prefix": r.prefix, "scopes": r.scopes,
                    "rate_per_minute": r.rate_per_minute, "created_at": r.created_at,
                    "revoked": r.revoked_at is not None,
                }
                for r in rows
            ]  # fmt: skip

    def revoke(self, key_id: str) -> bool:
        with self.store.engine.begin() as conn:
            done = conn.execute(
                server_api_keys.update()
                .where(server_api_keys.c.id == key_id, server_api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            ).rowcount
        self._cache.clear()
        return bool(done)

    def any_keys(self) -> bool:
        checked, value = self._any_cached
        if time.monotonic() - checked < CACHE_S:
            return value
        with self.store.engine.connect() as conn:
            value = bool(
                conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(server_api_keys)
                    .where(server_api_keys.c.revoked_at.is_(None))
                )
            )
        self._any_cached = (time.monotonic(), value)
        return value

    # -- checking ------------------------------------------------------------------------------
    def _lookup(self, secret: str) -> Principal | None:
        digest = hash_key(secret)
        hit = self._cache.get(digest)
        if hit and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        with self.store.engine.connect() as conn:
            row = conn.execute(
                sa.select(server_api_keys).where(server_api_keys.c.key_hash == digest)
            ).first()
        principal = None
        if row is not None and row.revoked_at is None and hmac.compare_digest(row.key_hash, digest):
            principal = Principal(row.id, row.name, frozenset(row.scopes), row.rate_per_minute)
        self._cache[digest] = (time.monotonic(), principal)
        return principal

    def authenticate(self, request: Request) -> Principal:
        secret = _presented_key(request)
        if not self.any_keys():
            return Principal(LOCAL, LOCAL, frozenset(SCOPES), self.default_rate or None)
        if not secret:
            raise ApiError(
                401,
                "Missing API key. Send it as 'Authorization: Bearer <key>'.",
                type_="authentication_error", code="missing_api_key",
            )  # fmt: skip
        principal = self._lookup(secret)
        if principal is None:
            raise ApiError(
                401, "Invalid or revoked API key.", type_="authentication_error",
                code="invalid_api_key",
            )  # fmt: skip
        return principal

    def check_rate(self, principal: Principal) -> None:
        """A token bucket per key: ``rate_per_minute`` requests, refilled continuously."""
        rate = principal.rate_per_minute or self.default_rate
        if not rate:
            return
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(principal.id, _Bucket(float(rate), now))
            bucket.tokens = min(float(rate), bucket.tokens + (now - bucket.updated) * rate / 60.0)
            bucket.updated = now
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) * 60.0 / rate
                raise ApiError(
                    429, f"Rate limit of {rate} requests per minute reached for this key.",
                    type_="rate_limit_error", code="rate_limit_exceeded",
                    headers={"Retry-After": str(max(int(wait + 0.999), 1))},
                )  # fmt: skip
            bucket.tokens -= 1.0


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        # A1111 clients send HTTP Basic auth (--api-auth); the password is the key.
        try:
            decoded = base64.b64decode(value.strip()).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return request.headers.get("x-api-key") or None


def require(principal: Principal, scope: str) -> None:
    if scope not in principal.scopes:
        raise ApiError(
            403, f"This API key lacks the {scope!r} scope.", type_="permission_error",
            code="insufficient_scope",
        )  # fmt: skip
