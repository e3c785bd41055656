"""Server API keys: stored as SHA-256 hashes, scoped, with per-key rate limits and budgets.

Scopes: ``generate`` (make images, submit jobs), ``read`` (list, fetch, search) and ``admin``
(delete, change options). With no key created, a server on loopback lets local clients in with
every scope; once a key exists, every request must carry one.

Every request a key makes is logged with the tag ``server-key:<key id>`` (a tag clients cannot
send themselves), so the generation log says which key spent what. A key's budget (``5/day``,
``50/month``) is a set of :class:`limner.budget.Cap` on that tag, enforced by the same atomic
reservation as ``limner budget``: before a request is sent its estimated cost is reserved
against the key's caps, and a request that would break one is refused with 402.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from fastapi import Request

from limner import errors
from limner.budget import BudgetLedger, Cap, LedgerGuard, parse_amount, reservation_amount
from limner.server.errors import ApiError
from limner.store import Store, new_id
from limner.store.jobs_schema import server_api_keys
from limner.types import ImageRequest

if TYPE_CHECKING:
    from limner.client import Limner, Plan

__all__ = ["SCOPES", "KeyBudgetGuard", "KeyRing", "Principal", "key_tag", "parse_budget"]

SCOPES = ("generate", "read", "admin")
LOCAL = "local"
CACHE_S = 5.0
KEY_TAG = "server-key:"
PERIODS = {"day": "daily", "daily": "daily", "month": "monthly", "monthly": "monthly"}
BUDGET_PATTERN = re.compile(r"^\s*\$?([^/\s]+)\s*/\s*([a-z]+)\s*$", re.IGNORECASE)


def key_tag(key_id: str) -> str:
    """The tag that attributes a request (and its cost, in the log) to a server key."""
    return KEY_TAG + key_id


def parse_budget(text: str) -> tuple[str, float]:
    """``"5/day"`` -> ``("daily", 5.0)``; ``"50/month"`` -> ``("monthly", 50.0)``."""
    match = BUDGET_PATTERN.match(text)
    scope = PERIODS.get(match.group(2).lower()) if match else None
    if match is None or scope is None:
        raise errors.InvalidRequestError(
            f"Cannot read the budget {text!r}.",
            param="budget",
            hint="Write USD per period: 5/day or 50/month (repeat for both).",
        )
    return scope, parse_amount(match.group(1), f"budget {text!r}")


def _caps(key_id: str, stored: Any) -> tuple[Cap, ...]:
    return tuple(
        Cap(item["scope"], float(item["limit_usd"]), key_tag(key_id)) for item in stored or []
    )


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    scopes: frozenset[str]
    rate_per_minute: int | None = None
    budget: tuple[Cap, ...] = ()

    @classmethod
    def from_row(cls, row: Any) -> Principal:
        return cls(
            row.id, row.name, frozenset(row.scopes), row.rate_per_minute, _caps(row.id, row.budget)
        )


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
    _ledger: BudgetLedger | None = None

    # -- management ----------------------------------------------------------------------------
    def create(
        self,
        name: str,
        scopes: list[str],
        rate_per_minute: int | None = None,
        budget: dict[str, float] | None = None,
    ) -> tuple[str, str]:
        """Create a key; return (id, secret). The secret is shown once and never stored.
        ``budget`` maps ``daily`` / ``monthly`` to a cap in USD (see :func:`parse_budget`)."""
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
                    created_at=time.time(), budget=_stored_budget(budget),
                )
            )  # fmt: skip
        self._any_cached = (0.0, False)
        return key_id, secret

    def set_budget(self, key_id: str, budget: dict[str, float] | None) -> bool:
        """Replace a key's caps (``None`` or empty: no budget); False when there is no such key."""
        with self.store.engine.begin() as conn:
            done = conn.execute(
                server_api_keys.update()
                .where(server_api_keys.c.id == key_id)
                .values(budget=_stored_budget(budget))
            ).rowcount
        self._cache.clear()
        return bool(done)

    def budget_status(self, key_id: str) -> list[dict[str, Any]]:
        """Each cap of the key with what was spent, reserved and is left in its period."""
        principal = self.by_id(key_id)
        if principal is None:
            return []
        return [s.to_dict() for s in self.ledger.status(list(principal.budget))]

    def list(self) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(server_api_keys).order_by(server_api_keys.c.created_at))
            return [
                {
                    "id": r.id, "name": r.name, "prefix": r.prefix, "scopes": r.scopes,
                    "rate_per_minute": r.rate_per_minute, "created_at": r.created_at,
                    "revoked": r.revoked_at is not None, "budget": list(r.budget or []),
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

        def active(row: Any) -> Principal | None:
            if row.revoked_at is None and hmac.compare_digest(row.key_hash, digest):
                return Principal.from_row(row)
            return None

        return self._cached(digest, server_api_keys.c.key_hash == digest, active)

    def by_id(self, key_id: str) -> Principal | None:
        """The key with this id (revoked or not: its queued jobs still count against its
        budget); None for the local principal and unknown ids."""
        return self._cached("id:" + key_id, server_api_keys.c.id == key_id, Principal.from_row)

    def _cached(
        self, cache_key: str, where: Any, principal: Callable[[Any], Principal | None]
    ) -> Principal | None:
        """The principal of the key row ``where`` selects, remembered for CACHE_S seconds."""
        hit = self._cache.get(cache_key)
        if hit and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(server_api_keys).where(where)).first()
        found = principal(row) if row is not None else None
        self._cache[cache_key] = (time.monotonic(), found)
        return found

    # -- spending ------------------------------------------------------------------------------
    @property
    def ledger(self) -> BudgetLedger:
        if self._ledger is None:
            self._ledger = BudgetLedger(self.store.engine)
        return self._ledger

    def charge(self, principal: Principal, client: Limner, request: ImageRequest) -> ImageRequest:
        """Attribute ``request`` to the key and make ``client`` enforce the key's budget.

        Tags naming a key are dropped from the client's own tags first: otherwise a caller
        could spend another key's budget."""
        tags = [tag for tag in request.tags if not tag.startswith(KEY_TAG)]
        if principal.id == LOCAL and len(tags) == len(request.tags):
            return request  # no keys configured: nothing to attribute or enforce
        if principal.id != LOCAL:
            tags.append(key_tag(principal.id))
            charged = any(
                isinstance(g, KeyBudgetGuard) and g.principal.id == principal.id
                for g in client.guards
            )
            if principal.budget and not charged:
                client.guards = [*client.guards, KeyBudgetGuard(self.ledger, principal, client)]
        return request.model_copy(update={"tags": tags})

    def check_headroom(self, principal: Principal, amount: float, what: str) -> None:
        """Refuse (402) work that a key's budget cannot cover now, before it is queued; the
        reservation itself still happens when the work runs."""
        if principal.budget and amount > 0:
            refusal = key_budget_refusal(self.ledger, principal, amount, what)
            if refusal is not None:
                raise refusal

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


def _stored_budget(budget: dict[str, float] | None) -> list[dict[str, Any]] | None:
    if not budget:
        return None
    unknown = set(budget) - {"daily", "monthly"}
    if unknown:
        raise errors.InvalidRequestError(
            f"Unknown budget period(s): {', '.join(sorted(unknown))}.",
            param="budget",
            hint="Periods: daily, monthly.",
        )
    return [{"scope": scope, "limit_usd": float(limit)} for scope, limit in sorted(budget.items())]


class KeyBudgetGuard(LedgerGuard):
    """The ``Guard`` for one key's caps: reserves through :class:`limner.budget.BudgetLedger`
    (the reservation ``limner budget`` uses) and names the key and what is left on refusal."""

    def __init__(self, ledger: BudgetLedger, principal: Principal, client: Limner) -> None:
        self._ledger, self.principal, self.client = ledger, principal, client

    @property
    def ledger(self) -> BudgetLedger:
        return self._ledger

    def before_send(self, plan: Plan) -> str:
        amount = reservation_amount(plan, self.client.config, "the key's budget")
        caps = list(self.principal.budget)
        try:
            return self.ledger.reserve(
                caps, amount, model=plan.spec.ref, tags=[key_tag(self.principal.id)]
            )
        except errors.BudgetExceededError:
            # The ledger refused inside its lock; name the cap that is short (a concurrent
            # settle may have freed room since, hence the generic refusal as a fallback).
            refusal = key_budget_refusal(self.ledger, self.principal, amount)
            raise (
                refusal
                or errors.BudgetExceededError(
                    f"API key {self.principal.name!r} (id {self.principal.id}) has no room left in"
                    f" its budget for ${amount:.4f}."
                )
            ) from None


def key_budget_refusal(
    ledger: BudgetLedger, key: Principal, amount: float, what: str = "this request"
) -> errors.BudgetExceededError | None:
    """The refusal for spending ``amount`` more on ``key``, naming the cap that is short and
    what is left of it; None when every cap of the key has room."""
    caps = list(key.budget)
    statuses = ledger.status(caps)
    short = [s for s in statuses if s.remaining_usd < amount]
    if not short:
        return None
    worst = min(short, key=lambda s: s.remaining_usd)
    period = "today" if worst.cap.scope == "daily" else "this month"
    unit = "day" if worst.cap.scope == "daily" else "month"
    return errors.BudgetExceededError(
        f"API key {key.name!r} (id {key.id}) has ${worst.remaining_usd:.4f} left of its"
        f" {worst.cap.scope} budget of ${worst.cap.limit_usd:.2f} {period}; {what} would cost"
        f" ${amount:.4f}.",
        hint=f"The operator raises it with `limner server-keys budget {key.id} --budget"
        f" USD/{unit}`; otherwise use a cheaper model or fewer images, or wait for the next"
        f" {unit}.",
    )


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
