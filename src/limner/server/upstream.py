"""The server's HTTP client for provider calls.

Four things set it apart from a default ``httpx.AsyncClient``:

- aiohttp's connection pool under the httpx API where httpx-aiohttp is installed (the server
  extra): about a fifth of httpcore's CPU per call under load;
- the environment's proxies (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY) read once, into httpx
  ``mounts``, as httpx itself reads them;
- provider response bodies received a few at a time (:class:`BodyQueue`);
- no cookie jar: a call made for one of the server's clients must not carry cookies that a
  provider set on a call made for another (and filling the jar costs CPU on every response).

Why a few at a time: requests that reach the server together tend to be answered together, and
a generated image is megabytes. Receiving every such body at once interleaves them, so each one
completes only when nearly all have, and no client is answered until then: with 200 answers of
2 MiB arriving together, the first client waited more than a second while this process spent
its CPU taking in all of them. Received a few at a time, in the order their headers arrived, the
first completes within milliseconds, and the server stores and answers it while the rest are
still arriving. A body that stalls gives up its turn, so a slow provider never holds back the
others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import httpx

from limner.http import DEFAULT_TIMEOUT, shared_ssl_context

__all__ = ["BodyQueue", "QueuedBodies", "upstream_clients"]

# Several small connection pools rather than one big one (httpcore only): httpcore scans every
# pooled connection for each request, which turns quadratic at hundreds of calls in flight.
HTTPCORE_SHARDS = 8
# A body whose next piece takes longer than this is slow (the provider, not this process): it
# gives up its turn and is received alongside the queued ones.
BODY_STALL_S = 0.1


class BodyQueue:
    """At most ``slots`` response bodies are received at once; the others wait their turn, first
    come first served. A body holds its turn only while its pieces keep arriving: one that
    waits ``stall_s`` for the next gives the turn to the next body and goes on without one."""

    def __init__(self, slots: int, stall_s: float = BODY_STALL_S) -> None:
        if slots < 1:
            raise ValueError("a body queue needs at least one slot")
        self.slots = slots
        self.stall_s = stall_s
        self._turns = asyncio.Semaphore(slots)

    async def receive(self, body: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        """Yield ``body``'s pieces once it has a turn."""
        turn = _Turn(self._turns)
        await turn.take()
        loop = asyncio.get_running_loop()
        try:
            while True:
                stalled = loop.call_later(self.stall_s, turn.give) if turn.held else None
                try:
                    piece = await anext(body)
                except StopAsyncIteration:
                    return
                finally:
                    if stalled is not None:
                        stalled.cancel()
                yield piece
        finally:
            turn.give()


class _Turn:
    """One body's claim on a :class:`BodyQueue` slot, given back at most once."""

    def __init__(self, turns: asyncio.Semaphore) -> None:
        self._turns = turns
        self.held = False

    async def take(self) -> None:
        await self._turns.acquire()
        self.held = True

    def give(self) -> None:
        if self.held:
            self.held = False
            self._turns.release()


class _QueuedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, queue: BodyQueue) -> None:
        self._inner = inner
        self._queue = queue
        self._pieces: AsyncGenerator[bytes, None] | None = None  # closed with the stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._pieces = self._queue.receive(aiter(self._inner))
        return self._pieces

    async def aclose(self) -> None:
        try:
            if self._pieces is not None:
                await self._pieces.aclose()  # gives back a turn still held
        finally:
            await self._inner.aclose()


class QueuedBodies(httpx.AsyncBaseTransport):
    """A transport whose response bodies are received through a :class:`BodyQueue`."""

    def __init__(self, transport: httpx.AsyncBaseTransport, queue: BodyQueue) -> None:
        self._transport = transport
        self._queue = queue

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._transport.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _QueuedStream(response.stream, self._queue)
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


TransportFactory = Callable[[httpx.Proxy | None], httpx.AsyncBaseTransport]


def _aiohttp_factory() -> TransportFactory | None:
    """Transports over one aiohttp pool per proxy; None without httpx-aiohttp."""
    try:
        import aiohttp
        from httpx_aiohttp import AiohttpTransport
        from httpx_aiohttp.transport import AiohttpResponseStream
    except ImportError:
        return None
    # Read bodies in 256 KiB pieces rather than 16 KiB: a 2 MiB base64 image then costs a
    # third less CPU to receive.
    AiohttpResponseStream.CHUNK_SIZE = max(AiohttpResponseStream.CHUNK_SIZE, 256 * 1024)
    ssl_context = shared_ssl_context()

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, ssl=ssl_context, keepalive_timeout=30)
        # No trust_env: aiohttp would read the whole environment again on every request. The
        # proxies are read once, into mounts.
        return aiohttp.ClientSession(connector=connector)

    def factory(proxy: httpx.Proxy | None) -> httpx.AsyncBaseTransport:
        return AiohttpTransport(client=session, proxy=proxy)

    return factory


def _httpcore_factory(proxy: httpx.Proxy | None) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=32)
    return httpx.AsyncHTTPTransport(limits=limits, proxy=proxy, verify=shared_ssl_context())


def _mounts(
    factory: TransportFactory, queue: BodyQueue | None, proxies: dict[str, str | None]
) -> dict[str, Any]:
    """httpx ``mounts``: one transport for direct calls, and one per proxy that the
    environment routes URLs to (an empty proxy, from NO_PROXY, means direct)."""

    def wrap(transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        return QueuedBodies(transport, queue) if queue is not None else transport

    direct = wrap(factory(None))
    mounts: dict[str, Any] = {"all://": direct}
    for pattern, proxy in proxies.items():
        mounts[pattern] = wrap(factory(httpx.Proxy(proxy))) if proxy else direct
    return mounts


def upstream_clients(
    body_reads: int, event_hooks: dict[str, list[Callable[..., Any]]]
) -> list[httpx.AsyncClient]:
    """The clients the server calls providers with (several only without httpx-aiohttp), all
    receiving bodies through one queue of ``body_reads`` slots (0: no queue)."""
    from httpx._utils import get_environment_proxies

    queue = BodyQueue(body_reads) if body_reads > 0 else None
    proxies = get_environment_proxies()
    factory = _aiohttp_factory()
    shards = 1 if factory is not None else HTTPCORE_SHARDS
    clients = []
    for _ in range(shards):
        client = httpx.AsyncClient(
            timeout=DEFAULT_TIMEOUT, mounts=_mounts(factory or _httpcore_factory, queue, proxies),
            trust_env=False, event_hooks=event_hooks,
        )  # fmt: skip
        # httpx has no switch for its cookie jar, and its setter copies into a plain one.
        client._cookies = _NoCookies()
        clients.append(client)
    return clients
