"""The durable state of a batch: its rows in the store, claims, and crash recovery.

The protocol that makes a batch crash-safe:

1. ``claim`` marks an item ``running`` (with this run's id) before its request is sent, and
   ``mark_sent`` stamps ``sent_at`` as its first request leaves; the claim is conditional on the
   item being claimable, so one item is sent by one runner.
2. ``BatchStore.record`` inserts the generation and marks its item ``done`` in one transaction,
   so "has a logged generation" and "is done" can never disagree.
3. An asynchronous provider names the job it accepted (``flows.Submitted``); the name is written
   to the item (``provider_handle``) the moment the provider answers the submit.
4. On the next run, an item left ``running`` by a dead run is first matched against the log (a
   generation with the same request hash logged after the claim is adopted); one whose job the
   provider named is *resumed* (polled and fetched from its handle, never submitted again); one
   never sent is simply sent; one that was sent is sent again (or parked as ``uncertain`` under
   ``--uncertain park``).

The one window left is a crash after the provider received the request and before its answer
(a synchronous provider's whole generation; an asynchronous one's submit round trip) or the
handle's write. Providers without idempotency keys or a way to look a request up cannot close
it: that item is generated again.
"""

from __future__ import annotations

import contextvars
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from limner import errors
from limner.store import LogEntry, Store, db, new_id
from limner.store.batch_schema import batch_items, batches

__all__ = ["BatchStore", "ItemBinding", "ItemRow", "batch_lock", "bound_item"]

CLAIMABLE = ("pending", "failed")
# A failure that may leave the provider's job running: the item keeps its handle, so the next
# run follows that job instead of paying for a new one.
JOB_MAY_LIVE = (
    errors.ProviderTimeoutError, errors.ProviderUnavailableError, errors.RateLimitError
)  # fmt: skip


@dataclass
class ItemBinding:
    batch_id: str
    item_key: str
    run_id: str
    sent: bool = False


def _claimed_by(binding: ItemBinding) -> tuple[Any, ...]:
    """The item row this run claimed: updates through a stale claim touch nothing."""
    return (
        batch_items.c.batch_id == binding.batch_id,
        batch_items.c.item_key == binding.item_key,
        batch_items.c.run_id == binding.run_id,
    )


_current_item: contextvars.ContextVar[ItemBinding | None] = contextvars.ContextVar(
    "limner_batch_item", default=None
)


@contextmanager
def bound_item(binding: ItemBinding) -> Iterator[None]:
    """While inside, a successful generation recorded by this thread marks the item done."""
    token = _current_item.set(binding)
    try:
        yield
    finally:
        _current_item.reset(token)


@dataclass
class ItemRow:
    item_key: str
    idx: int
    line: int | None
    request_hash: str
    operation: str
    request: dict[str, Any]
    labels: dict[str, Any] | None
    status: str
    attempts: int = 0
    generation_id: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    cost_usd: float | None = None
    provider_handle: str | None = None


class BatchStore(Store):
    """The store, plus batch bookkeeping that shares its transactions."""

    def record(self, entry: LogEntry) -> str:
        binding = _current_item.get()
        if binding is None or entry.status != "ok":
            return super().record(entry)
        with self.engine.begin() as conn:
            self.insert_entry(conn, entry)
            conn.execute(
                batch_items.update()
                .where(*_claimed_by(binding), batch_items.c.status == "running")
                .values(
                    status="done", generation_id=entry.id, cost_usd=entry.cost_usd,
                    error_type=None, error_message=None, updated_at=time.time(),
                )
            )  # fmt: skip
        return entry.id

    # -- batches -------------------------------------------------------------------------------
    def open_batch(
        self, batch_id: str, *, kind: str, name: str, source: str | None, options: dict[str, Any]
    ) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            exists = conn.scalar(sa.select(batches.c.id).where(batches.c.id == batch_id))
            if exists:
                conn.execute(
                    batches.update()
                    .where(batches.c.id == batch_id)
                    .values(updated_at=now, options=options)
                )
            else:
                conn.execute(
                    batches.insert().values(
                        id=batch_id,
                        kind=kind,
                        name=name,
                        source=source,
                        created_at=now,
                        updated_at=now,
                        options=options,
                    )
                )

    def add_items(self, batch_id: str, rows: list[ItemRow]) -> None:
        """Insert the items not yet known; known items keep their status (that is the resume)."""
        now = time.time()
        with self.engine.begin() as conn:
            query = sa.select(batch_items.c.item_key, batch_items.c.idx).where(
                batch_items.c.batch_id == batch_id
            )
            known = {key: idx for key, idx in conn.execute(query)}
            fresh = [
                {**row.__dict__, "batch_id": batch_id, "updated_at": now}
                for row in rows
                if row.item_key not in known
            ]
            if fresh:
                conn.execute(batch_items.insert(), fresh)
            # Known items keep their outcome; refresh where they sit in the file.
            moved = [
                {
                    "b_batch": batch_id,
                    "b_key": r.item_key,
                    "idx": r.idx,
                    "line": r.line,
                    "labels": r.labels,
                }
                for r in rows
                if r.item_key in known and known[r.item_key] != r.idx
            ]
            if moved:
                conn.execute(
                    batch_items.update()
                    .where(
                        batch_items.c.batch_id == sa.bindparam("b_batch"),
                        batch_items.c.item_key == sa.bindparam("b_key"),
                    )
                    .values(
                        idx=sa.bindparam("idx"),
                        line=sa.bindparam("line"),
                        labels=sa.bindparam("labels"),
                    ),
                    moved,
                )
            for row in rows:
                if row.item_key in known and row.status == "failed":
                    # A line that is invalid now is reported as such.
                    conn.execute(
                        batch_items.update()
                        .where(
                            batch_items.c.batch_id == batch_id,
                            batch_items.c.item_key == row.item_key,
                            batch_items.c.status != "done",
                        )
                        .values(
                            status="failed",
                            error_type=row.error_type,
                            error_message=row.error_message,
                        )
                    )

    def entries(self, generation_ids: list[str]) -> dict[str, LogEntry]:
        """Log entries by id, fetched in bulk (a manifest of thousands of items)."""
        found: dict[str, LogEntry] = {}
        table = db.generations
        with self.engine.connect() as conn:
            for start in range(0, len(generation_ids), 500):
                chunk = generation_ids[start : start + 500]
                rows = list(conn.execute(sa.select(table).where(table.c.id.in_(chunk))))
                found.update((e.id, e) for e in self._entries(conn, rows))
        return found

    def items(self, batch_id: str, keys: list[str] | None = None) -> list[ItemRow]:
        fields = [
            c
            for c in batch_items.columns
            if c.name not in ("batch_id", "run_id", "claimed_at", "sent_at", "updated_at")
        ]
        stmt = (
            sa.select(*fields).where(batch_items.c.batch_id == batch_id).order_by(batch_items.c.idx)
        )
        with self.engine.connect() as conn:
            rows = [ItemRow(**r._asdict()) for r in conn.execute(stmt)]
        if keys is not None:
            wanted = set(keys)
            rows = [r for r in rows if r.item_key in wanted]
        return rows

    def claim(self, batch_id: str, item_key: str, run_id: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                batch_items.update()
                .where(
                    batch_items.c.batch_id == batch_id,
                    batch_items.c.item_key == item_key,
                    batch_items.c.status.in_(CLAIMABLE),
                )
                .values(
                    status="running", run_id=run_id, claimed_at=time.time(), sent_at=None,
                    attempts=batch_items.c.attempts + 1, updated_at=time.time(),
                )
            )  # fmt: skip
            return bool(result.rowcount)

    def mark_sent(self) -> None:
        """Note that the bound item's first request is leaving: from now on a crash is uncertain."""
        binding = _current_item.get()
        if binding is None or binding.sent:
            return
        with self.engine.begin() as conn:
            conn.execute(
                batch_items.update()
                .where(*_claimed_by(binding), batch_items.c.sent_at.is_(None))
                .values(sent_at=time.time())
            )
        binding.sent = True

    def record_handle(self, binding: ItemBinding, handle: str | None) -> None:
        """Write the provider's name for the bound item's job (None: it cannot be resumed)."""
        with self.engine.begin() as conn:
            conn.execute(
                batch_items.update()
                .where(*_claimed_by(binding), batch_items.c.status == "running")
                .values(provider_handle=handle, updated_at=time.time())
            )

    def mark_failed(self, binding: ItemBinding, exc: errors.LimnerError) -> None:
        values: dict[str, Any] = {
            "status": "failed", "error_type": type(exc).__name__, "error_message": str(exc),
            "updated_at": time.time(),
        }  # fmt: skip
        if not isinstance(exc, JOB_MAY_LIVE):
            values["provider_handle"] = None  # a definite failure: the next run submits anew
        with self.engine.begin() as conn:
            conn.execute(
                batch_items.update()
                .where(*_claimed_by(binding), batch_items.c.status == "running")
                .values(**values)
            )

    def mark_uncertain(self, binding: ItemBinding, message: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                batch_items.update()
                .where(*_claimed_by(binding), batch_items.c.status == "running")
                .values(status="uncertain", error_message=message, updated_at=time.time())
            )

    def recover(self, batch_id: str, *, park: bool) -> dict[str, int]:
        """Settle items a dead run left ``running``: adopt a logged generation, resume a job the
        provider named, else send again or park."""
        counts = {"adopted": 0, "resumed": 0, "resent": 0, "parked": 0, "unsent": 0}
        gens = db.generations
        with self.engine.begin() as conn:
            open_items = conn.execute(
                sa.select(
                    batch_items.c.item_key,
                    batch_items.c.request_hash,
                    batch_items.c.claimed_at,
                    batch_items.c.sent_at,
                    batch_items.c.provider_handle,
                ).where(batch_items.c.batch_id == batch_id, batch_items.c.status == "running")
            ).all()
            used = set(
                conn.scalars(
                    sa.select(batch_items.c.generation_id).where(
                        batch_items.c.batch_id == batch_id, batch_items.c.generation_id.is_not(None)
                    )
                )
            )
            for item in open_items:
                candidates = conn.scalars(
                    sa.select(gens.c.id)
                    .where(
                        gens.c.request_hash == item.request_hash,
                        gens.c.status == "ok",
                        gens.c.created_at >= (item.claimed_at or 0),
                    )
                    .order_by(gens.c.created_at)
                ).all()
                found = next((g for g in candidates if g not in used), None)
                if found:
                    used.add(found)
                outcome, values = _settle_open_item(item, found, park)
                conn.execute(
                    batch_items.update()
                    .where(
                        batch_items.c.batch_id == batch_id,
                        batch_items.c.item_key == item.item_key,
                    )
                    .values(**values, updated_at=time.time())
                )
                counts[outcome] += 1
        return counts

    def requeue_uncertain(self, batch_id: str) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                batch_items.update()
                .where(batch_items.c.batch_id == batch_id, batch_items.c.status == "uncertain")
                .values(status="pending", error_message=None, updated_at=time.time())
            )
            return int(result.rowcount)

    def set_winner(self, generation_id: str) -> tuple[str, str]:
        """Record an A/B or grid winner: on the batch, and as a ``winner`` tag in the log."""
        entry = self.get(generation_id)
        if entry is None:
            raise errors.UserError(
                f"No generation {generation_id!r} in the log.", hint="See `limner logs`."
            )
        with self.engine.begin() as conn:
            batch_id = conn.scalar(
                sa.select(batch_items.c.batch_id)
                .join(batches, batches.c.id == batch_items.c.batch_id)
                .where(batch_items.c.generation_id == entry.id, batches.c.kind.in_(("ab", "grid")))
            )
            if batch_id is None:
                raise errors.UserError(
                    f"Generation {entry.id} is not part of an A/B test or grid.",
                    hint="Pass a generation id from the report of `limner ab` or `limner grid`.",
                )
            conn.execute(
                batches.update()
                .where(batches.c.id == batch_id)
                .values(winner_generation_id=entry.id, updated_at=time.time())
            )
            tags = [t for t in (entry.tags or []) if t != "winner"] + ["winner"]
            conn.execute(
                db.generations.update().where(db.generations.c.id == entry.id).values(tags=tags)
            )
            # Only one winner per experiment: clear the tag on the others.
            others = conn.scalars(
                sa.select(batch_items.c.generation_id).where(
                    batch_items.c.batch_id == batch_id,
                    batch_items.c.generation_id.is_not(None),
                    batch_items.c.generation_id != entry.id,
                )
            ).all()
            for other in others:
                row = conn.execute(
                    sa.select(db.generations.c.tags).where(db.generations.c.id == other)
                ).first()
                if row and row.tags and "winner" in row.tags:
                    conn.execute(
                        db.generations.update()
                        .where(db.generations.c.id == other)
                        .values(tags=[t for t in row.tags if t != "winner"])
                    )
        return batch_id, entry.id

    def batch_info(self, batch_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(batches).where(batches.c.id == batch_id)).first()
        return dict(row._asdict()) if row else None


def _settle_open_item(item: Any, found: str | None, park: bool) -> tuple[str, dict[str, Any]]:
    """What recovery makes of an item a dead run left ``running``: (count name, new values)."""
    if found:
        return "adopted", {"status": "done", "generation_id": found}
    if item.provider_handle:
        # The provider accepted the job and named it: the next run follows it, never resends.
        return "resumed", {"status": "pending"}
    if item.sent_at is None:
        # Claimed but never sent: nothing can have been generated; send it again.
        return "unsent", {"status": "pending"}
    if park:
        message = "a crash left this item's request unanswered; it may have been charged"
        return "parked", {"status": "uncertain", "error_message": message}
    return "resent", {"status": "pending"}


def new_run_id() -> str:
    return new_id()


@contextmanager
def batch_lock(home: Path, batch_id: str) -> Iterator[None]:
    """One runner per batch on this machine; the OS drops the lock when a runner dies."""
    lock_dir = home / "batches"
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{batch_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise errors.UserError(
                f"Batch {batch_id} is already running in another process.",
                hint="Wait for it to finish, or give this run another --name.",
            ) from None
        yield
    finally:
        os.close(fd)
