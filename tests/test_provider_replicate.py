"""Replicate: limner's adapter, and the official ``replicate`` SDK, against the emulator."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import httpx
import pytest
from PIL import Image

from limner import errors
from limner.client import Limner
from limner.emulators.common import BLOCKED_WORD, EmulatorServer
from limner.images import load_image
from limner.types import ImageRequest, Operation, ReferenceImage

FAST = {"poll_interval": 0.01, "poll_max_interval": 0.02}
SMALL = {"megapixels": "0.25"}
Emulator = Callable[[str], tuple[EmulatorServer, str]]
Env = tuple[Limner, EmulatorServer, str]


@pytest.fixture
def rep(emulator: Emulator) -> Iterator[Env]:
    server, url = emulator("replicate")
    client = Limner(keys={"replicate": "r8_test"}, base_urls={"replicate": url})
    yield client, server, url
    client.close()


def _png(width: int, height: int, colour: tuple[int, int, int] = (10, 120, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def _stats(server: EmulatorServer) -> dict[str, int]:
    return httpx.get(server.url + "/_emulator/stats").json()


def _jobs(server: EmulatorServer, **settings: float) -> None:
    httpx.post(server.url + "/_emulator/jobs", json=settings).raise_for_status()


def _request(model: str, **kw: object) -> ImageRequest:
    options = {**FAST, **kw.pop("provider_options", {})}  # type: ignore[dict-item]
    return ImageRequest(model=model, provider_options=options, **kw)  # type: ignore[arg-type]


def test_prefer_wait_answers_in_one_round_trip(rep: Env) -> None:
    client, server, _ = rep
    request = _request(
        "black-forest-labs/flux-schnell",
        prompt="a fox",
        n=3,
        aspect_ratio="16:9",
        provider_options=SMALL,
    )
    result = client.run(Operation.GENERATE, request)
    assert len(result.images) == 3
    assert all(img.width > img.height and img.media_type == "image/webp" for img in result.images)
    stats = _stats(server)
    assert stats["POST /v1/models/black-forest-labs/flux-schnell/predictions"] == 1
    assert not any(key.startswith("GET /v1/predictions/") for key in stats)
    # Replicate reports no cost: the catalog's list price is recorded.
    assert result.cost_usd == pytest.approx(0.009)
    entry = client.store.get(result.generation_id or "")
    assert entry is not None and entry.cost_usd == pytest.approx(0.009)


def test_polls_until_terminal_without_prefer_wait(rep: Env) -> None:
    client, server, _ = rep
    progress: list[tuple[float | None, str]] = []
    client.on_progress = lambda f, m: progress.append((f, m))
    request = _request(
        "black-forest-labs/flux-1.1-pro", prompt="a barn", provider_options={"wait": False}
    )
    result = client.run(Operation.GENERATE, request)
    assert result.images[0].width == result.images[0].height >= 960  # about 1 MP at 1:1
    gets = sum(v for k, v in _stats(server).items() if k.startswith("GET /v1/predictions/"))
    assert gets == 3  # starting, processing, succeeded
    assert any(m == "processing" for _, m in progress)
    assert result.request_id


def test_prefer_wait_timeout_falls_back_to_polling(rep: Env) -> None:
    client, server, _ = rep
    _jobs(server, duration=5.0, polls=1)
    request = _request(
        "black-forest-labs/flux-schnell", prompt="slow", provider_options={**SMALL, "wait": 1}
    )
    result = client.run(Operation.GENERATE, request)
    assert result.images
    assert sum(v for k, v in _stats(server).items() if k.startswith("GET /v1/predictions/")) >= 1


def test_version_endpoint_upscale_and_background_removal(rep: Env) -> None:
    client, server, _ = rep
    image = load_image(_png(40, 30))
    up = client.run(
        Operation.UPSCALE, _request("real-esrgan", images=[image], provider_options={"scale": 2})
    )
    assert (up.images[0].width, up.images[0].height) == (80, 60)
    cut = client.run(
        Operation.REMOVE_BACKGROUND, _request("851-labs/background-remover", images=[image])
    )
    assert cut.images[0].media_type == "image/png"
    assert _stats(server)["POST /v1/predictions"] == 2


def test_edit_and_references_go_to_input_images(rep: Env) -> None:
    client, _, _ = rep
    image = load_image(_png(64, 48))
    ref = ReferenceImage(image=load_image(_png(32, 32, (255, 0, 0))), kind="style")
    request = _request(
        "black-forest-labs/flux-2-pro", prompt="watercolour", images=[image], references=[ref]
    )
    native = client.provider("replicate").native_request(
        Operation.EDIT, request, client.resolve(request.model)
    )
    assert len(native["json"]["input"]["input_images"]) == 2
    assert native["headers"]["prefer"] == "wait=60"
    result = client.run(Operation.EDIT, request)
    assert result.images


def test_inpaint_sends_white_mask(rep: Env) -> None:
    client, _, _ = rep
    image = load_image(_png(64, 64))
    mask_img = Image.new("L", (64, 64), 0)
    mask_img.paste(255, (0, 0, 32, 64))
    buf = io.BytesIO()
    mask_img.save(buf, format="PNG")
    request = _request(
        "black-forest-labs/flux-fill-pro",
        prompt="a door",
        images=[image],
        mask=load_image(buf.getvalue()),
    )
    result = client.run(Operation.INPAINT, request)
    assert (result.images[0].width, result.images[0].height) == (64, 64)


def test_deadline_cancels_the_prediction(rep: Env, emulator: Emulator) -> None:
    _, server, url = rep
    _jobs(server, polls=1000)
    client = Limner(keys={"replicate": "r8_test"}, base_urls={"replicate": url}, deadline_s=0.3)
    with pytest.raises(errors.ProviderTimeoutError):
        client.run(
            Operation.GENERATE,
            _request(
                "black-forest-labs/flux-schnell", prompt="x", provider_options={"wait": False}
            ),
        )
    client.close()
    stats = _stats(server)
    cancels = [k for k in stats if k.endswith("/cancel")]
    assert len(cancels) == 1


async def test_async_deadline_stops_the_prediction(rep: Env) -> None:
    _, server, url = rep
    _jobs(server, polls=1000)
    client = Limner(keys={"replicate": "r8_test"}, base_urls={"replicate": url})
    options = {"wait": False, "deadline_s": 0.2}
    request = _request("black-forest-labs/flux-schnell", prompt="x", provider_options=options)
    with pytest.raises(errors.ProviderTimeoutError) as caught:
        await client.arun(Operation.GENERATE, request)
    client.close()
    # Stopped either by limner's cancel call or by Replicate at the Cancel-After deadline that
    # limner derived from the same deadline, whichever came first.
    pid = caught.value.request_id
    headers = {"Authorization": "Bearer r8_test"}
    assert httpx.get(f"{url}/predictions/{pid}", headers=headers).json()["status"] == "canceled"


def test_cancel_after_header_makes_replicate_stop(rep: Env) -> None:
    client, server, _ = rep
    _jobs(server, polls=1000)
    request = _request(
        "black-forest-labs/flux-schnell",
        prompt="x",
        provider_options={"wait": False, "cancel_after": 0.2, "poll_interval": 0.1},
    )
    with pytest.raises(errors.ProviderTimeoutError, match="Cancel-After"):
        client.run(Operation.GENERATE, request)
    assert not any(k.endswith("/cancel") for k in _stats(server))


def test_nsfw_failure_is_content_policy_error(rep: Env) -> None:
    client, _, _ = rep
    with pytest.raises(errors.ContentPolicyError, match="NSFW"):
        client.run(
            Operation.GENERATE,
            _request(
                "black-forest-labs/flux-schnell", prompt=f"a {BLOCKED_WORD}", provider_options=SMALL
            ),
        )


def test_429_is_retried_then_succeeds(rep: Env) -> None:
    client, server, _ = rep
    path = "/v1/models/black-forest-labs/flux-schnell/predictions"
    httpx.post(
        server.url + "/_emulator/faults",
        json={"status": 429, "retry_after": 0, "count": 2, "path": path},
    )
    result = client.run(
        Operation.GENERATE,
        _request("black-forest-labs/flux-schnell", prompt="a", provider_options=SMALL),
    )
    assert result.images
    assert _stats(server)["POST " + path] == 3


def test_rate_limit_exhausted_is_rate_limit_error(rep: Env) -> None:
    client, server, _ = rep
    _jobs(server, rate_limit=0)
    client.retry = type(client.retry)(max_attempts=1)
    with pytest.raises(errors.RateLimitError, match="throttled"):
        client.run(
            Operation.GENERATE,
            _request("black-forest-labs/flux-schnell", prompt="a", provider_options=SMALL),
        )


def test_401_402_422_are_mapped(rep: Env, emulator: Emulator) -> None:
    client, server, url = rep
    httpx.post(server.url + "/_emulator/faults", json={"status": 402, "count": 1})
    with pytest.raises(errors.InsufficientCreditsError):
        client.run(
            Operation.GENERATE,
            _request("black-forest-labs/flux-schnell", prompt="a", provider_options=SMALL),
        )
    with pytest.raises(errors.ProviderRejectedError, match=r"num_outputs"):
        client.run(
            Operation.GENERATE,
            _request(
                "black-forest-labs/flux-schnell", prompt="a", provider_options={"num_outputs": 9}
            ),
        )
    bad = Limner(keys={"replicate": "x"}, base_urls={"replicate": url})
    with pytest.raises(errors.AuthenticationError, match="authentication token"):
        bad.run(
            Operation.GENERATE,
            _request("black-forest-labs/flux-schnell", prompt="a", provider_options=SMALL),
        )
    bad.close()


async def test_async_run(rep: Env) -> None:
    client, _, _ = rep
    result = await client.arun(
        Operation.GENERATE,
        _request(
            "stability-ai/stable-diffusion-3.5-medium",
            prompt="a",
            negative_prompt="blur",
            provider_options={"wait": False, **SMALL},
        ),
    )
    assert result.images and result.cost_usd == pytest.approx(0.035)


def test_official_sdk_runs_against_the_emulator(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    replicate = pytest.importorskip("replicate")
    server, _ = emulator("replicate")
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.01")
    sdk = replicate.Client(api_token="r8_sdk_test", base_url=server.url)
    output = sdk.run(
        "black-forest-labs/flux-schnell",
        input={"prompt": "a lighthouse", "num_outputs": 2, "megapixels": "0.25"},
    )
    assert len(output) == 2
    # The SDK wraps https URLs in FileOutput and leaves others (the emulator's http) as strings.
    first = output[0]
    data = first.read() if hasattr(first, "read") else httpx.get(first).content
    image = Image.open(io.BytesIO(data))
    assert image.format == "WEBP" and image.width == 496
    # Version-pinned community model, and a prediction the SDK has to poll.
    _jobs(server, duration=5.0, polls=1)
    version = (
        "nightmareai/real-esrgan:42fed1c4974146d4d2414e2be2c5277c7fcf05fcc3a73abf41610695738c1d7b"
    )
    data = "data:image/png;base64," + __import__("base64").b64encode(_png(20, 10)).decode()
    prediction = sdk.predictions.create(version=version, input={"image": data, "scale": 2})
    prediction.wait()
    assert prediction.status == "succeeded"
    assert Image.open(io.BytesIO(httpx.get(prediction.output).content)).size == (40, 20)
    with pytest.raises(replicate.exceptions.ModelError, match="NSFW"):
        sdk.run("black-forest-labs/flux-schnell", input={"prompt": BLOCKED_WORD}, wait=False)
