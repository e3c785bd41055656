"""The OpenAI provider end to end against the emulator: library, async, retries, errors, log."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

import limner
from limner import errors
from limner.client import Limner
from limner.http import RetryPolicy
from limner.metadata import read_metadata
from limner.store import Store

FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05)


def png(w: int, h: int, color: tuple[int, ...] = (200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def stats(url: str) -> dict[str, int]:
    return dict(httpx.get(url.removesuffix("/v1") + "/_emulator/stats").json())


def fault(url: str, **spec: object) -> None:
    httpx.post(url.removesuffix("/v1") + "/_emulator/faults", json=spec).raise_for_status()


def test_generate_returns_sized_images_cost_and_log(openai_env) -> None:
    result = limner.generate(
        "a blue logo", model="openai:gpt-image-2", size="1536x1024", quality="high", n=2
    )
    assert [(i.width, i.height) for i in result.images] == [(1536, 1024)] * 2
    assert result.usage.output_tokens and result.usage.output_tokens > 0
    # cost from the reported tokens at the catalog's rates, not the list price
    expected = (result.usage.input_text_tokens * 5 + result.usage.output_image_tokens * 30) / 1e6
    assert result.cost_usd == pytest.approx(expected)
    assert result.request_id and result.request_id.startswith("req_")
    entry = Store().get(result.generation_id)
    assert entry is not None and entry.status == "ok" and entry.cost_usd == result.cost_usd
    assert [img.path.exists() for img in entry.images] == [True, True]
    assert read_metadata(entry.images[0].path.read_bytes())["prompt"] == "a blue logo"


async def test_agenerate_matches_sync(openai_env) -> None:
    sync = limner.generate("same prompt", model="gpt-image-2", size="1024x1024")
    result = await limner.agenerate("same prompt", model="gpt-image-2", size="1024x1024")
    assert result.images[0].sha256 is not None
    assert (result.images[0].width, result.images[0].height) == (
        sync.images[0].width,
        sync.images[0].height,
    )
    assert result.model == sync.model == "openai:gpt-image-2"


def test_n_above_model_max_is_split_into_parallel_calls(openai_env) -> None:
    _, url = openai_env
    result = limner.generate("many", model="openai:gpt-image-1.5", size="1024x1024", n=13)
    assert len(result.images) == 13
    assert stats(url)["POST /v1/images/generations"] == 2


def test_dalle3_url_results_downloaded_and_revised_prompt_kept(openai_env) -> None:
    _, url = openai_env
    result = limner.generate(
        "a fox", model="openai:dall-e-3", quality="hd", size="1792x1024", style="natural"
    )
    assert result.images[0].revised_prompt == "a fox, rendered in rich detail"
    assert result.cost_usd == pytest.approx(0.12)
    counts = stats(url)
    assert counts["POST /v1/images/generations"] == 1


def test_edit_with_mask_and_variations(openai_env, tmp_path) -> None:
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    photo.write_bytes(png(512, 512))
    m = Image.new("L", (512, 512), 0)
    m.paste(255, (0, 256, 512, 512))
    m.save(mask)
    edited = limner.edit(photo, "add a red car", mask=mask, model="openai:gpt-image-2")
    assert edited.operation == limner.Operation.INPAINT
    assert (edited.images[0].width, edited.images[0].height) == (512, 512)
    many = limner.edit([photo, photo], "combine", model="openai:gpt-image-2")
    assert many.images
    varied = limner.variations(photo, model="openai:dall-e-2", n=3, size="256x256")
    assert len(varied.images) == 3 and varied.images[0].width == 256


def test_retries_429_honouring_retry_after(openai_env) -> None:
    _, url = openai_env
    fault(url, status=429, retry_after_ms=10, count=2, path="/v1/images")
    with Limner(retry=FAST_RETRY) as client:
        request = limner.build_request(limner.Operation.GENERATE, "x", "gpt-image-2", [], None, {})
        result = client.run(limner.Operation.GENERATE, request)
    assert result.images
    assert stats(url)["POST /v1/images/generations"] == 3


def test_server_errors_exhaust_retries_and_are_logged(openai_env) -> None:
    _, url = openai_env
    fault(url, status=500, count=5, path="/v1/images")
    with Limner(retry=FAST_RETRY) as client:
        request = limner.build_request(limner.Operation.GENERATE, "x", "gpt-image-2", [], None, {})
        with pytest.raises(errors.ProviderUnavailableError):
            client.run(limner.Operation.GENERATE, request)
    assert stats(url)["POST /v1/images/generations"] == 3
    [entry] = Store().search(status="error")
    assert entry.error_type == "ProviderUnavailableError"


def test_content_policy_refusal_is_an_error_not_empty(openai_env) -> None:
    with pytest.raises(errors.ContentPolicyError, match="safety system"):
        limner.generate("forbidden-content", model="gpt-image-2")


def test_rejected_auth_and_rate_limit_mapping(openai_env) -> None:
    _, url = openai_env
    fault(url, status=401, count=1)
    with pytest.raises(errors.AuthenticationError):
        limner.generate("x", model="gpt-image-2")
    fault(url, status=429, count=5)
    with Limner(retry=FAST_RETRY) as client, pytest.raises(errors.RateLimitError):
        client.run("generate", limner.ImageRequest(prompt="x", model="gpt-image-2"))


def test_deadline_turns_slow_response_into_timeout(openai_env) -> None:
    _, url = openai_env
    fault(url, delay=3, count=1)
    client = httpx.Client(timeout=httpx.Timeout(1.0))
    with (
        Limner(http_client=client, retry=RetryPolicy(max_attempts=1)) as lm,
        pytest.raises(errors.ProviderTimeoutError),
    ):
        lm.run("generate", limner.ImageRequest(prompt="x", model="gpt-image-2"))


def test_retired_model_needs_a_base_url(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    with pytest.raises(errors.RetiredModelError, match="gpt-image-2"):
        limner.generate("x", model="openai:dall-e-3")


def test_missing_key_names_env_var_and_command() -> None:
    with pytest.raises(errors.MissingKeyError) as info:
        limner.generate("x", model="openai:gpt-image-2")
    assert "OPENAI_API_KEY" in str(info.value) and "limner keys set openai" in str(info.value)


def test_seeded_request_is_cached_at_zero_cost(openai_env) -> None:
    _, url = openai_env
    first = limner.generate("cache me", model="gpt-image-2", seed=7)
    second = limner.generate("cache me", model="gpt-image-2", seed=7)
    assert not first.cache_hit and second.cache_hit
    assert second.cost_usd == 0.0
    assert second.images[0].sha256 == first.images[0].sha256
    assert stats(url)["POST /v1/images/generations"] == 1
    third = limner.generate("cache me", model="gpt-image-2", seed=7, use_cache=False)
    assert not third.cache_hit
    assert stats(url)["POST /v1/images/generations"] == 2
    hits = [e for e in Store().search("cache") if e.cache_hit]
    assert len(hits) == 1 and hits[0].cost_usd == 0.0


def test_api_key_never_in_log_or_metadata(openai_env) -> None:
    result = limner.generate("secret check", model="gpt-image-2")
    data = result.images[0].data
    assert b"sk-test-123456" not in data
    db = (Store().home / "limner.db").read_bytes()
    assert b"sk-test-123456" not in db
