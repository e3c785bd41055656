"""The durable job queue: submit, lease, run, reconcile after a crash, report progress.

Jobs live in the store (SQLite by default, PostgreSQL by ``LIMNER_DATABASE_URL`` so several
server processes share one queue). A worker claims a job with a lease it renews while running;
every write it makes is fenced by ``lease_owner``, so a worker that lost its lease cannot
overwrite the job's new owner. The provider submission is written *before* the request is sent
(``submit_state = submitting``) and its request id right after; an asynchronous provider's name
for the accepted job (``provider_handle``, from ``flows.on_submitted``) is written as soon as the
provider answers. A job found after a crash with a submission that may have reached the provider
is reconciled from the generation log; failing that, a job with a handle is queued again and
*resumed* (polled and fetched from its handle, not submitted again), and one without ends
``uncertain`` instead of being sent (and paid for) twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from limner import errors
from limner.flows import HandleRecorder, on_submitted
from limner.server.auth import Principal
from limner.server.context import ServerContext, current_submission
from limner.server.deps import context, needs
from limner.server.errors import ApiError
from limner.server.inputs import ASPECT_PATTERN, SIZE_PATTERN, image_from_value
from limner.server.webhooks import WebhookOutbox
from limner.store import db, new_id
from limner.store.jobs_schema import server_jobs
from limner.types import SEED_MAX, SEED_MIN, ImageInput, ImageRequest, Operation

__all__ = ["JobQueue", "router"]

log = logging.getLogger("limner.server.jobs")
router = APIRouter()
TERMINAL = {"succeeded", "failed", "cancelled", "uncertain"}
POLL_S, IDLE_POLL_S = 0.25, 2.0  # seconds between claims while busy, and at most when idle
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "cf-ray")


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operation: Literal[
        "generate", "edit", "inpaint", "variation", "upscale", "remove-background"
    ] = "generate"
    prompt: str = Field("", max_length=32000)
    model: str | None = None
    n: int = Field(1, ge=1, le=10)
    size: str | None = Field(None, pattern=SIZE_PATTERN)
    aspect_ratio: str | None = Field(None, pattern=ASPECT_PATTERN)
    quality: str | None = None
    style: str | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    negative_prompt: str | None = None
    steps: int | None = Field(None, ge=1, le=500)
    guidance: float | None = Field(None, ge=0, le=100)
    output_format: Literal["png", "jpeg", "webp"] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    strength: float | None = Field(None, ge=0, le=1)
    images: list[str] = Field(
        default_factory=list, max_length=16, description="URLs, data: URLs or base64"
    )
    mask: str | None = None
    tags: list[str] = Field(default_factory=list, max_length=32)
    project: str | None = None
    provider_options: dict[str, Any] = Field(default_factory=dict)
    webhook_url: str | None = Field(
        None, max_length=2000, description="Called (signed) when the job ends"
    )


class BatchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobSpec] = Field(min_length=1, max_length=1000)


class _LeaseLost(Exception):
    """This worker no longer holds the job's lease; another owner has it."""


def _worker_id() -> str:
    return f"{socket.gethostname()[:24]}-{os.getpid()}-{secrets.token_hex(3)}"


class _Observer:
    """Writes the submission record around each provider POST of one job."""

    def __init__(self, queue: JobQueue, job_id: str) -> None:
        self.queue, self.job_id = queue, job_id

    async def before_submit(self, request: httpx.Request) -> None:
        now = time.time()
        done = await asyncio.to_thread(
            self.queue.update, self.job_id,
            submit_state="submitting", submitted_at=now,
            submit_count=server_jobs.c.submit_count + 1,
        )  # fmt: skip
        if not done:
            raise _LeaseLost(self.job_id)

    async def after_submit(self, response: httpx.Response) -> None:
        request_id = next(
            (response.headers[h] for h in REQUEST_ID_HEADERS if h in response.headers), None
        )
        await asyncio.to_thread(
            self.queue.update, self.job_id, submit_state="submitted", provider_request_id=request_id
        )


class JobQueue:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.worker_id = _worker_id()
        self.running: dict[str, asyncio.Task[None]] = {}
        self.wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._notifications: set[asyncio.Task[None]] = set()
        self.webhooks = WebhookOutbox(ctx, self.view)

    @property
    def engine(self) -> sa.Engine:
        return self.ctx.store.engine

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.recover)
        self._loop_task = asyncio.create_task(self._loop())
        self.webhooks.start()

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(
            *self.running.values(),
            *([self._loop_task] if self._loop_task else []),
            return_exceptions=True,
        )
        await self.webhooks.stop()

    async def _loop(self) -> None:
        last_beat, wait = 0.0, POLL_S
        while True:
            try:
                now = time.monotonic()
                if now - last_beat > self.ctx.settings.lease_s / 3:
                    await asyncio.to_thread(self.heartbeat)
                    await asyncio.to_thread(self.recover)
                    last_beat = now
                claimed = await asyncio.to_thread(self.claim)
                for job in claimed:
                    self.running[job["id"]] = asyncio.create_task(self._run(job))
                # An idle queue is polled less and less often: a job submitted here wakes the
                # loop at once, and one submitted by another server sharing the store waits at
                # most IDLE_POLL_S.
                wait = POLL_S if claimed or self.running else min(wait * 2, IDLE_POLL_S)
            except Exception:  # the loop must outlive a database hiccup
                log.exception("job loop iteration failed")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=wait)

    # -- database ------------------------------------------------------------------------------
    def update(self, job_id: str, **values: Any) -> bool:
        """Update a job this worker holds; False when the lease was lost."""
        values.setdefault("updated_at", time.time())
        with self.engine.begin() as conn:
            result = conn.execute(
                server_jobs.update()
                .where(server_jobs.c.id == job_id, server_jobs.c.lease_owner == self.worker_id)
                .values(**values)
            )
        return bool(result.rowcount)

    def heartbeat(self) -> None:
        if not self.running:
            return
        with self.engine.begin() as conn:
            conn.execute(
                server_jobs.update()
                .where(
                    server_jobs.c.lease_owner == self.worker_id, server_jobs.c.status == "running"
                )
                .values(lease_expires=time.time() + self.ctx.settings.lease_s)
            )

    def claim(self) -> list[dict[str, Any]]:
        """Claim queued jobs up to the free worker slots: fair across API keys (fewest running
        first, then oldest), within each provider's concurrency limit."""
        free = self.ctx.settings.workers - len(self.running)
        if free <= 0:
            return []
        t = server_jobs
        with self.engine.connect() as conn:
            queued = conn.execute(
                sa.select(t.c.id, t.c.owner, t.c.provider)
                .where(t.c.status == "queued").order_by(t.c.created_at).limit(500)
            ).all()  # fmt: skip
            if not queued:
                return []
            active = conn.execute(
                sa.select(t.c.owner, t.c.provider).where(t.c.status == "running")
            ).all()
        per_owner = Counter(r.owner for r in active)
        per_provider = Counter(r.provider for r in active)
        picked: list[Any] = []
        pool = list(queued)
        while pool and len(picked) < free:
            pool.sort(key=lambda r: per_owner[r.owner])
            row = next(
                (
                    r
                    for r in pool
                    if per_provider[r.provider] < self.ctx.settings.provider_concurrency
                ),
                None,
            )
            if row is None:
                break
            pool.remove(row)
            per_owner[row.owner] += 1
            per_provider[row.provider] += 1
            picked.append(row)
        claimed = []
        for row in picked:
            with self.engine.begin() as conn:
                got = conn.execute(
                    t.update()
                    .where(t.c.id == row.id, t.c.status == "queued")
                    .values(
                        status="running", lease_owner=self.worker_id, attempts=t.c.attempts + 1,
                        lease_expires=time.time() + self.ctx.settings.lease_s, updated_at=time.time(),
                    )
                ).rowcount  # fmt: skip
                if got:
                    claimed.append(
                        dict(conn.execute(sa.select(t).where(t.c.id == row.id)).one()._mapping)
                    )
        return claimed

    def recover(self) -> None:
        """Take back jobs whose worker stopped renewing its lease (a crash, a kill -9)."""
        t, now = server_jobs, time.time()
        with self.engine.begin() as conn:
            stale = conn.execute(
                sa.select(t).where(t.c.status == "running", t.c.lease_expires < now)
            ).all()
        for job in stale:
            self._reconcile(job)

    def _reconcile(self, job: Any) -> None:
        t, now = server_jobs, time.time()
        fence = sa.and_(
            t.c.id == job.id, t.c.status == "running", t.c.lease_owner == job.lease_owner
        )
        with self.engine.begin() as conn:
            if job.submit_state == "none":
                # Nothing left this server for the provider: running it again costs nothing twice.
                conn.execute(
                    t.update()
                    .where(fence)
                    .values(status="queued", lease_owner=None, lease_expires=None, updated_at=now)
                )
                return
            generation = self._find_generation(conn, job)
            if generation is not None:
                conn.execute(t.update().where(fence).values(
                    status="succeeded", lease_owner=None, generation_id=generation, updated_at=now,
                    result=self._result_for(conn, generation),
                ))  # fmt: skip
                return
            if job.provider_handle:
                # The provider accepted the job and named it: a worker follows it from there
                # (the handle stays on the row), never submitting it again.
                conn.execute(
                    t.update()
                    .where(fence)
                    .values(status="queued", lease_owner=None, lease_expires=None, updated_at=now)
                )
                log.info("job %s will be resumed from its %s job", job.id, job.provider)
                return
            conn.execute(t.update().where(fence).values(
                status="uncertain", lease_owner=None, updated_at=now,
                error=_uncertain_error(job.provider, job.provider_request_id),
            ))  # fmt: skip

    def _find_generation(self, conn: sa.Connection, job: Any) -> str | None:
        """A result the engine logged for this submission before the crash, by request id."""
        if not job.provider_request_id:
            return None
        g = db.generations
        row = conn.execute(
            sa.select(g.c.id).where(
                g.c.status == "ok", g.c.provider_request_id.contains(job.provider_request_id)
            )
        ).first()
        return str(row.id) if row else None

    def _result_for(self, conn: sa.Connection, generation_id: str) -> dict[str, Any]:
        gi, a, g = db.generation_images, db.assets, db.generations
        images = conn.execute(
            sa.select(gi.c.sha256, gi.c.seed, a.c.width, a.c.height, a.c.media_type)
            .join(a, a.c.sha256 == gi.c.sha256).where(gi.c.generation_id == generation_id)
            .order_by(gi.c.idx)
        ).all()  # fmt: skip
        cost = conn.scalar(sa.select(g.c.cost_usd).where(g.c.id == generation_id))
        return {
            "generation_id": generation_id, "cost_usd": cost, "warnings": [],
            "images": [dict(r._mapping) for r in images],
        }  # fmt: skip

    # -- running -------------------------------------------------------------------------------
    def _record_handle(self, job_id: str, handle: str | None) -> None:
        """Write the provider's name for the job it accepted. Called inside the flow run, before
        the flow goes on polling: one small write, on the event loop, so the handle is durable
        before anything else happens to the job."""
        if not self.update(job_id, provider_handle=handle):
            raise _LeaseLost(job_id)

    async def _run(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        token = current_submission.set(_Observer(self, job_id))
        handle = job.get("provider_handle")
        try:
            op, request = await asyncio.to_thread(self._request_for, job)

            def progress(fraction: float | None, message: str) -> None:
                self.ctx.progress[job_id] = {"progress": fraction, "message": message}

            recorder = HandleRecorder(lambda found: self._record_handle(job_id, found))
            with on_submitted(recorder):
                owner = await asyncio.to_thread(self.ctx.keys.by_id, job["owner"])
                # A crash left ``handle`` behind: follow that provider job, not a new one.
                result = await self.ctx.run(
                    op, request, on_progress=progress, wait_s=3600, principal=owner,
                    resume_handle=handle,
                )  # fmt: skip
            images = [
                {"sha256": img.sha256, "seed": img.seed, "width": img.width, "height": img.height,
                 "media_type": img.media_type}
                for img in result.images
            ]  # fmt: skip
            outcome = {
                "generation_id": result.generation_id, "cost_usd": result.cost_usd,
                "warnings": result.warnings, "images": images,
            }  # fmt: skip
            await asyncio.to_thread(
                self.update, job_id, status="succeeded", result=outcome, lease_owner=None,
                generation_id=result.generation_id, progress=1.0,
            )  # fmt: skip
        except _LeaseLost:
            log.warning("lost the lease of job %s; leaving it to its new owner", job_id)
        except errors.ResumeUnsupportedError:
            # A recorded job that cannot be followed: as after a crash with no handle.
            await asyncio.to_thread(
                self.update, job_id, status="uncertain", lease_owner=None,
                error=_uncertain_error(job["provider"], job.get("provider_request_id")),
            )  # fmt: skip
        except asyncio.CancelledError:
            await asyncio.to_thread(self._cancelled, job_id)
            raise
        except (errors.LimnerError, ApiError) as exc:
            await asyncio.to_thread(self._failed, job_id, exc)
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job_id)
            await asyncio.to_thread(self._failed, job_id, exc)
        finally:
            current_submission.reset(token)
            self.running.pop(job_id, None)
            self.ctx.progress.pop(job_id, None)
            self.wake.set()
            if job.get("webhook_url"):
                self.notify(job_id)

    def notify(self, job_id: str) -> None:
        """Send the job's webhook in the background (never inside a provider submission)."""
        task = asyncio.create_task(self._notify(job_id))
        self._notifications.add(task)
        task.add_done_callback(self._notifications.discard)

    async def _notify(self, job_id: str) -> None:
        # Stored first, then sent (and retried across restarts) by the webhook outbox.
        await self.webhooks.notify(job_id)

    def _cancelled(self, job_id: str) -> None:
        with self.engine.connect() as conn:
            wanted = conn.scalar(
                sa.select(server_jobs.c.cancel_requested).where(server_jobs.c.id == job_id)
            )
        if wanted:
            self.update(job_id, status="cancelled", lease_owner=None)

    def _failed(self, job_id: str, exc: Exception) -> None:
        error: dict[str, str | None]
        if isinstance(exc, errors.LimnerError):
            error = {"code": exc.code, "type": type(exc).__name__, "message": str(exc)}
        elif isinstance(exc, ApiError):
            error = {"code": exc.code, "type": exc.type, "message": exc.message}
        else:
            error = {
                "code": "internal_error",
                "type": "server_error",
                "message": "Internal error; see the server log.",
            }
        self.update(job_id, status="failed", error=error, lease_owner=None)

    def _request_for(self, job: dict[str, Any]) -> tuple[Operation, ImageRequest]:
        data = dict(job["request"])
        op = Operation(data.pop("operation"))
        images = [
            self._asset_input(sha, f"image{i}.png") for i, sha in enumerate(data.pop("images", []))
        ]
        mask_sha = data.pop("mask", None)
        mask = self._asset_input(mask_sha, "mask.png") if mask_sha else None
        return op, ImageRequest(**data, images=images, mask=mask)

    def _asset_input(self, sha: str, name: str) -> ImageInput:
        found = self.ctx.store.read_asset(sha)
        if found is None:
            raise errors.InputImageError(
                f"The job's input image {sha[:12]} is missing from the store."
            )
        from limner.images import load_image

        return load_image(found[0], name=name)

    # -- submission ----------------------------------------------------------------------------
    async def submit(
        self, specs: list[JobSpec], principal: Principal, batch_id: str | None
    ) -> list[dict[str, Any]]:
        queued = await asyncio.to_thread(self._queued_count, principal.id)
        if queued + len(specs) > self.ctx.settings.max_queued_per_key:
            raise ApiError(
                429, f"This key already has {queued} queued jobs; retry when some have finished.",
                type_="rate_limit_error", code="queue_full", headers={"Retry-After": "10"},
            )  # fmt: skip
        built = [await self._row(spec, principal, batch_id) for spec in specs]
        estimate = sum(cost or 0.0 for _, cost, _ in built)
        what = "this job" if len(built) == 1 else f"these {len(built)} jobs"
        await asyncio.to_thread(self.ctx.keys.check_headroom, principal, estimate, what)
        # Inputs are stored only for jobs that will be queued.
        rows = [
            await asyncio.to_thread(self._store_inputs, row, images, mask)
            for row, _, (images, mask) in built
        ]
        await asyncio.to_thread(self._insert, rows)
        self.wake.set()
        return rows

    def _queued_count(self, owner: str) -> int:
        t = server_jobs
        with self.engine.connect() as conn:
            return int(
                conn.scalar(
                    sa.select(sa.func.count()).where(t.c.owner == owner, t.c.status == "queued")
                )
                or 0
            )

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(server_jobs.insert(), rows)

    async def _row(
        self, spec: JobSpec, principal: Principal, batch_id: str | None
    ) -> tuple[dict[str, Any], float | None, tuple[list[ImageInput], ImageInput | None]]:
        """The job's row (without its input images), its estimated cost, and the input images
        and mask that :meth:`_store_inputs` adds to the row."""
        images = [await self._input(v, f"images[{i}]") for i, v in enumerate(spec.images)]
        mask = await self._input(spec.mask, "mask") if spec.mask else None
        if spec.webhook_url:
            from limner.server.webhooks import check_webhook_url

            await asyncio.to_thread(check_webhook_url, self.ctx.settings, spec.webhook_url)
        fields = spec.model_dump(exclude={"operation", "images", "mask", "webhook_url"})
        request = ImageRequest(**fields, images=images, mask=mask)
        op = Operation(spec.operation)
        if op == Operation.EDIT and mask is not None:
            op = Operation.INPAINT
        # Check everything checkable now: a job that cannot run is refused, not queued.
        plan = await asyncio.to_thread(self.ctx.limner().plan, op, request)
        data = {
            **plan.request.model_dump(mode="json", exclude={"images", "mask", "references"}),
            "operation": op.value,
        }
        now = time.time()
        row = {
            "id": new_id(), "batch_id": batch_id, "owner": principal.id, "created_at": now,
            "updated_at": now, "status": "queued", "operation": op.value,
            "provider": plan.spec.provider, "model": plan.spec.ref, "request": data,
            "attempts": 0, "submit_state": "none", "submit_count": 0, "cancel_requested": False,
            "webhook_url": spec.webhook_url,
        }  # fmt: skip
        return row, plan.estimated_cost, (images, mask)

    def _store_inputs(
        self, row: dict[str, Any], images: list[ImageInput], mask: ImageInput | None
    ) -> dict[str, Any]:
        """Put the job's input images in the store and name them in its request."""
        row["request"]["images"] = [self._put(img) for img in images]
        row["request"]["mask"] = self._put(mask) if mask is not None else None
        return row

    async def _input(self, value: str, name: str) -> ImageInput:
        """An input image: ``asset:<sha256>`` (an image already in the store, as the gallery's
        "use as input" sends), a URL, a data: URL or base64."""
        assert self.ctx.http is not None
        if value.startswith("asset:"):
            return await asyncio.to_thread(self._asset_input, value[6:], name)
        return await image_from_value(
            value, name=name, max_bytes=self.ctx.settings.max_upload_bytes, client=self.ctx.http
        )

    def _put(self, image: ImageInput) -> str:
        return self.ctx.store.put_asset(
            image.data, image.media_type, image.width, image.height
        ).sha256

    # -- reading -------------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(server_jobs).where(server_jobs.c.id == job_id)).first()
        return dict(row._mapping) if row else None

    def list(
        self, owner: str | None, batch_id: str | None, status: str | None, limit: int
    ) -> list[dict[str, Any]]:
        t = server_jobs
        stmt = sa.select(t).order_by(t.c.created_at.desc()).limit(limit)
        for column, value in ((t.c.owner, owner), (t.c.batch_id, batch_id), (t.c.status, status)):
            if value:
                stmt = stmt.where(column == value)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def view(self, job: dict[str, Any]) -> dict[str, Any]:
        live = self.ctx.progress.get(job["id"], {})
        result = job.get("result")
        if result:
            result = {
                **result,
                "images": [
                    {**img, "url": self.ctx.absolute(self.ctx.sign(img["sha256"]))}
                    for img in result.get("images", [])
                ],
            }
        return {
            "id": job["id"], "object": "job", "batch_id": job["batch_id"], "status": job["status"],
            "operation": job["operation"], "model": job["model"], "provider": job["provider"],
            "created_at": job["created_at"], "updated_at": job["updated_at"],
            "attempts": job["attempts"], "submit_state": job["submit_state"],
            "submit_count": job["submit_count"],
            "provider_request_id": job["provider_request_id"],
            "progress": live.get("progress", job.get("progress")),
            "progress_message": live.get("message", job.get("progress_message")),
            "result": result, "error": job["error"], "cancel_requested": job["cancel_requested"],
            "webhook_status": job.get("webhook_status"),
        }  # fmt: skip

    # -- control -------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> None:
        t, now = server_jobs, time.time()
        with self.engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.id == job_id, t.c.status == "queued")
                .values(status="cancelled", updated_at=now)
            )
            conn.execute(
                t.update()
                .where(t.c.id == job_id, t.c.status == "running")
                .values(cancel_requested=True, updated_at=now)
            )
        task = self.running.get(job_id)
        if task is not None:
            task.cancel()

    def retry(self, job_id: str) -> bool:
        t, now = server_jobs, time.time()
        with self.engine.begin() as conn:
            done = conn.execute(
                t.update()
                .where(t.c.id == job_id, t.c.status.in_(["failed", "cancelled", "uncertain"]))
                .values(
                    status="queued", submit_state="none", lease_owner=None, lease_expires=None,
                    error=None, cancel_requested=False, provider_request_id=None,
                    provider_handle=None, updated_at=now,
                )
            ).rowcount  # fmt: skip
        self.wake.set()
        return bool(done)


def _uncertain_error(provider: str, request_id: str | None) -> dict[str, str]:
    rid = f" (provider request id {request_id})" if request_id else ""
    return {
        "code": "uncertain",
        "message": (
            f"The server stopped after sending this job to {provider}{rid}; the provider offers "
            "no way to look the result up, so it was not sent again to avoid paying twice. "
            "POST /v1/jobs/{id}/retry to run it again."
        ),
    }


# -- routes --------------------------------------------------------------------------------------
def _queue(ctx: ServerContext) -> JobQueue:
    queue: JobQueue = ctx.jobs
    return queue


def _own(job: dict[str, Any] | None, principal: Principal, job_id: str) -> dict[str, Any]:
    if job is None or (job["owner"] != principal.id and "admin" not in principal.scopes):
        raise ApiError(404, f"No job {job_id!r}.", code="not_found", param="id")
    return job


@router.post("/v1/jobs", status_code=202, tags=["jobs"])
async def submit_jobs(
    body: JobSpec | BatchSpec,
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("generate")),
) -> JSONResponse:
    """Queue one job, or a batch (``{"jobs": [...]}``); answers at once with the job ids."""
    queue = _queue(ctx)
    specs = body.jobs if isinstance(body, BatchSpec) else [body]
    batch_id = new_id() if isinstance(body, BatchSpec) else None
    rows = await queue.submit(specs, principal, batch_id)
    views = [
        queue.view(row | {"provider_request_id": None, "result": None, "error": None})
        for row in rows
    ]
    payload = {"batch_id": batch_id, "jobs": views} if batch_id else views[0]
    return JSONResponse(payload, status_code=202)


@router.get("/v1/jobs", tags=["jobs"])
async def list_jobs(
    batch_id: str | None = Query(None, max_length=32),
    status: str | None = Query(None, max_length=16),
    limit: int = Query(100, ge=1, le=1000),
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("read")),
) -> dict[str, Any]:
    queue = _queue(ctx)
    owner = None if "admin" in principal.scopes else principal.id
    rows = await asyncio.to_thread(queue.list, owner, batch_id, status, limit)
    return {"object": "list", "data": [queue.view(r) for r in rows]}


@router.get("/v1/jobs/{job_id}", tags=["jobs"])
async def get_job(
    job_id: str,
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("read")),
) -> dict[str, Any]:
    queue = _queue(ctx)
    return queue.view(_own(await asyncio.to_thread(queue.get, job_id), principal, job_id))


@router.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
async def cancel_job(
    job_id: str,
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("generate")),
) -> dict[str, Any]:
    queue = _queue(ctx)
    before = _own(await asyncio.to_thread(queue.get, job_id), principal, job_id)
    await asyncio.to_thread(queue.cancel, job_id)
    job = _own(await asyncio.to_thread(queue.get, job_id), principal, job_id)
    if before["status"] == "queued" and job["status"] == "cancelled" and job["webhook_url"]:
        queue.notify(job_id)  # a running job's own runner sends its webhook when it stops
    return queue.view(job)


@router.post("/v1/jobs/{job_id}/retry", tags=["jobs"])
async def retry_job(
    job_id: str,
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("generate")),
) -> dict[str, Any]:
    queue = _queue(ctx)
    job = _own(await asyncio.to_thread(queue.get, job_id), principal, job_id)
    if not await asyncio.to_thread(queue.retry, job_id):
        raise ApiError(
            409,
            f"Job {job_id} is {job['status']}; only failed, cancelled or uncertain jobs can be retried.",
            code="not_retryable",
        )
    return queue.view(_own(await asyncio.to_thread(queue.get, job_id), principal, job_id))


@router.get("/v1/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse)
async def job_events(
    job_id: str,
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("read")),
) -> StreamingResponse:
    """Server-sent events: a ``job`` event whenever the job changes, until it ends."""
    queue = _queue(ctx)
    _own(await asyncio.to_thread(queue.get, job_id), principal, job_id)

    async def stream() -> AsyncIterator[bytes]:
        last = None
        while True:
            job = await asyncio.to_thread(queue.get, job_id)
            if job is None:
                return
            view = queue.view(job)
            text = json.dumps(view)
            if text != last:
                last = text
                yield f"event: job\ndata: {text}\n\n".encode()
            if view["status"] in TERMINAL:
                yield b"event: end\ndata: {}\n\n"
                return
            await asyncio.sleep(0.25)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )
