"""The local engine: runs jobs on resident pipelines in a worker thread, reporting each step.

A provider flow submits a job and then waits on its events (``Run(job.next_event)``), turning
step events into ``Progress``. When the flow is cancelled (the client-side deadline, or the
flow being closed) the job's cancel flag is set and the pipeline stops at the next step.
"""

from __future__ import annotations

import queue
import random
import threading
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from limner import errors
from limner.catalog import ModelSpec
from limner.local.models import source_for
from limner.local.options import LocalOptions
from limner.local.pipelines import LoadSettings, ModelCache, choose_device, choose_dtype
from limner.types import ImageRequest, Operation

__all__ = ["Event", "Job", "LocalEngine", "get_engine", "library_versions"]


@dataclass
class Event:
    kind: str  # "status" | "step" | "done" | "error"
    step: int = 0
    total: int = 0
    message: str = ""
    output: Any = None
    error: BaseException | None = None


@dataclass
class Job:
    """One submitted generation. ``next_event`` blocks until the worker reports something."""

    events: queue.Queue[Event] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def next_event(self) -> Event:
        return self.events.get()

    def cancel(self) -> None:
        self.cancelled.set()

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)


@cache
def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "torch",
        "diffusers",
        "transformers",
        "accelerate",
        "peft",
        "compel",
        "safetensors",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _oom_error(
    exc: BaseException, request: ImageRequest, settings: LoadSettings, n: int
) -> errors.ProviderError:
    size = request.size or "the default size"
    tips = []
    if n > 1:
        tips.append("n=1 (images run one batch)")
    tips.append("a smaller --size (e.g. 768x768 for SDXL/FLUX, 512x512 for SD 1.5)")
    if settings.offload == "none":
        tips.append("--option offload=model (moves idle parts to the CPU)")
    if not settings.vae_tiling:
        tips.append("--option vae_tiling=true")
    if settings.dtype == "float32" and settings.device != "cpu":
        tips.append("--option dtype=fp16")
    return errors.ProviderError(
        f"local: out of memory on {settings.device} at {size} with {n} image(s) per batch.",
        provider="local",
        hint="Settings that fit in less memory: " + "; ".join(tips) + ".",
    )


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


class LocalEngine:
    """Resident models plus the job runner of one worker process."""

    def __init__(self, max_resident: int | None = None) -> None:
        self.cache = ModelCache(max_resident)

    def settings_for(self, opts: LocalOptions) -> LoadSettings:
        device = choose_device(opts.device)
        dtype = str(choose_dtype(device, opts.dtype)).removeprefix("torch.")
        return LoadSettings(device, dtype, opts.offload, opts.vae_tiling, opts.optimise)

    def submit(
        self, op: Operation, request: ImageRequest, spec: ModelSpec, opts: LocalOptions
    ) -> Job:
        job = Job()
        job.thread = threading.Thread(target=self._work, args=(job, op, request, spec, opts), daemon=True,
                                      name="limner-local")  # fmt: skip
        job.thread.start()
        return job

    def _work(
        self, job: Job, op: Operation, request: ImageRequest, spec: ModelSpec, opts: LocalOptions
    ) -> None:
        try:
            job.events.put(Event("done", output=self.run(job, op, request, spec, opts)))
        except BaseException as exc:  # every failure goes back to the flow that waits for it
            job.events.put(Event("error", error=exc))

    def run(
        self, job: Job, op: Operation, request: ImageRequest, spec: ModelSpec, opts: LocalOptions
    ) -> dict[str, Any]:
        from limner.local.ops import JobCancelled, run_operation

        source = source_for(spec)
        settings = self.settings_for(opts)
        job.events.put(Event("status", message=f"loading {spec.id} on {settings.device}"))
        model = self.cache.get(source, settings)
        base = request.seed if request.seed is not None else random.randrange(2**31)
        seeds = [base + k for k in range(request.n)]

        def on_step(step: int, total: int) -> None:
            job.events.put(Event("step", step=step, total=total))

        with model.lock:
            if job.cancelled.is_set():
                raise JobCancelled()
            try:
                result = run_operation(
                    model, op, request, spec, opts, seeds, on_step, job.cancelled.is_set
                )
            except JobCancelled:
                raise
            except errors.LimnerError:
                raise
            except Exception as exc:
                if _is_oom(exc):
                    raise _oom_error(exc, request, settings, request.n) from exc
                raise _classify(exc, spec) from exc
        info = {
            **result.info, "seeds": result.seeds, "model": spec.ref, "model_source": source.location,
            "model_revision": model.revision, "family": model.family, "device": settings.device,
            "dtype": settings.dtype, "versions": library_versions(),
        }  # fmt: skip
        return {"images": result.images, "seeds": result.seeds, "info": info, "notes": result.notes}

    def status(self) -> list[dict[str, Any]]:
        """The resident models, their device and the LoRAs loaded on them."""
        return [
            {
                "model": m.source.location,
                "family": m.family,
                "device": m.settings.device,
                "dtype": m.settings.dtype,
                "revision": m.revision,
                "loras": dict(m.loras),
                "active_loras": dict(m.active_loras),
                "fused": bool(m.fused),
            }
            for m in self.cache.resident()
        ]


def _classify(exc: Exception, spec: ModelSpec) -> errors.LimnerError:
    """Pipeline argument errors are the user's to fix; anything else is an engine failure."""
    phrases = ("must be", "should be", "has to be", "is not supported")
    if isinstance(exc, ValueError | TypeError) and any(p in str(exc) for p in phrases):
        return errors.InvalidRequestError(f"{spec.ref}: {exc}")
    return errors.ProviderError(f"local: {type(exc).__name__}: {exc}", provider="local")


@cache
def get_engine() -> LocalEngine:
    """The engine of this process (one set of resident models per worker)."""
    return LocalEngine()
