"""The flow drivers: one I/O-free flow, run by the sync and the async runner alike."""

from __future__ import annotations

import httpx
import pytest

from limner import errors
from limner.flows import DeadlineExceeded, Flow, Progress, ProviderOutput, Send, Sleep
from limner.http import AsyncFlowRunner, FlowRunner, RetryPolicy


def polling_flow(seen: list[str]) -> Flow:
    """Submit, poll until ready; on the deadline cancel the remote job, then give up."""
    response = yield Send(httpx.Request("POST", "https://api.test/jobs"))
    job = response.json()["id"]
    try:
        while True:
            yield Sleep(0.01)
            status = (yield Send(httpx.Request("GET", f"https://api.test/jobs/{job}"))).json()
            yield Progress(status["progress"], status["state"])
            if status["state"] == "done":
                return ProviderOutput(images=[], request_id=job)
    except DeadlineExceeded:
        yield Send(httpx.Request("POST", f"https://api.test/jobs/{job}/cancel"), retry=False)
        seen.append("cancelled")
        raise


def transport(polls_until_done: int, log: list[str]) -> httpx.MockTransport:
    count = {"polls": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(f"{request.method} {request.url.path}")
        if request.method == "POST" and request.url.path == "/jobs":
            return httpx.Response(201, json={"id": "j1"})
        if request.url.path.endswith("/cancel"):
            return httpx.Response(200, json={"state": "cancelled"})
        count["polls"] += 1
        done = count["polls"] >= polls_until_done
        return httpx.Response(
            200,
            json={
                "state": "done" if done else "running",
                "progress": min(count["polls"] / polls_until_done, 1),
            },
        )

    return httpx.MockTransport(handler)


def test_sync_flow_polls_to_completion_and_reports_progress() -> None:
    log: list[str] = []
    progress: list[float | None] = []
    with httpx.Client(transport=transport(3, log)) as client:
        out = FlowRunner(client, "test", on_progress=lambda f, m: progress.append(f)).run(
            polling_flow([])
        )
    assert out.request_id == "j1" and out.requests == 4
    assert log == ["POST /jobs", "GET /jobs/j1", "GET /jobs/j1", "GET /jobs/j1"]
    assert progress[-1] == 1


async def test_async_flow_gives_the_same_answer() -> None:
    log: list[str] = []
    async with httpx.AsyncClient(transport=transport(3, log)) as client:
        out = await AsyncFlowRunner(client, "test").run(polling_flow([]))
    assert out.request_id == "j1" and out.requests == 4
    assert log == ["POST /jobs", "GET /jobs/j1", "GET /jobs/j1", "GET /jobs/j1"]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_deadline_cancels_the_remote_job(mode: str) -> None:
    log: list[str] = []
    seen: list[str] = []
    if mode == "sync":
        with (
            httpx.Client(transport=transport(10**6, log)) as client,
            pytest.raises(errors.ProviderTimeoutError),
        ):
            FlowRunner(client, "test", deadline_s=0.1).run(polling_flow(seen))
    else:
        async with httpx.AsyncClient(transport=transport(10**6, log)) as client:
            with pytest.raises(errors.ProviderTimeoutError):
                await AsyncFlowRunner(client, "test", deadline_s=0.1).run(polling_flow(seen))
    assert seen == ["cancelled"]
    assert log[-1] == "POST /jobs/j1/cancel"


def test_retry_exhaustion_hands_last_response_to_flow() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, headers={"retry-after": "0"})

    def flow() -> Flow:
        response = yield Send(httpx.Request("GET", "https://api.test/x"))
        return ProviderOutput(images=[], request_id=str(response.status_code))

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        out = FlowRunner(client, "test", retry=RetryPolicy(max_attempts=4)).run(flow())
    assert out.request_id == "503" and len(calls) == 4


def test_transport_errors_become_provider_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def flow() -> Flow:
        yield Send(httpx.Request("GET", "https://api.test/x"))
        return ProviderOutput(images=[])

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as client,
        pytest.raises(errors.ProviderUnavailableError),
    ):
        FlowRunner(client, "test", retry=RetryPolicy(max_attempts=2, initial_delay=0.01)).run(
            flow()
        )


@pytest.mark.parametrize(
    ("fmt", "mode", "media_type"),
    [("PNG", "RGBA", "image/png"), ("PNG", "L", "image/png"), ("JPEG", "RGB", "image/jpeg"),
     ("WEBP", "RGB", "image/webp")],
)  # fmt: skip
def test_image_from_bytes_reads_size_and_type(fmt: str, mode: str, media_type: str) -> None:
    import io

    from PIL import Image

    from limner.providers.base import image_from_bytes

    buf = io.BytesIO()
    Image.new(mode, (37, 21)).save(buf, fmt)
    image = image_from_bytes(buf.getvalue(), seed=7)
    assert (image.width, image.height, image.media_type, image.seed) == (37, 21, media_type, 7)


@pytest.mark.parametrize(
    "data",
    [b"not an image at all, but long enough to have a header",
     b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dJUNK" + b"\x00" * 40,  # PNG start, no IHDR
     b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + b"\x00" * 8 + b"\x08\x06\x00\x00\x00"],
)  # fmt: skip
def test_image_from_bytes_refuses_what_is_not_an_image(data: bytes) -> None:
    from limner.providers.base import image_from_bytes

    with pytest.raises(errors.ProviderError, match="not an image"):
        image_from_bytes(data)
