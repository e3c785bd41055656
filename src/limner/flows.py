"""Provider protocol logic as I/O-free generators.

A provider describes a call (submit, poll, fetch, cancel) as a generator that yields *steps*
and receives their outcomes; it never touches the network itself. ``limner.http`` drives the
same generator synchronously or asynchronously, adding retries, deadlines and safe downloads.

    def flow():
        response = yield Send(httpx.Request("POST", url, json=body))
        while not done(response):
            yield Sleep(interval)
            response = yield Send(httpx.Request("GET", poll_url))
        fetched = yield Download(result_url)
        return ProviderOutput(images=[...])

When the client-side deadline passes, the driver throws :class:`DeadlineExceeded` into the
generator at its current ``yield``; a flow that can cancel the remote job catches it, yields
the cancel request, and re-raises.

A flow of an asynchronous provider yields :class:`Submitted` once the provider has accepted the
job and named it. The drivers pass the handle to the listeners registered with
:func:`on_submitted` (a batch or a job queue records it), so that after a crash the job is
followed again with ``Provider.resume_flow`` instead of being submitted a second time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, Field

from limner.types import GeneratedImage, Usage

__all__ = [
    "DeadlineExceeded",
    "Download",
    "Fetched",
    "Flow",
    "HandleRecorder",
    "Progress",
    "ProviderOutput",
    "Run",
    "Send",
    "Sleep",
    "Submitted",
    "SubmittedListener",
    "announce_submitted",
    "on_submitted",
]


@dataclass
class Send:
    """Send one HTTP request; the flow receives the final ``httpx.Response``.

    ``retry`` lets the driver retry transient failures (connection errors, 408/409/429/5xx).
    Set it False for a submit that must never run twice without the flow's knowledge.
    """

    request: httpx.Request
    retry: bool = True


@dataclass
class Sleep:
    """Wait before the next poll."""

    seconds: float


@dataclass
class Download:
    """Fetch a result URL at once (they expire) through the hardened fetcher.

    ``headers`` are sent as given: a flow adds its key only for its own hosts.
    """

    url: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fetched:
    data: bytes
    media_type: str
    url: str


@dataclass
class Progress:
    """Report progress (0..1 when known) and a short status line."""

    fraction: float | None
    message: str = ""


@dataclass
class Run:
    """Run blocking local work (a diffusion pipeline, say); async drivers use a thread."""

    fn: Callable[[], Any]


@dataclass
class Submitted:
    """The provider accepted a job: ``handle`` is what :meth:`Provider.resume_flow` needs to
    follow it again (an id, or JSON with the id and polling URLs). Never a secret; the flow
    receives ``None`` back."""

    handle: str


Step = Send | Sleep | Download | Progress | Run | Submitted
Flow = Generator[Step, Any, "ProviderOutput"]


class DeadlineExceeded(Exception):
    """Thrown into a flow when the client-side deadline passes."""


class ProviderOutput(BaseModel):
    """What one provider call produced, before limner stores and logs it."""

    images: list[GeneratedImage]
    usage: Usage = Field(default_factory=Usage)
    request_id: str | None = None
    warnings: list[str] = Field(default_factory=list)
    cost_usd: float | None = None
    raw: dict[str, Any] = Field(default_factory=dict)
    requests: int = 0


# Called as ``listener(provider_name, handle)`` for every Submitted step of a flow run within
# ``on_submitted``. A context variable, so it follows asyncio tasks and ``asyncio.to_thread``.
SubmittedListener = Callable[[str, str], None]
_submitted_listeners: ContextVar[tuple[SubmittedListener, ...]] = ContextVar(
    "limner_submitted_listeners", default=()
)


@contextmanager
def on_submitted(listener: SubmittedListener) -> Iterator[None]:
    """Call ``listener(provider, handle)`` whenever a flow run inside this block submits a job.

    Listeners nest: an inner block adds to the outer ones. An exception raised by a listener
    stops the run (the job was submitted but its handle could not be recorded).
    """
    token = _submitted_listeners.set((*_submitted_listeners.get(), listener))
    try:
        yield
    finally:
        _submitted_listeners.reset(token)


def announce_submitted(provider: str, handle: str) -> None:
    """Pass a submitted job's handle to the listeners of the current context, in order."""
    for listener in _submitted_listeners.get():
        listener(provider, handle)


class HandleRecorder:
    """An :func:`on_submitted` listener for one request: passes the provider's handle to
    ``write``. A request split into several provider calls cannot be resumed as one job, so a
    second handle clears the first (``write(None)``): a crash then falls back to the rules for
    a request without one."""

    def __init__(self, write: Callable[[str | None], None]) -> None:
        self.write = write
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, provider: str, handle: str) -> None:
        with self._lock:
            self.count += 1
            if self.count > 2:
                return
            value = handle if self.count == 1 else None
            self.write(value)
