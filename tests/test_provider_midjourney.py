"""Midjourney (midjourney-proxy) provider driven end to end against the proxy emulator, and the
pure prompt-flag translation."""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import pytest
from PIL import Image

import limner
from limner import errors
from limner.emulators.common import BLOCKED_WORD, EmulatorServer
from limner.http import RetryPolicy
from limner.images import load_image
from limner.providers.midjourney import describe
from limner.providers.midjourney_flags import midjourney_prompt
from limner.store import Store
from limner.types import ImageRequest, Operation, ReferenceImage

EmulatorFactory = Callable[[str], tuple[EmulatorServer, str]]
FAST = {"poll_interval": 0.01}


@pytest.fixture
def proxy(emulator: EmulatorFactory, monkeypatch: pytest.MonkeyPatch) -> tuple[EmulatorServer, str]:
    server, url = emulator("midjourney")
    monkeypatch.setenv("MIDJOURNEY_PROXY_URL", url)
    monkeypatch.setenv("MJ_API_SECRET", "mj-secret")
    return server, url


def _png(color: tuple[int, int, int] = (90, 20, 140)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buf, format="PNG")
    return buf.getvalue()


def _stats(server: EmulatorServer) -> dict[str, int]:
    return dict(httpx.get(server.url + "/_emulator/stats").json())


def _fetches(server: EmulatorServer) -> int:
    return sum(v for k, v in _stats(server).items() if k.endswith("/fetch"))


# -- the flag translation -----------------------------------------------------------------------
def test_flags_cover_the_request_fields() -> None:
    request = ImageRequest(
        prompt="a lighthouse at dusk",
        aspect_ratio="16:9",
        negative_prompt="people, boats",
        seed=123,
        quality="2",
        style="raw",
        provider_options={"stylize": 250, "chaos": 20, "tile": True, "weird": 0},
    )
    text, warnings = midjourney_prompt(request, version="7")
    assert text == (
        "a lighthouse at dusk --ar 16:9 --no people, boats --seed 123 --q 2 --style raw "
        "--stylize 250 --chaos 20 --weird 0 --tile --v 7"
    )
    assert warnings == []


def test_size_becomes_a_reduced_aspect_and_prompt_flags_win() -> None:
    text, warnings = midjourney_prompt(
        ImageRequest(prompt="a cat --ar 1:1", size="1920x1080"), version="6.1"
    )
    assert text == "a cat --ar 1:1 --v 6.1"
    assert any("already sets --ar" in w for w in warnings)
    text, _ = midjourney_prompt(ImageRequest(prompt="a cat", size="1920x1080"))
    assert text == "a cat --ar 16:9"


def test_reference_flags_by_kind_and_version() -> None:
    image = load_image(_png())
    request = ImageRequest(
        prompt="a knight",
        references=[
            ReferenceImage(image=image, kind="style", weight=300),
            ReferenceImage(image=image, kind="character", weight=80),
            ReferenceImage(image=image, kind="content"),
        ],
    )
    urls = ["https://cdn/s.png", "https://cdn/c.png", "https://cdn/i.png"]
    text, warnings = midjourney_prompt(request, version="6.1", reference_urls=urls)
    assert (
        text
        == "https://cdn/i.png a knight --sref https://cdn/s.png --sw 300 --cref https://cdn/c.png --cw 80 --v 6.1"
    )
    text, warnings = midjourney_prompt(request, version="7", reference_urls=urls)
    assert "--oref https://cdn/c.png --ow 80" in text and "--cref" not in text
    assert any("--oref" in w for w in warnings)
    with pytest.raises(errors.InvalidRequestError, match="URLs"):
        midjourney_prompt(request)


def test_flag_values_are_range_checked() -> None:
    with pytest.raises(errors.InvalidRequestError, match="chaos must be between 0 and 100"):
        midjourney_prompt(ImageRequest(prompt="x", provider_options={"chaos": 500}))
    with pytest.raises(errors.InvalidRequestError, match="seeds"):
        midjourney_prompt(ImageRequest(prompt="x", seed=-1))


# -- the provider against the proxy emulator ------------------------------------------------------
def test_imagine_polls_through_the_statuses_and_splits_the_grid(
    proxy: tuple[EmulatorServer, str],
) -> None:
    server, _ = proxy
    seen: list[tuple[float | None, str]] = []
    with limner.Limner(on_progress=lambda f, m: seen.append((f, m))) as client:
        result = client.run(
            Operation.GENERATE,
            ImageRequest(
                prompt="a red fox",
                model="midjourney:v7",
                n=4,
                aspect_ratio="16:9",
                seed=5,
                provider_options=FAST,
            ),
        )
    assert len(result.images) == 4
    assert all(img.width > img.height for img in result.images)
    assert len({img.to_pil().tobytes() for img in result.images}) == 4
    statuses = [m.split()[1] for _, m in seen]
    assert statuses == ["NOT_START", "SUBMITTED", "IN_PROGRESS", "SUCCESS"]
    assert seen[-1][0] == 1.0
    assert result.images[0].revised_prompt == "a red fox --ar 16:9 --seed 5 --v 7"
    assert result.cost_usd is None  # subscription: no per-image price
    assert _stats(server)["POST /mj/submit/imagine"] == 1 and _fetches(server) == 4
    entry = Store(client.home).get(str(result.generation_id))
    assert entry is not None and entry.provider_request_id == result.request_id


def test_upscale_variation_and_reroll_act_on_the_task(proxy: tuple[EmulatorServer, str]) -> None:
    server, _ = proxy
    with limner.Limner() as client:
        grid = client.run(
            Operation.GENERATE,
            ImageRequest(prompt="a tower", model="midjourney:v7", n=2, provider_options=FAST),
        )
        task = {"task_id": grid.request_id, **FAST}
        up = client.run(
            Operation.UPSCALE,
            ImageRequest(model="midjourney:v7", provider_options={**task, "index": 2}),
        )
        var = client.run(
            Operation.VARIATION,
            ImageRequest(model="midjourney:v7", n=4, provider_options={**task, "index": 3}),
        )
        reroll = client.run(
            Operation.GENERATE,
            ImageRequest(
                prompt="a tower",
                model="midjourney:v7",
                provider_options={**task, "action": "reroll"},
            ),
        )
    assert len(up.images) == 1
    assert (
        up.images[0].to_pil().tobytes() == grid.images[1].to_pil().tobytes()
    )  # U2 is the second cell
    assert len(var.images) == 4 and len(reroll.images) == 1
    assert _stats(server)["POST /mj/submit/action"] == 3


def test_upscale_needs_a_task_and_a_valid_index(proxy: tuple[EmulatorServer, str]) -> None:
    with limner.Limner() as client:
        with pytest.raises(errors.InvalidRequestError, match="task_id"):
            client.run(
                Operation.UPSCALE, ImageRequest(model="midjourney:v7", images=[load_image(_png())])
            )
        with pytest.raises(errors.InvalidRequestError, match="index must be 1-4"):
            client.run(
                Operation.UPSCALE,
                ImageRequest(model="midjourney:v7", provider_options={"task_id": "1", "index": 9}),
            )
        with pytest.raises(errors.InvalidRequestError, match="no task"):
            client.run(
                Operation.UPSCALE,
                ImageRequest(
                    model="midjourney:v7", provider_options={"task_id": "nope", "index": 1}
                ),
            )


def test_blend_edit_and_references(proxy: tuple[EmulatorServer, str]) -> None:
    server, _ = proxy
    images = [load_image(_png((200, 0, 0))), load_image(_png((0, 200, 0)))]
    with limner.Limner() as client:
        blended = client.run(
            Operation.VARIATION,
            ImageRequest(
                model="midjourney:v7", images=images, aspect_ratio="2:3", provider_options=FAST
            ),
        )
        edited = client.run(
            Operation.EDIT,
            ImageRequest(
                prompt="as a mosaic",
                model="midjourney:v6.1",
                images=images[:1],
                provider_options=FAST,
            ),
        )
        styled = client.run(
            Operation.GENERATE,
            ImageRequest(
                prompt="a harbour",
                model="midjourney:v6.1",
                references=[
                    ReferenceImage(image=images[0], kind="style", weight=200),
                    ReferenceImage(image=images[1], kind="character"),
                ],
                provider_options=FAST,
            ),
        )
    assert blended.images[0].height > blended.images[0].width  # PORTRAIT
    assert len(edited.images) == 1
    prompt = styled.images[0].revised_prompt or ""
    assert (
        "--sref http://127.0.0.1" in prompt
        and "--sw 200" in prompt
        and "--cref http://127.0.0.1" in prompt
    )
    stats = _stats(server)
    assert (
        stats["POST /mj/submit/blend"] == 1 and stats["POST /mj/submit/upload-discord-images"] == 1
    )


def test_describe(proxy: tuple[EmulatorServer, str]) -> None:
    texts = describe(_png(), poll_interval=0.01)
    assert len(texts) == 4 and all("colour bands" in t for t in texts)


def test_banned_word_is_a_content_policy_error(proxy: tuple[EmulatorServer, str]) -> None:
    server, _ = proxy
    with pytest.raises(errors.ContentPolicyError, match="banned word"):
        limner.generate(f"a {BLOCKED_WORD}", model="midjourney:v7", provider_options=FAST)
    assert _fetches(server) == 0


def test_failed_task_and_errors_are_mapped(proxy: tuple[EmulatorServer, str]) -> None:
    server, _ = proxy
    with pytest.raises(errors.JobFailedError, match="bot reported an error"):
        limner.generate("fail-task please", model="midjourney:v7", provider_options=FAST)
    httpx.post(server.url + "/_emulator/midjourney", json={"secret": "other"})
    with pytest.raises(errors.AuthenticationError):
        limner.generate("x", model="midjourney:v7", provider_options=FAST)
    httpx.post(server.url + "/_emulator/midjourney", json={"secret": "mj-secret"})
    httpx.post(
        server.url + "/_emulator/faults",
        json={"status": 429, "retry_after": 0, "path": "/mj/submit", "count": 2},
    )
    assert (
        len(
            limner.generate("after throttling", model="midjourney:v7", provider_options=FAST).images
        )
        == 1
    )
    assert (
        _stats(server)["POST /mj/submit/imagine"] == 5
    )  # fail-task, the refused one, 2 x 429, the success


def test_poll_timeout_is_configurable(proxy: tuple[EmulatorServer, str]) -> None:
    server, _ = proxy
    httpx.post(server.url + "/_emulator/midjourney", json={"polls_to_finish": 1000})
    with pytest.raises(errors.ProviderTimeoutError, match=r"did not finish within 0\.05s"):
        limner.generate(
            "slow",
            model="midjourney:v7",
            provider_options={"poll_interval": 0.01, "poll_timeout": 0.05},
        )


def test_full_queue_is_a_rate_limit(proxy: tuple[EmulatorServer, str]) -> None:
    server, _ = proxy
    httpx.post(server.url + "/_emulator/midjourney", json={"polls_to_finish": 1000})
    with pytest.raises(errors.ProviderTimeoutError):
        limner.generate(
            "hold the queue",
            model="midjourney:v7",
            provider_options={"poll_interval": 0.01, "poll_timeout": 0.02},
        )
    httpx.post(server.url + "/_emulator/midjourney", json={"queue_size": 1})
    with (
        limner.Limner(retry=RetryPolicy(max_attempts=1)) as client,
        pytest.raises(errors.RateLimitError, match="queue is full"),
    ):
        client.run(
            Operation.GENERATE,
            ImageRequest(prompt="x", model="midjourney:v7", provider_options=FAST),
        )


def test_client_deadline_stops_polling(proxy: tuple[EmulatorServer, str]) -> None:
    server, _ = proxy
    httpx.post(server.url + "/_emulator/midjourney", json={"polls_to_finish": 1000})
    with (
        limner.Limner(deadline_s=0.3) as client,
        pytest.raises(errors.ProviderTimeoutError, match="deadline"),
    ):
        client.run(
            Operation.GENERATE,
            ImageRequest(
                prompt="slow", model="midjourney:v7", provider_options={"poll_interval": 0.02}
            ),
        )


async def test_async_driver_runs_the_same_flow(proxy: tuple[EmulatorServer, str]) -> None:
    result = await limner.agenerate(
        "an async owl", model="midjourney:v7", n=2, provider_options=FAST
    )
    assert len(result.images) == 2 and result.request_id
