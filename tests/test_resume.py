"""Resumable submissions: a run that dies right after its job was submitted (and the handle
recorded) is followed to its result from that handle, against each provider's emulator, and
the provider still sees exactly one submission."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from _provider_helpers import emulator_stats
from limner import errors
from limner.client import Limner
from limner.emulators.common import EmulatorServer
from limner.flows import Flow, ProviderOutput, Send, Submitted, on_submitted
from limner.http import AsyncFlowRunner, FlowRunner
from limner.images import load_image
from limner.types import ImageInput, ImageRequest, Operation, Result

FAST = {"poll_interval": 0.01, "poll_max_interval": 0.02}
Emulator = Callable[[str], tuple[EmulatorServer, str]]
Started = Callable[[str], tuple["Case", Callable[[], Limner]]]


class Crash(Exception):
    """The process dying right after the submission's handle was recorded."""


@dataclass
class Case:
    """One resumable provider: the request to run and the emulator path that submits."""

    provider: str
    op: Operation
    request: ImageRequest
    submit_path: str
    key: str | None = None
    settings: tuple[str, dict[str, Any]] | None = None  # emulator control route and its body
    size: tuple[int, int] | None = None
    server: EmulatorServer | None = None


def _png(width: int, height: int) -> ImageInput:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 200)).save(buf, format="PNG")
    return load_image(buf.getvalue())


def _case(provider: str) -> Case:
    if provider == "bfl":
        request = ImageRequest(
            model="bfl:flux-2-klein-4b", prompt="a hut", size="128x128", provider_options=FAST
        )
        return Case(
            "bfl",
            Operation.GENERATE,
            request,
            "POST /v1/flux-2-klein-4b",
            "bfl-key",
            size=(128, 128),
        )
    if provider == "replicate":
        # wait=0: no Prefer header, so the prediction is still processing when the run dies.
        options = {**FAST, "wait": 0, "megapixels": "0.25"}
        request = ImageRequest(
            model="replicate:black-forest-labs/flux-schnell",
            prompt="a fox",
            aspect_ratio="1:1",
            provider_options=options,
        )
        return Case(
            "replicate",
            Operation.GENERATE,
            request,
            "POST /v1/models/black-forest-labs/flux-schnell/predictions",
            "r8_test",
        )
    if provider == "fal":
        request = ImageRequest(
            model="fal:fal-ai/flux/schnell", prompt="a kite", size="64x64", provider_options=FAST
        )
        return Case(
            "fal",
            Operation.GENERATE,
            request,
            "POST /queue/fal-ai/flux/schnell",
            "fal-key-id:secret",
            size=(64, 64),
        )
    if provider == "midjourney":
        request = ImageRequest(
            model="midjourney:v7",
            prompt="a lighthouse",
            seed=5,
            provider_options={"poll_interval": 0.01},
        )
        return Case(
            "midjourney",
            Operation.GENERATE,
            request,
            "POST /mj/submit/imagine",
            "mj-secret",
            settings=("/_emulator/midjourney", {"polls_to_finish": 2}),
        )
    if provider == "comfyui":
        request = ImageRequest(
            model="comfyui:any.safetensors", prompt="a barn", size="64x64", steps=4, seed=9
        )
        return Case(
            "comfyui",
            Operation.GENERATE,
            request,
            "POST /prompt",
            settings=("/_emulator/comfyui", {"run_seconds": 0.2}),
            size=(64, 64),
        )
    assert provider == "stability"
    request = ImageRequest(
        model="stability:upscale-creative",
        prompt="a vase",
        images=[_png(16, 16)],
        provider_options=FAST,
    )
    return Case(
        "stability",
        Operation.UPSCALE,
        request,
        "POST /v2beta/stable-image/upscale/creative",
        "sk-stab",
        settings=("/_emulator/jobs", {"polls": 1}),
        size=(64, 64),
    )


RESUMABLE = ["bfl", "replicate", "fal", "midjourney", "comfyui", "stability"]


@pytest.fixture
def started(emulator: Emulator, tmp_path: Path) -> Iterator[Started]:
    """``case, new_client = started("bfl")``: the emulator runs; each new client is a fresh
    process's view of the same LIMNER_HOME."""
    clients: list[Limner] = []

    def start(provider: str) -> tuple[Case, Callable[[], Limner]]:
        case = _case(provider)
        server, url = emulator(provider)
        if case.settings:
            route, body = case.settings
            httpx.post(server.url + route, json=body).raise_for_status()
        case.server = server

        def new_client() -> Limner:
            keys = {provider: case.key} if case.key else {}
            client = Limner(home=tmp_path, keys=keys, base_urls={provider: url})
            clients.append(client)
            return client

        return case, new_client

    yield start
    for client in clients:
        client.close()


def _stats(case: Case) -> dict[str, int]:
    assert case.server is not None
    return emulator_stats(case.server)


def _submits(case: Case) -> int:
    return _stats(case).get(case.submit_path, 0)


def _crash_after_submit(client: Limner, case: Case) -> str:
    """Run until the provider accepted the job; the listener records the handle, then dies."""
    recorded: list[tuple[str, str]] = []

    def record(provider: str, handle: str) -> None:
        recorded.append((provider, handle))
        raise Crash

    with on_submitted(record), pytest.raises(Crash):
        client.run(case.op, case.request)
    assert [p for p, _ in recorded] == [case.provider]
    return recorded[0][1]


def _check_resumed(client: Limner, case: Case, result: Result, handle: str) -> None:
    assert result.images and not result.cache_hit
    if case.size:
        assert (result.images[0].width, result.images[0].height) == case.size
    assert result.request_id == json.loads(handle)["id"]
    entry = client.store.get(result.generation_id or "")
    assert entry is not None and entry.status == "ok"
    assert entry.provider_request_id == result.request_id
    assert entry.request_hash == client.plan(case.op, case.request).cache_key
    assert [img.sha256 for img in entry.images] == [img.sha256 for img in result.images]
    assert all(img.path.is_file() for img in entry.images)
    assert _submits(case) == 1


@pytest.mark.parametrize("provider", RESUMABLE)
def test_crash_after_submit_then_resume_submits_once(provider: str, started: Started) -> None:
    case, new_client = started(provider)
    handle = _crash_after_submit(new_client(), case)
    assert _submits(case) == 1
    assert not case.key or case.key not in handle  # a handle is never a secret

    client = new_client()  # a new process, same home
    assert client.store.search() == []  # the crashed run logged nothing
    result = client.run(case.op, case.request, resume_handle=handle)
    _check_resumed(client, case, result, handle)
    assert [e.id for e in client.store.search()] == [result.generation_id]


@pytest.mark.parametrize("provider", ["fal", "bfl"])
async def test_async_crash_and_resume(provider: str, started: Started) -> None:
    case, new_client = started(provider)
    recorded: list[str] = []

    def record(_: str, handle: str) -> None:
        recorded.append(handle)
        raise Crash

    with on_submitted(record), pytest.raises(Crash):
        await new_client().arun(case.op, case.request)
    assert len(recorded) == 1 and _submits(case) == 1
    client = new_client()
    result = await client.arun(case.op, case.request, resume_handle=recorded[0])
    _check_resumed(client, case, result, recorded[0])


def test_resumed_run_logs_like_a_normal_run(
    started: Started,
) -> None:
    """BFL bills from the submit answer: the resumed log carries the same cost and usage."""
    case, new_client = started("bfl")
    handle = _crash_after_submit(new_client(), case)
    client = new_client()
    resumed = client.store.get(
        client.run(case.op, case.request, resume_handle=handle).generation_id or ""
    )
    normal = client.store.get(client.run(case.op, case.request).generation_id or "")
    assert resumed is not None and normal is not None
    assert resumed.cost_usd == normal.cost_usd == pytest.approx(0.014)  # reported, 1.4 credits
    for name in (
        "operation",
        "provider",
        "model",
        "prompt",
        "status",
        "params",
        "request_hash",
        "usage",
        "warnings",
        "cache_hit",
    ):
        assert getattr(resumed, name) == getattr(normal, name), name
    assert resumed.provider_request_id != normal.provider_request_id  # two tasks, two ids


def test_resume_never_serves_the_cache(
    started: Started,
) -> None:
    """A seeded request is cacheable, but a resume follows the remote job every time."""
    case, new_client = started("comfyui")
    handle = _crash_after_submit(new_client(), case)
    client = new_client()
    first = client.run(case.op, case.request, resume_handle=handle)
    assert client.run(case.op, case.request).cache_hit  # a normal run now hits the cache
    views = _stats(case)["GET /view"]
    again = client.run(case.op, case.request, resume_handle=handle)
    assert not again.cache_hit and again.request_id == first.request_id
    assert _stats(case)["GET /view"] == views + 1
    assert _submits(case) == 1


def test_resumed_comfyui_run_logs_the_queued_workflow(
    started: Started,
) -> None:
    case, new_client = started("comfyui")
    handle = _crash_after_submit(new_client(), case)
    client = new_client()
    entry = client.store.get(
        client.run(case.op, case.request, resume_handle=handle).generation_id or ""
    )
    assert entry is not None
    nodes = entry.params["provider_meta"]["workflow"].values()
    assert any(node.get("inputs", {}).get("seed") == 9 for node in nodes)


def test_multi_call_runs_announce_every_submission(
    started: Started,
) -> None:
    """n=3 on a one-image model runs three calls in threads; each one's handle is heard, and
    such a request cannot be resumed from one handle."""
    case, new_client = started("bfl")
    client = new_client()
    request = case.request.model_copy(update={"n": 3})
    heard: list[str] = []
    with on_submitted(lambda _, handle: heard.append(handle)):
        result = client.run(case.op, request)
    assert len(result.images) == 3
    assert sorted(json.loads(h)["id"] for h in heard) == sorted(
        (result.request_id or "").split(",")
    )
    with pytest.raises(errors.ResumeUnsupportedError, match="3 calls"):
        client.run(case.op, request, resume_handle=heard[0])
    assert _submits(case) == 3


def test_synchronous_providers_cannot_resume(
    openai_env: tuple[EmulatorServer, str], tmp_path: Path
) -> None:
    server, _ = openai_env
    with Limner(home=tmp_path) as client:
        provider = client.provider("openai")
        spec = client.resolve("openai:gpt-image-1")
        request = ImageRequest(model="openai:gpt-image-1", prompt="a boat", size="1024x1024")
        assert provider.resume_flow(Operation.GENERATE, request, spec, '{"id":"x"}') is None
        heard: list[str] = []
        with on_submitted(lambda _, handle: heard.append(handle)):
            client.run(Operation.GENERATE, request)
        assert heard == []  # nothing to resume: the answer came in the one request
        before = emulator_stats(server).get("total", 0)
        with pytest.raises(errors.ResumeUnsupportedError) as caught:
            client.run(Operation.GENERATE, request, resume_handle='{"id":"x"}')
        assert caught.value.exit_code == 2 and caught.value.http_status == 409
        assert emulator_stats(server).get("total", 0) == before
        assert len(client.store.search()) == 1  # the refused resume logged nothing


@pytest.mark.parametrize(
    ("provider", "options"),
    [("fal", {"mode": "sync"}), ("stability", None)],
)
def test_synchronous_modes_of_async_providers_cannot_resume(
    provider: str,
    options: dict[str, Any] | None,
    started: Started,
) -> None:
    case, new_client = started(provider)
    if options:
        request = case.request.model_copy(update={"provider_options": {**FAST, **options}})
        op = case.op
    else:  # Stable Image Core answers in the one request
        request, op = (
            ImageRequest(model="stability:stable-image-core", prompt="a vase"),
            Operation.GENERATE,
        )
    with pytest.raises(errors.ResumeUnsupportedError):
        new_client().run(op, request, resume_handle='{"id":"x"}')
    assert _stats(case).get("total", 0) == 0


@pytest.mark.parametrize(
    ("provider", "handle"),
    [
        ("bfl", {"id": "t1", "polling_url": "https://evil.example/v1/get_result?id=t1"}),
        ("bfl", {"id": "t1", "polling_url": "https://delivery-us1.bfl.ai/get_result?id=t1"}),
        (
            "replicate",
            {
                "id": "p1",
                "get": "https://evil.example/v1/predictions/p1",
                "cancel": "https://evil.example/v1/predictions/p1/cancel",
            },
        ),
        (
            "fal",
            {
                "id": "r1",
                "status_url": "https://evil.example/s",
                "response_url": "https://evil.example/r",
                "cancel_url": "https://evil.example/c",
            },
        ),
    ],
)
def test_a_tampered_handle_never_takes_the_key_elsewhere(
    provider: str,
    handle: dict[str, str],
    started: Started,
) -> None:
    """Handles live in logs and batch files; a rewritten polling URL is refused, not called."""
    case, new_client = started(provider)
    client = new_client()
    with pytest.raises(errors.ProviderError, match="refusing"):
        client.run(case.op, case.request, resume_handle=json.dumps(handle))
    assert _stats(case).get("total", 0) == 0
    (entry,) = client.store.search()
    assert entry.status == "error"  # logged like any failed run


@pytest.mark.parametrize("handle", ["not json", "[]", '{"polling_url": "x"}'])
def test_malformed_handle_is_a_clear_user_error(handle: str, started: Started) -> None:
    case, new_client = started("bfl")
    with pytest.raises(errors.InvalidRequestError, match="not a submission handle") as caught:
        new_client().run(case.op, case.request, resume_handle=handle)
    assert caught.value.param == "resume_handle" and caught.value.exit_code == 2


def test_an_unknown_job_fails_cleanly(
    started: Started,
) -> None:
    case, new_client = started("midjourney")
    client = new_client()
    with pytest.raises(errors.LimnerError, match="no task"):
        client.run(case.op, case.request, resume_handle='{"id":"0000"}')
    assert _submits(case) == 0


# -- the drivers ---------------------------------------------------------------------------------
def _submitting_flow(events: list[str]) -> Flow:
    response = yield Send(httpx.Request("POST", "https://api.test/jobs"))
    job = response.json()["id"]
    try:
        answer = yield Submitted(json.dumps({"id": job}))
        events.append(f"answer {answer}")
        yield Send(httpx.Request("GET", f"https://api.test/jobs/{job}"))
        return ProviderOutput(images=[], request_id=job)
    finally:
        events.append("closed")


def _transport(log: list[str], submit_takes: float = 0.0) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        log.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            time.sleep(submit_takes)
        return httpx.Response(200, json={"id": "j1"})

    return httpx.MockTransport(handler)


def test_runner_announces_to_nested_listeners_and_flow_gets_none() -> None:
    events: list[str] = []
    log: list[str] = []
    with on_submitted(lambda p, h: events.append(f"outer {p} {h}")):
        with (
            on_submitted(lambda p, h: events.append(f"inner {p} {h}")),
            httpx.Client(transport=_transport(log)) as http,
        ):
            out = FlowRunner(http, "test").run(_submitting_flow(events))
        with httpx.Client(transport=_transport(log)) as http:
            FlowRunner(http, "test").run(_submitting_flow(events))
    assert out.request_id == "j1"
    handle = '{"id": "j1"}'
    assert events == [
        f"outer test {handle}",
        f"inner test {handle}",
        "answer None",
        "closed",
        f"outer test {handle}",
        "answer None",
        "closed",
    ]
    with httpx.Client(transport=_transport(log)) as http:  # no listener: runs as before
        assert FlowRunner(http, "test").run(_submitting_flow([])).request_id == "j1"


async def test_failing_listener_stops_the_run_and_closes_the_flow() -> None:
    events: list[str] = []
    log: list[str] = []

    def fail(provider: str, handle: str) -> None:
        raise Crash(handle)

    with on_submitted(fail), pytest.raises(Crash):
        async with httpx.AsyncClient(transport=_transport(log)) as http:
            await AsyncFlowRunner(http, "test").run(_submitting_flow(events))
    assert events == ["closed"] and log == ["POST /jobs"]  # never polled


async def test_listeners_follow_tasks_and_threads() -> None:
    heard: list[str] = []

    def run_in_thread() -> None:
        with httpx.Client(transport=_transport([])) as http:
            FlowRunner(http, "threaded").run(_submitting_flow([]))

    async def run_async() -> None:
        async with httpx.AsyncClient(transport=_transport([])) as http:
            await AsyncFlowRunner(http, "task").run(_submitting_flow([]))

    with on_submitted(lambda provider, _: heard.append(provider)):
        await asyncio.to_thread(run_in_thread)
        await asyncio.gather(asyncio.create_task(run_async()), run_async())
    await run_async()  # outside the block: not heard
    assert sorted(heard) == ["task", "task", "threaded"]


def test_submission_is_announced_even_past_the_deadline() -> None:
    heard: list[str] = []
    events: list[str] = []
    # The deadline passes while the submit is in flight: the job exists remotely.
    with (
        on_submitted(lambda _, handle: heard.append(handle)),
        httpx.Client(transport=_transport([], submit_takes=0.05)) as http,
        pytest.raises(errors.ProviderTimeoutError),
    ):
        FlowRunner(http, "test", deadline_s=0.01).run(_submitting_flow(events))
    assert heard == ['{"id": "j1"}'] and events == ["answer None", "closed"]
