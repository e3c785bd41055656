"""Spending caps, enforced before a request is sent.

Daily and monthly caps come from ``LIMNER_BUDGET_DAILY_USD`` / ``LIMNER_BUDGET_MONTHLY_USD`` or
the ``budget`` table of ``config.json`` (``{"daily_usd": 5, "monthly_usd": 50, "tags":
{"client-a": {"monthly_usd": 20}}}``); a tag's caps apply to requests carrying that tag.

Before a request is sent its estimated cost is *reserved* in the store, in one transaction that
sums what was spent (the log) and what is reserved, checks every cap and inserts the
reservation. On SQLite that transaction is ``BEGIN IMMEDIATE``, so concurrent processes sharing
one store take turns; on PostgreSQL an advisory lock does the same. After the call the
reservation is settled (the log now holds the actual cost) or released (the call failed).

A request billed by tokens or megapixels reserves its estimate plus a margin (``metered_margin``
in the budget table, 25% by default), since its actual cost is known only afterwards.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from limner.config import UserConfig
from limner.errors import BudgetExceededError, UserError
from limner.store import db, new_id
from limner.store.budget_schema import budget_reservations

if TYPE_CHECKING:
    from limner.client import Limner, Plan

__all__ = ["BudgetGuard", "BudgetLedger", "Cap", "load_caps", "parse_amount", "window_start"]

ENV = {"daily": "LIMNER_BUDGET_DAILY_USD", "monthly": "LIMNER_BUDGET_MONTHLY_USD"}
DEFAULT_TTL_S = 3600.0
METERED = ("per_token", "per_megapixel")
DEFAULT_MARGIN = 0.25
PG_LOCK_KEY = 0x6C696D6E  # "limn"


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def parse_amount(value: Any, what: str = "budget") -> float:
    """A positive number of US dollars, or ``UserError``."""
    try:
        amount = float(str(value).strip().lstrip("$"))
    except ValueError:
        amount = float("nan")
    if not amount > 0 or amount == float("inf"):
        raise UserError(
            f"The {what} must be a positive number of US dollars; got {value!r}.",
            hint="For example 5 or 12.50.",
        )
    return amount


@dataclass(frozen=True)
class Cap:
    scope: str  # daily | monthly
    limit_usd: float
    tag: str | None = None

    @property
    def label(self) -> str:
        return f"{self.scope} budget" + (f" for tag {self.tag!r}" if self.tag else "")

    def applies(self, tags: list[str]) -> bool:
        return self.tag is None or self.tag in tags


def window_start(scope: str, now: float | None = None) -> float:
    """The start of the current local day or month, as a timestamp."""
    moment = datetime.fromtimestamp(now if now is not None else time.time())
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if scope == "monthly":
        start = start.replace(day=1)
    return start.timestamp()


def load_caps(config: UserConfig) -> list[Cap]:
    """The configured caps; the environment overrides the config file for the global ones."""
    section = config.get("budget") or {}
    caps: list[Cap] = []
    for scope, env in ENV.items():
        raw = os.environ.get(env) or section.get(f"{scope}_usd")
        if raw not in (None, ""):
            caps.append(Cap(scope, parse_amount(raw, f"{scope} budget ({env} or config)")))
    for tag, limits in (section.get("tags") or {}).items():
        for scope in ENV:
            if (limits or {}).get(f"{scope}_usd") is not None:
                caps.append(
                    Cap(
                        scope,
                        parse_amount(limits[f"{scope}_usd"], f"{scope} budget for tag {tag!r}"),
                        tag,
                    )
                )
    return caps


@dataclass
class CapStatus:
    cap: Cap
    spent_usd: float
    reserved_usd: float

    @property
    def remaining_usd(self) -> float:
        return max(self.cap.limit_usd - self.spent_usd - self.reserved_usd, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.cap.scope, "tag": self.cap.tag, "limit_usd": self.cap.limit_usd,
            "spent_usd": round(self.spent_usd, 6), "reserved_usd": round(self.reserved_usd, 6),
            "remaining_usd": round(self.remaining_usd, 6),
        }  # fmt: skip


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _process_lock(engine: Engine) -> threading.Lock:
    key = str(engine.url)
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


@contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """An exclusive ``flock`` on ``<database>.budget-lock`` where the platform has one."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    try:
        import fcntl
    except ImportError:  # Windows: BEGIN IMMEDIATE and the busy timeout alone
        fcntl = None  # type: ignore[assignment]
    if not database or database == ":memory:" or fcntl is None:
        yield
        return
    fd = os.open(f"{database}.budget-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class BudgetLedger:
    """Reservations against the caps, in the store's database."""

    def __init__(self, engine: Engine, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.engine = engine
        self.ttl_s = ttl_s

    @contextmanager
    def _exclusive(self) -> Iterator[Connection]:
        """A write transaction that no other thread or process can interleave with."""
        with _process_lock(self.engine), self._write_transaction() as conn:
            yield conn

    @contextmanager
    def _write_transaction(self) -> Iterator[Connection]:
        # Waiters queue on a thread lock and a file lock, which wake them the moment the lock is
        # free, rather than in SQLite's busy handler, whose sleeps grow to 100 ms and leave the
        # database idle. BEGIN IMMEDIATE is what makes the transaction safe on its own.
        with _file_lock(self.engine), self.engine.connect() as conn:
            if self.engine.dialect.name != "sqlite":
                with conn.begin():
                    if self.engine.dialect.name == "postgresql":
                        conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY}
                        )
                    yield conn
                return
            # pysqlite opens transactions lazily and as DEFERRED; take the write lock up front
            # so that the sum we read cannot change before our insert commits.
            raw: Any = conn.connection.driver_connection
            previous = raw.isolation_level
            raw.isolation_level = None
            # A reservation lost to a power cut died with its process, so it need not wait for
            # an fsync; the log rows that hold real spend keep the store's FULL setting.
            conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.exec_driver_sql("ROLLBACK")
                    raise
                conn.exec_driver_sql("COMMIT")
            finally:
                conn.exec_driver_sql("PRAGMA synchronous=FULL")
                raw.isolation_level = previous

    def _amounts(self, conn: Connection, cap: Cap, now: float) -> tuple[float, float]:
        start = window_start(cap.scope, now)
        gen, res = db.generations, budget_reservations
        spent_q = sa.select(sa.func.coalesce(sa.func.sum(gen.c.cost_usd), 0.0)).where(
            gen.c.created_at >= start, gen.c.cost_usd.is_not(None)
        )
        held_q = sa.select(sa.func.coalesce(sa.func.sum(res.c.estimated_usd), 0.0)).where(
            res.c.status == "held", res.c.created_at >= start, res.c.expires_at > now
        )
        if cap.tag is not None:
            pattern = f"%{_like_escape(json.dumps(cap.tag))}%"  # tags are stored as a JSON list
            spent_q = spent_q.where(sa.cast(gen.c.tags, sa.String).like(pattern, escape="\\"))
            held_q = held_q.where(sa.cast(res.c.tags, sa.String).like(pattern, escape="\\"))
        # One round trip for both sums: this runs while other requests wait for the lock.
        spent, held = conn.execute(
            sa.select(spent_q.scalar_subquery(), held_q.scalar_subquery())
        ).one()
        return float(spent or 0.0), float(held or 0.0)

    def status(self, caps: list[Cap], now: float | None = None) -> list[CapStatus]:
        now = now if now is not None else time.time()
        with self.engine.connect() as conn:
            return [CapStatus(cap, *self._amounts(conn, cap, now)) for cap in caps]

    def reserve(self, caps: list[Cap], amount: float, *, model: str, tags: list[str]) -> str:
        """Reserve ``amount`` against every cap that applies, or raise ``BudgetExceededError``."""
        applicable = [cap for cap in caps if cap.applies(tags)]
        now = time.time()
        # A refusal needs no write lock: a snapshot already over a cap refuses at once. Checked
        # before queueing and again once the threads ahead of this one have committed, it keeps
        # a crowd of refused requests from queueing for the database behind the admitted ones.
        with self.engine.connect() as conn:
            self._check(conn, applicable, amount, now)
        reservation = new_id()
        with _process_lock(self.engine):
            with self.engine.connect() as conn:
                self._check(conn, applicable, amount, time.time())
            with self._write_transaction() as conn:
                now = time.time()
                self._check(conn, applicable, amount, now)
                conn.execute(
                    budget_reservations.insert().values(
                        id=reservation,
                        created_at=now,
                        expires_at=now + self.ttl_s,
                        status="held",
                        model=model,
                        estimated_usd=amount,
                        tags=tags or None,
                    )
                )
        return reservation

    def _check(self, conn: Connection, caps: list[Cap], amount: float, now: float) -> None:
        for cap in caps:
            spent, held = self._amounts(conn, cap, now)
            if spent + held + amount > cap.limit_usd + 1e-9:
                raise _exceeded(cap, spent, held, amount)

    def _close(self, reservation: str, status: str, actual: float | None) -> None:
        with self._exclusive() as conn:
            conn.execute(
                budget_reservations.update()
                .where(
                    budget_reservations.c.id == reservation, budget_reservations.c.status == "held"
                )
                .values(status=status, actual_usd=actual, settled_at=time.time())
            )

    def settle(self, reservation: str, actual: float | None) -> None:
        """The request is logged with its actual cost; the reservation no longer counts."""
        self._close(reservation, "settled", actual)

    def release(self, reservation: str) -> None:
        """The request failed: nothing was spent."""
        self._close(reservation, "released", None)


def _exceeded(cap: Cap, spent: float, held: float, amount: float) -> BudgetExceededError:
    period = "today" if cap.scope == "daily" else "this month"
    return BudgetExceededError(
        f"The {cap.label} of ${cap.limit_usd:.2f} would be exceeded: ${spent:.4f} spent and"
        f" ${held:.4f} reserved {period}, and this request would cost ${amount:.4f}.",
        hint="Raise the cap with `limner budget set"
        + (f" --tag {cap.tag}" if cap.tag else "")
        + f" --{cap.scope} USD`, use a cheaper model or fewer images, or wait for the next "
        + ("day." if cap.scope == "daily" else "month."),
    )


def reservation_amount(plan: Plan, config: UserConfig, what: str) -> float:
    """What to reserve against ``what`` for ``plan``: its estimate, with a margin for metered
    prices; 0 (and a warning on the plan) when the catalog has no price."""
    amount = plan.estimated_cost
    if amount is None:
        plan.warnings.append(
            f"The catalog has no price for {plan.spec.ref}: this request was not counted against"
            f" {what}."
        )
        return 0.0
    if plan.spec.price is not None and plan.spec.price.kind in METERED:
        # Token- and megapixel-billed calls can cost more than their list-price estimate;
        # reserving a margin keeps the last admitted request from overshooting the cap.
        margin = (config.get("budget") or {}).get("metered_margin", DEFAULT_MARGIN)
        return round(amount * (1 + float(margin)), 6)
    return amount


class LedgerGuard:
    """A ``Guard`` whose reservations live in a :class:`BudgetLedger`: settles them with the
    actual cost, or releases them when nothing was spent."""

    @property
    def ledger(self) -> BudgetLedger:
        raise NotImplementedError

    def settle(self, plan: Plan, token: Any, cost: float | None) -> None:
        if token:
            self.ledger.settle(token, cost)

    def release(self, plan: Plan, token: Any) -> None:
        if token:
            self.ledger.release(token)


class BudgetGuard(LedgerGuard):
    """The ``Guard`` that enforces the configured caps for one client."""

    def __init__(self, client: Limner) -> None:
        self.client = client
        self._ledger: BudgetLedger | None = None

    @property
    def ledger(self) -> BudgetLedger:
        if self._ledger is None:
            ttl = (self.client.config.get("budget") or {}).get("reservation_ttl_s", DEFAULT_TTL_S)
            self._ledger = BudgetLedger(self.client.store.engine, ttl_s=float(ttl))
        return self._ledger

    def before_send(self, plan: Plan) -> str | None:
        caps = [c for c in load_caps(self.client.config) if c.applies(plan.request.tags)]
        if not caps:
            return None
        amount = reservation_amount(plan, self.client.config, "the budget")
        return self.ledger.reserve(caps, amount, model=plan.spec.ref, tags=plan.request.tags)
