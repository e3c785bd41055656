"""What every route shares: the store, the keys, one HTTP client, provider slots and signing.

``ServerContext.run`` is the one path from a route (or a job) to a provider: it refuses new work
with 429 when the server is saturated, waits for the provider's concurrency slot, and runs the
request through :class:`limner.Limner` so that checks, cost, storage and the log are the same as
everywhere else.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from limner.catalog import Catalog, ModelSpec, get_catalog
from limner.client import Limner
from limner.server.auth import KeyRing, Principal
from limner.server.errors import ApiError
from limner.server.settings import ServerSettings
from limner.server.upstream import upstream_clients
from limner.store import Store
from limner.types import ImageRequest, Operation, Result

__all__ = ["ServerContext", "SubmissionObserver", "current_submission"]


class SubmissionObserver(Protocol):
    """Told about each provider submission (a POST) before it is sent and after it answers."""

    async def before_submit(self, request: httpx.Request) -> None: ...

    async def after_submit(self, response: httpx.Response) -> None: ...


# Set by the job runner around a job's provider call; the HTTP client's hooks report to it.
current_submission: contextvars.ContextVar[SubmissionObserver | None] = contextvars.ContextVar(
    "current_submission", default=None
)


async def _on_request(request: httpx.Request) -> None:
    observer = current_submission.get()
    if observer is not None and request.method == "POST":
        await observer.before_submit(request)


async def _on_response(response: httpx.Response) -> None:
    observer = current_submission.get()
    if observer is not None and response.request.method == "POST":
        await observer.after_submit(response)


@dataclass
class ServerContext:
    settings: ServerSettings
    store: Store
    keys: KeyRing
    catalog: Catalog = field(default_factory=get_catalog)
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    _next_client: int = 0
    inflight: int = 0
    slots: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: Any = None  # the JobQueue, set by create_app
    guards: list[Any] | None = None
    _secret: bytes = b""

    @classmethod
    def create(cls, settings: ServerSettings) -> ServerContext:
        store = Store(settings.home)
        ctx = cls(settings=settings, store=store, keys=KeyRing(store, settings.rate_per_minute))
        ctx._secret = settings.signing_secret()
        return ctx

    def open(self) -> None:
        hooks: dict[str, list[Callable[..., Any]]] = {
            "request": [_on_request],
            "response": [_on_response],
        }
        self.clients = upstream_clients(self.settings.body_reads, hooks)

    @property
    def http(self) -> httpx.AsyncClient | None:
        """An HTTP client (round robin over the shards); None before the app started."""
        if not self.clients:
            return None
        self._next_client = (self._next_client + 1) % len(self.clients)
        return self.clients[self._next_client]

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
        self.store.close()

    # -- engine --------------------------------------------------------------------------------
    def limner(self, on_progress: Callable[[float | None, str], None] | None = None) -> Limner:
        client = Limner(
            home=self.settings.home, store=self.store, catalog=self.catalog,
            async_http_client=self.http, on_progress=on_progress, guards=self.guards,
        )  # fmt: skip
        if self.guards is None:
            # The guards read their settings at call time, so one set serves every request;
            # building them per request would rescan the installed plugins each time.
            self.guards = client.guards
        return client

    def resolve(self, model: str | None) -> ModelSpec:
        return self.limner().resolve(model)

    def _slot(self, provider: str) -> asyncio.Semaphore:
        if provider not in self.slots:
            self.slots[provider] = asyncio.Semaphore(self.settings.provider_concurrency)
        return self.slots[provider]

    def check_capacity(self) -> None:
        if self.inflight >= self.settings.max_inflight:
            raise ApiError(
                429, "The server is at capacity; retry shortly.", type_="rate_limit_error",
                code="server_overloaded", headers={"Retry-After": "2"},
            )  # fmt: skip

    async def run(
        self,
        op: Operation,
        request: ImageRequest,
        *,
        on_progress: Callable[[float | None, str], None] | None = None,
        wait_s: float | None = None,
        principal: Principal | None = None,
        resume_handle: str | None = None,
    ) -> Result:
        """Run ``request`` through the engine under the server's capacity and the provider's
        concurrency slot; ``resume_handle`` follows a job the provider already accepted."""
        self.check_capacity()
        self.inflight += 1
        try:
            client = self.limner(on_progress)
            if principal is not None:  # attribute the cost to the key; enforce its budget
                request = self.keys.charge(principal, client, request)
            # A catalog name resolves in memory; a default or a path may read files.
            spec = client.catalog.find(request.model) if request.model else None
            if spec is None:
                spec = await asyncio.to_thread(client.resolve, request.model)
            request = request.model_copy(update={"model": spec.ref})
            slot = self._slot(spec.provider)
            try:
                await asyncio.wait_for(slot.acquire(), timeout=wait_s or self.settings.slot_wait_s)
            except TimeoutError:
                raise ApiError(
                    429, f"Too many requests to {spec.provider} in flight; retry shortly.",
                    type_="rate_limit_error", code="provider_busy", headers={"Retry-After": "5"},
                ) from None  # fmt: skip
            try:
                return await client.arun(op, request, resume_handle=resume_handle)
            finally:
                slot.release()
        finally:
            self.inflight -= 1

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    # -- signed asset URLs ---------------------------------------------------------------------
    def sign(self, sha256: str, ttl_s: int | None = None) -> str:
        expires = int(time.time()) + (ttl_s or self.settings.url_ttl_s)
        mac = hmac.new(self._secret, f"{sha256}.{expires}".encode(), hashlib.sha256).digest()
        sig = base64.urlsafe_b64encode(mac[:18]).decode()
        return f"/v1/assets/{sha256}?expires={expires}&sig={sig}"

    def absolute(self, path: str) -> str:
        return self.settings.base_url + path

    def verify(self, sha256: str, expires: int, sig: str) -> bool:
        if expires < time.time():
            return False
        mac = hmac.new(self._secret, f"{sha256}.{expires}".encode(), hashlib.sha256).digest()
        # As bytes: compare_digest refuses a str with non-ASCII characters (TypeError).
        return hmac.compare_digest(base64.urlsafe_b64encode(mac[:18]), sig.encode())
