"""The server's provider client receives response bodies a few at a time, in the order they
started, and a body that stalls or is closed gives up its turn. Bodies come from a real
uvicorn server on loopback that sends them piece by piece, through both transports the server
can use (aiohttp's pool and httpcore's)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from limner.emulators.common import EmulatorServer
from limner.server.upstream import (
    BodyQueue,
    QueuedBodies,
    _aiohttp_factory,
    _httpcore_factory,
    upstream_clients,
)

PIECE = b"x" * 65536


async def _pieces(request: Request) -> StreamingResponse:
    """``count`` pieces of 64 KiB, ``gap`` seconds apart; ``pause`` seconds after the first."""
    count = int(request.query_params.get("count", "8"))
    gap = float(request.query_params.get("gap", "0"))
    pause = float(request.query_params.get("pause", "0"))

    async def body() -> AsyncIterator[bytes]:
        for index in range(count):
            yield PIECE
            await asyncio.sleep(pause if index == 0 and pause else gap)

    return StreamingResponse(body(), media_type="application/octet-stream")


async def _set_cookie(request: Request) -> Response:
    return Response("set", headers={"set-cookie": "session=tenant-a; Path=/"})


async def _echo_cookie(request: Request) -> Response:
    return Response(request.headers.get("cookie", ""))


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    routes = [
        Route("/pieces", _pieces),
        Route("/set-cookie", _set_cookie),
        Route("/echo-cookie", _echo_cookie),
    ]
    with EmulatorServer(Starlette(routes=routes)) as server:
        yield server.url + "/pieces"


def _factories() -> list[Callable[[httpx.Proxy | None], httpx.AsyncBaseTransport]]:
    aiohttp_factory = _aiohttp_factory()
    assert aiohttp_factory is not None, "the server extra installs httpx-aiohttp"
    return [aiohttp_factory, _httpcore_factory]


@pytest.fixture(params=_factories(), ids=["aiohttp", "httpcore"])
def transport_factory(
    request: pytest.FixtureRequest,
) -> Callable[[httpx.Proxy | None], httpx.AsyncBaseTransport]:
    return request.param


@dataclass
class Reading:
    """When one body's first and last pieces reached the reader, from its start."""

    started: float
    first: float = 0.0
    last: float = 0.0


async def _read(
    client: httpx.AsyncClient, url: str, got_first: asyncio.Event | None = None
) -> Reading:
    reading = Reading(started=time.monotonic())
    async with client.stream("GET", url) as response:
        async for _ in response.aiter_raw():
            reading.last = time.monotonic()
            if not reading.first:
                reading.first = reading.last
                if got_first is not None:
                    got_first.set()
    return reading


async def _one_then_another(
    client: httpx.AsyncClient, first_url: str, second_url: str
) -> tuple[Reading, Reading]:
    """Start reading ``first_url``; once its first piece is in, start reading ``second_url``."""
    got_first = asyncio.Event()
    first = asyncio.create_task(_read(client, first_url, got_first))
    await asyncio.wait_for(got_first.wait(), 10)
    second = await asyncio.wait_for(_read(client, second_url), 10)
    return await asyncio.wait_for(first, 10), second


@pytest.mark.parametrize("slots", [1, 2])
async def test_bodies_beyond_the_slots_wait_for_their_turn(
    upstream: str, transport_factory: Callable[..., httpx.AsyncBaseTransport], slots: int
) -> None:
    # The first body takes about 0.3 s to arrive, a piece every 40 ms: never stalled.
    steady = upstream + "?count=8&gap=0.04"
    queue = BodyQueue(slots, stall_s=2.0)
    transport = QueuedBodies(transport_factory(None), queue)
    async with httpx.AsyncClient(transport=transport) as client:
        first, second = await _one_then_another(client, steady, upstream + "?count=4")
    if slots == 1:
        assert second.first >= first.last  # not one piece before the first body was done
    else:
        assert second.last < first.last  # a second slot: received alongside


async def test_a_stalled_body_gives_up_its_turn(
    upstream: str, transport_factory: Callable[..., httpx.AsyncBaseTransport]
) -> None:
    stalled = upstream + "?count=2&pause=2"
    transport = QueuedBodies(transport_factory(None), BodyQueue(1, stall_s=0.2))
    async with httpx.AsyncClient(transport=transport) as client:
        first, second = await _one_then_another(client, stalled, upstream + "?count=4")
    assert second.last < first.last
    assert second.last - second.started < 1.5  # about the stall threshold, not the 2 s pause


async def test_a_closed_body_gives_back_its_turn(
    upstream: str, transport_factory: Callable[..., httpx.AsyncBaseTransport]
) -> None:
    # The stall threshold is longer than the test: only closing the first body frees its slot.
    transport = QueuedBodies(transport_factory(None), BodyQueue(1, stall_s=30))
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", upstream + "?count=2&pause=5") as response:
            async for _ in response.aiter_raw():
                break  # one piece, then the stream is closed with the rest unread
        second = await asyncio.wait_for(_read(client, upstream + "?count=4"), 3)
    assert second.last - second.started < 2


def test_a_queue_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        BodyQueue(0)


async def test_a_cookie_one_call_was_sent_never_rides_on_the_next(upstream: str) -> None:
    """Calls made for different clients of the server share one HTTP client: it keeps no
    cookies. A default httpx client, the control, sends the cookie back."""
    base = upstream.removesuffix("/pieces")
    async with httpx.AsyncClient() as default:
        await default.get(base + "/set-cookie")
        assert (await default.get(base + "/echo-cookie")).text == "session=tenant-a"
    for client in upstream_clients(4, {}):
        async with client:
            assert (await client.get(base + "/set-cookie")).text == "set"
            assert (await client.get(base + "/echo-cookie")).text == ""


async def test_a_cancelled_read_gives_back_its_turn(
    upstream: str, transport_factory: Callable[..., httpx.AsyncBaseTransport]
) -> None:
    """A request cancelled while its body holds the only turn (a client that went away) must
    not keep the turn: every later body would wait for it forever."""
    transport = QueuedBodies(transport_factory(None), BodyQueue(1, stall_s=30))
    async with httpx.AsyncClient(transport=transport) as client:
        got_first = asyncio.Event()
        stuck = asyncio.create_task(_read(client, upstream + "?count=2&pause=5", got_first))
        await asyncio.wait_for(got_first.wait(), 10)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        second = await asyncio.wait_for(_read(client, upstream + "?count=4"), 3)
    assert second.last - second.started < 2
