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
"""

from __future__ import annotations

from collections.abc import Callable, Generator
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
    "Progress",
    "ProviderOutput",
    "Run",
    "Send",
    "Sleep",
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


Step = Send | Sleep | Download | Progress | Run
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
