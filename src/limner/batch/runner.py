"""Running a batch: items planned and recorded in the store, sent under per-provider concurrency
and rate limits, each outcome (done or failed, with its reason) reported and never dropped.

An item whose asynchronous provider job a crash left behind (its ``provider_handle`` recorded
through ``flows.on_submitted``) is resumed with ``Limner.run(..., resume_handle=...)``: polled
and fetched again, logged like any generation, never submitted twice.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from limner import errors
from limner.batch.inputs import BatchLine
from limner.batch.ratelimit import RateLimitedTransport, RateLimiter
from limner.batch.state import (
    BatchStore,
    ItemBinding,
    ItemRow,
    batch_lock,
    bound_item,
    new_run_id,
)
from limner.client import Limner
from limner.config import limner_home
from limner.flows import HandleRecorder, on_submitted
from limner.http import DEFAULT_TIMEOUT
from limner.types import ImageRequest, Operation, Result

__all__ = ["BatchOptions", "BatchRunner", "BatchSummary", "ItemOutcome", "batch_id_for"]

ItemCallback = Callable[["ItemOutcome"], None]


@dataclass
class BatchOptions:
    concurrency: int = 4
    rpm: float | None = None
    burst: int = 1
    uncertain: str = "resubmit"  # resubmit | park
    retry_uncertain: bool = False
    use_cache: bool = True


@dataclass
class ItemOutcome:
    item_key: str
    status: str  # done | failed | skipped
    cost_usd: float | None = None
    error: str | None = None
    generation_id: str | None = None
    resumed: bool = False  # followed a job a crashed run had submitted


class _ResumeFellBack(Exception):
    """A recorded job could not be followed and ``--uncertain park`` holds the item."""


@dataclass
class BatchSummary:
    batch_id: str
    name: str
    total: int
    done: int
    failed: int
    uncertain: int
    pending: int
    skipped_done: int
    sent: int
    cost_usd: float
    wall_s: float
    recovered: dict[str, int]
    rate_limited: int
    problems: list[dict[str, Any]] = field(default_factory=list)
    malformed: int = 0
    resumed: int = 0  # items done by following a job a crashed run had submitted

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def batch_id_for(kind: str, name: str, source: str | None = None) -> str:
    """A stable id: the same file (or experiment) resumes the same batch."""
    digest = hashlib.sha256(f"{kind}|{name}|{source or ''}".encode()).hexdigest()[:16]
    return f"{kind}-{digest}"


class BatchRunner:
    """Owns the client a batch runs on: a ``BatchStore`` and a rate-limited HTTP client."""

    def __init__(
        self,
        options: BatchOptions | None = None,
        *,
        home: Path | None = None,
        client_kwargs: dict[str, Any] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.options = options or BatchOptions()
        self.limiter = limiter or RateLimiter()
        self.home = home or limner_home()
        self.store = BatchStore(self.home)
        transport = RateLimitedTransport(self.limiter, on_send=self.store.mark_sent)
        http = httpx.Client(timeout=DEFAULT_TIMEOUT, transport=transport)
        self.client = Limner(
            home=self.home, store=self.store, http_client=http, **(client_kwargs or {})
        )
        self._http = http
        self._limited: set[str] = set()
        self._semaphores: dict[str, threading.Semaphore] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()
        self._http.close()

    def __enter__(self) -> BatchRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- planning ------------------------------------------------------------------------------
    def plan_items(
        self, lines: list[BatchLine], op: Operation = Operation.GENERATE
    ) -> list[ItemRow]:
        """Check each request; one the core refuses becomes a failed item with the reason."""
        rows: list[ItemRow] = []
        seen: dict[str, int] = {}
        for idx, line in enumerate(lines):
            try:
                plan = self.client.plan(op, line.request)
                key_hash, status, err = plan.cache_key or "", "pending", None
                provider = plan.spec.provider
                self._limit_provider(provider)
            except errors.UserError as exc:
                raw = line.request.model_dump_json(exclude={"images", "mask", "references"})
                key_hash, status, err = hashlib.sha256(raw.encode()).hexdigest(), "failed", exc
            occurrence = seen.get(key_hash, 0)
            seen[key_hash] = occurrence + 1
            rows.append(
                ItemRow(
                    item_key=f"{key_hash}#{occurrence}", idx=idx, line=line.line,
                    request_hash=key_hash, operation=op.value,
                    request=line.request.model_dump(mode="json", exclude={"images", "mask", "references"}, exclude_defaults=True),
                    labels=line.labels or None, status=status,
                    error_type=type(err).__name__ if err else None, error_message=str(err) if err else None,
                )
            )  # fmt: skip
        return rows

    def _limit_provider(self, name: str) -> None:
        if name in self._limited:
            return
        provider = self.client.provider(name)
        if provider.base_url:
            self.limiter.add(name, provider.base_url, self.options.rpm, self.options.burst)
        self._semaphores[name] = threading.Semaphore(max(self.options.concurrency, 1))
        self._limited.add(name)

    # -- running -------------------------------------------------------------------------------
    def run(
        self,
        batch_id: str,
        rows: list[ItemRow],
        *,
        kind: str = "batch",
        name: str = "",
        source: str | None = None,
        on_start: Callable[[int, int], None] | None = None,
        on_item: ItemCallback | None = None,
        executor: Callable[..., list[ItemOutcome]] | None = None,
    ) -> BatchSummary:
        """Run every item not done yet; return the summary. ``executor`` replaces the thread pool
        (the Ray backend), taking ``(runner, batch_id, run_id, rows, on_item)``."""
        started = time.perf_counter()
        with batch_lock(self.home, batch_id):
            self.store.open_batch(
                batch_id,
                kind=kind,
                name=name or batch_id,
                source=source,
                options=self._options_json(),
            )
            self.store.add_items(batch_id, rows)
            recovered = self.store.recover(batch_id, park=self.options.uncertain == "park")
            if self.options.retry_uncertain:
                recovered["requeued"] = self.store.requeue_uncertain(batch_id)
            keys = [r.item_key for r in rows]
            current = self.store.items(batch_id, keys)
            runnable = {r.item_key for r in rows if r.status == "pending"}
            todo = [
                r for r in current if r.status in ("pending", "failed") and r.item_key in runnable
            ]
            already = sum(1 for r in current if r.status == "done")
            if on_start:
                on_start(len(current), already)
            run_id = new_run_id()
            runner = executor or _thread_executor
            outcomes = runner(self, batch_id, run_id, todo, on_item)
            final = self.store.items(batch_id, keys)
        return self._summary(
            batch_id, name or batch_id, final, already, outcomes, recovered, started
        )

    def _options_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.__dict__.items()}

    def provider_of(self, row: ItemRow) -> str:
        try:
            return self.client.resolve(row.request.get("model")).provider
        except errors.LimnerError:
            return ""

    def run_item(self, batch_id: str, run_id: str, row: ItemRow) -> ItemOutcome:
        """Claim, send and settle one item (in a worker thread or a Ray task)."""
        request = ImageRequest(**row.request)
        provider = self.client.resolve(request.model).provider
        self._limit_provider(provider)
        with self._semaphores[provider]:
            if not self.store.claim(batch_id, row.item_key, run_id):
                return ItemOutcome(row.item_key, "skipped")
            binding = ItemBinding(batch_id, row.item_key, run_id)
            try:
                with bound_item(binding):
                    result, resumed = self._generate(row, request, binding)
            except _ResumeFellBack as exc:
                self.store.mark_uncertain(binding, str(exc))
                return ItemOutcome(row.item_key, "uncertain", error=str(exc))
            except errors.LimnerError as exc:
                self.store.mark_failed(binding, exc)
                return ItemOutcome(row.item_key, "failed", error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # an unexpected bug must still leave the item reported
                wrapped = errors.LimnerError(f"unexpected {type(exc).__name__}: {exc}")
                self.store.mark_failed(binding, wrapped)
                return ItemOutcome(row.item_key, "failed", error=str(wrapped))
        return ItemOutcome(
            row.item_key, "done", cost_usd=result.cost_usd, generation_id=result.generation_id,
            resumed=resumed,
        )  # fmt: skip

    def _generate(
        self, row: ItemRow, request: ImageRequest, binding: ItemBinding
    ) -> tuple[Result, bool]:
        """Resume the item's recorded provider job, or send the request and record the job the
        provider names; True when resumed."""
        op = Operation(row.operation)
        if row.provider_handle:
            try:
                return self.client.run(op, request, resume_handle=row.provider_handle), True
            except errors.ResumeUnsupportedError as exc:
                # The recorded job cannot be followed: the rules for a sent request apply.
                self.store.record_handle(binding, None)
                if self.options.uncertain == "park":
                    raise _ResumeFellBack(
                        f"a crash left this item's job unfinished and it cannot be resumed ({exc});"
                        " it may have been charged"
                    ) from exc
        recorder = HandleRecorder(lambda handle: self.store.record_handle(binding, handle))
        with on_submitted(recorder):
            return self.client.run(op, request, use_cache=self.options.use_cache), False

    def _summary(
        self,
        batch_id: str,
        name: str,
        final: list[ItemRow],
        already: int,
        outcomes: list[ItemOutcome],
        recovered: dict[str, int],
        started: float,
    ) -> BatchSummary:
        counts = {
            s: sum(1 for r in final if r.status == s)
            for s in ("done", "failed", "uncertain", "pending", "running")
        }
        problems = [
            {"line": r.line, "item": r.item_key, "prompt": r.request.get("prompt", ""), "status": r.status, "error": f"{r.error_type}: {r.error_message}" if r.error_type else r.error_message}
            for r in final if r.status != "done"
        ]  # fmt: skip
        return BatchSummary(
            batch_id=batch_id, name=name, total=len(final), done=counts["done"], failed=counts["failed"],
            uncertain=counts["uncertain"], pending=counts["pending"] + counts["running"], skipped_done=already,
            sent=sum(1 for o in outcomes if o.status != "skipped"),
            cost_usd=round(sum(r.cost_usd or 0.0 for r in final if r.status == "done"), 6),
            wall_s=round(time.perf_counter() - started, 3), recovered=recovered,
            rate_limited=self.limiter.count("429"), problems=problems,
            resumed=sum(1 for o in outcomes if o.resumed),
        )  # fmt: skip


def _thread_executor(
    runner: BatchRunner,
    batch_id: str,
    run_id: str,
    rows: list[ItemRow],
    on_item: ItemCallback | None,
) -> list[ItemOutcome]:
    """A pool per provider, so a slow or throttled provider never holds up the others."""
    by_provider: dict[str, list[ItemRow]] = {}
    for row in rows:
        by_provider.setdefault(runner.provider_of(row), []).append(row)
    outcomes: list[ItemOutcome] = []
    pools = [
        ThreadPoolExecutor(
            max_workers=max(1, min(len(items), runner.options.concurrency)),
            thread_name_prefix=f"limner-batch-{provider}",
        )
        for provider, items in by_provider.items()
    ]
    futures = [
        pool.submit(runner.run_item, batch_id, run_id, row)
        for pool, items in zip(pools, by_provider.values(), strict=True)
        for row in items
    ]
    try:
        for future in as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            if on_item:
                on_item(outcome)
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
    return outcomes
