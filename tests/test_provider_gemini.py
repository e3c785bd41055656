"""Gemini provider driven end to end against the Gemini emulator (and the emulator against the
official google-genai SDK)."""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import pytest
from PIL import Image

import limner
from _provider_helpers import emulator_stats, generate
from limner import errors
from limner.emulators.common import BLOCKED_WORD, EmulatorServer
from limner.images import load_image
from limner.store import Store
from limner.types import ImageRequest, Operation, ReferenceImage

EmulatorFactory = Callable[[str], tuple[EmulatorServer, str]]


@pytest.fixture
def gemini(
    emulator: EmulatorFactory, monkeypatch: pytest.MonkeyPatch
) -> tuple[EmulatorServer, str]:
    server, url = emulator("gemini")
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-test")
    monkeypatch.setenv("LIMNER_GEMINI_BASE_URL", url)
    return server, url


def _png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_generate_sends_aspect_and_size_and_costs_by_tokens(
    gemini: tuple[EmulatorServer, str],
) -> None:
    result = limner.generate(
        "a red kite over dunes",
        model="gemini:gemini-3.1-flash-image",
        aspect_ratio="16:9",
        quality="2K",
        seed=7,
    )
    image = result.images[0]
    assert image.width > image.height  # 16:9 honoured
    assert result.usage.output_image_tokens == 1680  # the 2K token count
    assert result.cost_usd == pytest.approx(
        1680 * 60 / 1e6 + (result.usage.input_text_tokens or 0) * 0.5 / 1e6, abs=1e-6
    )
    assert image.revised_prompt and "red kite" in image.revised_prompt
    entry = Store(limner.Limner().home).get(str(result.generation_id))
    assert entry is not None and entry.cost_usd == pytest.approx(result.cost_usd)


def test_size_is_mapped_to_nearest_aspect_with_warning(gemini: tuple[EmulatorServer, str]) -> None:
    result = limner.generate("a tall tower", model="gemini:gemini-3.1-flash-image", size="768x1366")
    assert any("aspect ratio 9:16" in w for w in result.warnings)
    assert result.images[0].height > result.images[0].width


def test_n_above_one_is_split_into_calls(gemini: tuple[EmulatorServer, str]) -> None:
    server, _ = gemini
    result = limner.generate("two cats", model="gemini:gemini-3.1-flash-image", n=2)
    assert len(result.images) == 2
    assert (
        emulator_stats(server)["POST /v1beta/models/gemini-3.1-flash-image-preview:generateContent"]
        == 2
    )


def test_thought_images_are_not_results(gemini: tuple[EmulatorServer, str]) -> None:
    result = limner.generate(
        "a poster saying HELLO", model="gemini:gemini-3-pro-image", quality="4K"
    )
    assert len(result.images) == 1
    assert result.usage.output_image_tokens == 2000
    assert result.cost_usd is not None and result.cost_usd > 0.24


def test_edit_sends_input_and_reference_images_as_inline_parts(
    gemini: tuple[EmulatorServer, str],
) -> None:
    plain = limner.generate("make it blue", model="gemini:gemini-3.1-flash-image", seed=1)
    edited = limner.edit(_png(), "make it blue", model="gemini:gemini-3.1-flash-image", seed=1)
    assert edited.usage.input_image_tokens == 258
    assert edited.images[0].to_pil().tobytes() != plain.images[0].to_pil().tobytes()
    styled = limner.generate(
        "a castle",
        model="gemini:gemini-3.1-flash-image",
        references=[ReferenceImage(image=load_image(_png((0, 0, 255))), kind="style")],
    )
    assert styled.usage.input_image_tokens == 258


def test_native_request_shows_generate_content_body() -> None:
    from limner.catalog import get_catalog
    from limner.providers.gemini import GeminiProvider

    spec = get_catalog().resolve("gemini:gemini-3.1-flash-image")
    native = GeminiProvider(api_key="k").native_request(
        Operation.GENERATE,
        ImageRequest(prompt="p", aspect_ratio="21:9", quality="4K", seed=3),
        spec,
    )
    assert native["path"] == "/models/gemini-3.1-flash-image-preview:generateContent"
    config = native["json"]["generationConfig"]
    assert config["imageConfig"] == {"aspectRatio": "21:9", "imageSize": "4K"}
    assert "IMAGE" in config["responseModalities"] and config["seed"] == 3


def test_safety_block_is_a_content_policy_error(gemini: tuple[EmulatorServer, str]) -> None:
    with pytest.raises(errors.ContentPolicyError, match="IMAGE_SAFETY"):
        limner.generate(f"a {BLOCKED_WORD} scene", model="gemini:gemini-3.1-flash-image")


def test_prompt_block_reason_is_a_content_policy_error(gemini: tuple[EmulatorServer, str]) -> None:
    server, _ = gemini
    body = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 3},
    }
    httpx.post(server.url + "/_emulator/faults", json={"status": 200, "body": body})
    with pytest.raises(errors.ContentPolicyError, match="PROHIBITED_CONTENT"):
        limner.generate("anything", model="gemini:gemini-3.1-flash-image")


def test_errors_are_mapped(gemini: tuple[EmulatorServer, str], client: limner.Limner) -> None:
    server, _ = gemini
    with pytest.raises(errors.InvalidRequestError, match="quality"):
        generate(client, "x", model="gemini:gemini-3-pro-image", quality="512")
    httpx.post(
        server.url + "/_emulator/faults",
        json={
            "status": 400,
            "body": {"error": {"code": 400, "message": "Bad thing", "status": "INVALID_ARGUMENT"}},
        },
    )
    with pytest.raises(errors.ProviderRejectedError, match="Bad thing"):
        generate(client, "x", model="gemini:gemini-3.1-flash-image")
    httpx.post(server.url + "/_emulator/faults", json={"status": 403, "count": 1})
    with pytest.raises(errors.AuthenticationError, match="PERMISSION_DENIED"):
        generate(client, "x", model="gemini:gemini-3.1-flash-image")
    httpx.post(server.url + "/_emulator/faults", json={"status": 429, "retry_after": 0, "count": 1})
    result = generate(client, "retried", model="gemini:gemini-3.1-flash-image")
    assert len(result.images) == 1


def test_missing_key_is_refused_before_sending(
    emulator: EmulatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, url = emulator("gemini")
    monkeypatch.setenv("LIMNER_GEMINI_BASE_URL", url)
    with pytest.raises(errors.MissingKeyError, match="GEMINI_API_KEY"):
        limner.generate("x", model="gemini:gemini-3.1-flash-image")
    assert emulator_stats(server).get("total", 0) == 0


def test_retired_models_are_refused_on_google_but_run_on_a_compatible_server(
    gemini: tuple[EmulatorServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = limner.generate("a fox", model="gemini:imagen-4", n=2, aspect_ratio="16:9")
    assert len(result.images) == 2 and result.cost_usd == pytest.approx(0.08)
    monkeypatch.delenv("LIMNER_GEMINI_BASE_URL")
    with pytest.raises(errors.RetiredModelError, match="2026-10-02"):
        limner.generate("a fox", model="gemini:gemini-2.5-flash-image")


def test_google_genai_sdk_drives_the_emulator(gemini: tuple[EmulatorServer, str]) -> None:
    genai = pytest.importorskip("google.genai")
    from google.genai import types

    server, _ = gemini
    client = genai.Client(api_key="AIza-test", http_options=types.HttpOptions(base_url=server.url))
    response = client.models.generate_content(
        model="gemini-3.1-flash-image-preview",
        contents=[
            "a lighthouse at dawn",
            types.Part.from_bytes(data=_png(), mime_type="image/png"),
        ],
        config=types.GenerateContentConfig(
            response_modalities=["TEXT", "IMAGE"],
            image_config=types.ImageConfig(aspect_ratio="16:9", image_size="1K"),
        ),
    )
    parts = [p for p in response.candidates[0].content.parts if p.inline_data and not p.thought]
    image = Image.open(io.BytesIO(parts[0].inline_data.data))
    assert image.width > image.height
    assert response.usage_metadata.candidates_token_count >= 1120
    with pytest.raises(genai.errors.ClientError) as caught:
        client.models.generate_content(model="gemini-9-unknown", contents="x")
    assert caught.value.code == 404


def test_google_api_key_is_read_too_and_the_emulator_checks_auth(
    emulator: EmulatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = emulator("gemini")
    monkeypatch.setenv("LIMNER_GEMINI_BASE_URL", url)
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-google")
    assert len(limner.generate("a pear", model="gemini:gemini-3.1-flash-image").images) == 1
    anonymous = httpx.post(
        url + "/models/gemini-3.1-flash-image-preview:generateContent", json={"contents": []}
    )
    assert (
        anonymous.status_code == 403 and anonymous.json()["error"]["status"] == "PERMISSION_DENIED"
    )
