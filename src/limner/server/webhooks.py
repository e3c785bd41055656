"""Job webhooks: signed with HMAC-SHA256, stored, and retried with backoff across restarts.

When a job with a ``webhook_url`` ends, a delivery is written to the store
(``server_webhook_deliveries``: the exact body, the attempts made and when the next one is due).
A delivery loop in every server process that runs jobs sends the due ones; a process claims a
delivery with a lease before sending, so processes sharing one database never send it at once,
and one that stopped mid-way (a crash, a restart) leaves it to the next loop once the lease
expires. Deliveries are at least once: a crash between the receiver's 2xx and the record of it
sends that delivery again, with the same ``Limner-Delivery`` id for the receiver to drop.

Each delivery is a POST of the job (as ``GET /v1/jobs/{id}`` shows it when it ended) with the
headers ``Limner-Event`` (``job.succeeded``, ``job.failed``, ...), ``Limner-Delivery`` (the
delivery's id, the same on every attempt), ``Limner-Job`` (the job id) and
``Limner-Signature: t=<unix time>,v1=<hex>``, where ``v1`` is HMAC-SHA256 over
``"<t>.<body>"`` with the server's webhook secret. Receivers check the signature and refuse old
``t`` values. Webhook URLs pass the same SSRF checks as image URLs (loopback and private
addresses only when the operator allows them), again before every attempt; redirects are not
followed. The outcome ends up in the job's ``webhook_status``: ``delivered``,
``failed after N attempts`` or ``refused: <why>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import sqlalchemy as sa

from limner import errors
from limner.fetch import SafeFetcher
from limner.server.settings import ServerSettings
from limner.store import new_id
from limner.store.jobs_schema import server_jobs, webhook_deliveries

if TYPE_CHECKING:
    from limner.server.context import ServerContext

__all__ = ["WebhookOutbox", "check_webhook_url", "sign", "verify"]

log = logging.getLogger("limner.server.webhooks")
MAX_BACKOFF_S = 300.0
TIMEOUT_S = 15.0
# Longer than one attempt can take, so a live sender never loses its lease mid-request.
LEASE_S = TIMEOUT_S + 15.0
CLAIM_BATCH = 32
STOP_GRACE_S = 5.0
IDLE_WAIT_S = 1.0
SWEEP_EVERY_S = 30.0
# A job that ended this long ago without a delivery row lost it to a crash: write it then.
SWEEP_GRACE_S = 5.0
SWEEP_WINDOW_S = 24 * 3600.0
TERMINAL = ("succeeded", "failed", "cancelled", "uncertain")


def _fetcher(settings: ServerSettings) -> SafeFetcher:
    private = settings.webhook_allow_private
    return SafeFetcher(
        allow_loopback=private, allow_http=private,
        allowed_ports=None if private else frozenset({80, 443}), timeout=TIMEOUT_S,
    )  # fmt: skip


def check_webhook_url(settings: ServerSettings, url: str) -> None:
    """Refuse a webhook the server could not or must not call, before the job is queued."""
    if not settings.webhook_secret:
        raise errors.InvalidRequestError(
            "This server sends no webhooks.",
            param="webhook_url",
            hint="The operator sets LIMNER_SERVER_WEBHOOK_SECRET to enable them; poll the job or use its events instead.",
        )
    try:
        _fetcher(settings).check(url)
    except errors.LimnerError as exc:
        raise errors.InvalidRequestError(
            f"webhook_url: {exc.message}", param="webhook_url"
        ) from exc


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance_s: float = 300.0) -> bool:
    """Check a ``Limner-Signature`` header (for receivers, and the tests)."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - ts) > tolerance_s:
        return False
    expected = sign(secret, body, ts).split("v1=", 1)[1]
    # As bytes: compare_digest refuses a str with non-ASCII characters (TypeError).
    return hmac.compare_digest(expected.encode(), parts.get("v1", "").encode())


def backoff_s(settings: ServerSettings, attempts: int) -> float:
    """The wait after the ``attempts``-th failed attempt: doubling from the configured base."""
    return float(min(settings.webhook_backoff_s * 2 ** max(attempts - 1, 0), MAX_BACKOFF_S))


class WebhookOutbox:
    """The stored deliveries of one server process, and the loop that sends the due ones.

    ``render`` turns a job row into the body a receiver gets (``JobQueue.view``)."""

    def __init__(self, ctx: ServerContext, render: Callable[[dict[str, Any]], dict[str, Any]]):
        self.ctx, self.render = ctx, render
        self.owner = f"webhooks-{secrets.token_hex(6)}"
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def engine(self) -> sa.Engine:
        return self.ctx.store.engine

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None and self.ctx.settings.webhook_secret:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._sending:  # let the requests on the wire finish rather than send them again
            await asyncio.wait(self._sending, timeout=STOP_GRACE_S)
        tasks = [*self._sending, *([self._task] if self._task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        if self.ctx.settings.webhook_secret:
            # Hand back what this process held, so the next one need not wait for the lease.
            await asyncio.to_thread(self._release_leases)

    # -- writing -------------------------------------------------------------------------------
    def enqueue(self, job: dict[str, Any]) -> bool:
        """Store the delivery a job owes now that it ended; False when it already exists."""
        if not job.get("webhook_url") or job["status"] not in TERMINAL:
            return False
        now = time.time()
        body = json.dumps(self.render(job), separators=(",", ":")).encode()
        row = {
            "id": new_id(), "job_id": job["id"], "job_updated_at": job["updated_at"],
            "url": job["webhook_url"], "event": f"job.{job['status']}", "body": body,
            "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now,
        }  # fmt: skip
        try:
            with self.engine.begin() as conn:
                conn.execute(webhook_deliveries.insert().values(**row))
        except sa.exc.IntegrityError:
            return False  # this end of the job was enqueued already (by the sweep, say)
        return True

    async def notify(self, job_id: str) -> None:
        """Enqueue the webhook of a job that just ended, and wake the loop to send it."""
        job = await asyncio.to_thread(self._job, job_id)
        if job is not None and await asyncio.to_thread(self.enqueue, job):
            self.start()  # an API-only process sends what it enqueued, too
            self.wake.set()

    def _job(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(server_jobs).where(server_jobs.c.id == job_id)).first()
        return dict(row._mapping) if row else None

    def sweep(self) -> int:
        """Enqueue the deliveries of jobs that ended without one (the process stopped between
        the end of the job and the write of its delivery); return how many."""
        now, j, d = time.time(), server_jobs, webhook_deliveries
        recorded = sa.exists().where(d.c.job_id == j.c.id, d.c.job_updated_at == j.c.updated_at)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(j).where(
                    j.c.webhook_url.is_not(None), j.c.webhook_status.is_(None),
                    j.c.status.in_(TERMINAL), j.c.updated_at > now - SWEEP_WINDOW_S,
                    j.c.updated_at < now - SWEEP_GRACE_S, ~recorded,
                ).limit(500)
            ).all()  # fmt: skip
        return sum(self.enqueue(dict(row._mapping)) for row in rows)

    # -- sending -------------------------------------------------------------------------------
    async def _loop(self) -> None:
        from limner.server.context import current_submission

        current_submission.set(None)  # a webhook is never a provider submission
        last_sweep = 0.0
        while True:
            wait = IDLE_WAIT_S
            try:
                if time.monotonic() - last_sweep > SWEEP_EVERY_S:
                    await asyncio.to_thread(self.sweep)
                    last_sweep = time.monotonic()
                for row in await asyncio.to_thread(self._claim):
                    task = asyncio.create_task(self._attempt(row))
                    self._sending.add(task)
                    task.add_done_callback(self._sending.discard)
                wait = await asyncio.to_thread(self._next_due_in)
            except Exception:  # the loop must outlive a database hiccup
                log.exception("webhook delivery loop iteration failed")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=wait)

    def _claim(self) -> list[dict[str, Any]]:
        d, now = webhook_deliveries, time.time()
        free = sa.or_(d.c.lease_expires.is_(None), d.c.lease_expires < now)
        due = sa.and_(d.c.status == "pending", d.c.next_attempt_at <= now, free)
        with self.engine.connect() as conn:
            ids = conn.scalars(
                sa.select(d.c.id).where(due).order_by(d.c.next_attempt_at).limit(CLAIM_BATCH)
            ).all()
        claimed = []
        for delivery_id in ids:
            with self.engine.begin() as conn:
                got = conn.execute(
                    d.update()
                    .where(d.c.id == delivery_id, due)
                    .values(lease_owner=self.owner, lease_expires=now + LEASE_S)
                ).rowcount
                if got:
                    row = conn.execute(sa.select(d).where(d.c.id == delivery_id)).one()
                    claimed.append(dict(row._mapping))
        return claimed

    def _next_due_in(self) -> float:
        d = webhook_deliveries
        with self.engine.connect() as conn:
            due = conn.scalar(
                sa.select(sa.func.min(d.c.next_attempt_at)).where(d.c.status == "pending")
            )
        if due is None:
            return IDLE_WAIT_S
        return min(max(float(due) - time.time(), 0.02), IDLE_WAIT_S)

    async def _attempt(self, row: dict[str, Any]) -> None:
        settings, client = self.ctx.settings, self.ctx.http
        assert settings.webhook_secret and client is not None
        fetcher = _fetcher(settings)
        try:
            await asyncio.to_thread(fetcher.check, row["url"])  # re-resolved, re-checked each time
            target, headers, extensions = fetcher.pinned(row["url"], {
                "content-type": "application/json", "limner-event": row["event"],
                "limner-delivery": row["id"], "limner-job": row["job_id"],
                "limner-signature": sign(settings.webhook_secret, row["body"]),
            })  # fmt: skip
            response = await client.post(
                target, content=row["body"], headers=headers, extensions=extensions,
                timeout=TIMEOUT_S, follow_redirects=False,
            )  # fmt: skip
        except errors.LimnerError as exc:
            await asyncio.to_thread(self._finish, row, "failed", f"refused: {exc.message}"[:64])
            return
        except httpx.HTTPError as exc:
            await asyncio.to_thread(self._failed_attempt, row, type(exc).__name__)
            return
        if 200 <= response.status_code < 300:
            await asyncio.to_thread(self._finish, row, "delivered", "delivered")
        else:
            await asyncio.to_thread(self._failed_attempt, row, f"HTTP {response.status_code}")

    def _failed_attempt(self, row: dict[str, Any], reason: str) -> None:
        settings, attempts = self.ctx.settings, row["attempts"] + 1
        log.info("webhook %s for job %s: attempt %d failed (%s)", row["id"], row["job_id"],
                 attempts, reason)  # fmt: skip
        if attempts >= settings.webhook_attempts:
            self._finish(row, "failed", f"failed after {attempts} attempts", reason)
            return
        d = webhook_deliveries
        with self.engine.begin() as conn:
            conn.execute(
                d.update()
                .where(d.c.id == row["id"], d.c.lease_owner == self.owner)
                .values(
                    attempts=attempts, last_error=reason[:200], lease_owner=None,
                    lease_expires=None, next_attempt_at=time.time() + backoff_s(settings, attempts),
                )
            )  # fmt: skip
        self.wake.set()

    def _finish(
        self, row: dict[str, Any], status: str, outcome: str, reason: str | None = None
    ) -> None:
        d, now = webhook_deliveries, time.time()
        with self.engine.begin() as conn:
            done = conn.execute(
                d.update()
                .where(d.c.id == row["id"], d.c.lease_owner == self.owner)
                .values(
                    status=status, attempts=row["attempts"] + 1, lease_owner=None,
                    lease_expires=None,
                    last_error=None if status == "delivered" else (reason or outcome)[:200],
                    delivered_at=now if status == "delivered" else None,
                )
            ).rowcount  # fmt: skip
            if done:
                conn.execute(
                    server_jobs.update()
                    .where(server_jobs.c.id == row["job_id"])
                    .values(webhook_status=outcome)
                )

    def _release_leases(self) -> None:
        d = webhook_deliveries
        with self.engine.begin() as conn:
            conn.execute(
                d.update()
                .where(d.c.lease_owner == self.owner, d.c.status == "pending")
                .values(lease_owner=None, lease_expires=None)
            )
