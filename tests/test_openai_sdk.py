"""The official ``openai`` SDK, unchanged but for its base URL, against our emulator."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image


def png_file(w: int, h: int, mode: str = "RGB") -> io.BytesIO:
    buf = io.BytesIO()
    Image.new(mode, (w, h), (0, 0, 0, 0) if mode == "RGBA" else (90, 90, 200)).save(
        buf, format="PNG"
    )
    buf.seek(0)
    buf.name = "image.png"
    return buf


@pytest.fixture
def client(openai_env):
    _, url = openai_env
    return openai.OpenAI(api_key="sk-test", base_url=url, max_retries=0)


def test_sdk_generate(client) -> None:
    response = client.images.generate(
        model="gpt-image-2", prompt="a lighthouse", size="1024x1536", quality="low", n=2
    )
    assert len(response.data) == 2
    img = Image.open(io.BytesIO(base64.b64decode(response.data[0].b64_json)))
    assert img.size == (1024, 1536)
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.size == "1024x1536" and response.quality == "low"


def test_sdk_dalle3_url_and_revised_prompt(client) -> None:
    response = client.images.generate(
        model="dall-e-3", prompt="a fox", size="1024x1792", response_format="url"
    )
    assert response.data[0].url and response.data[0].revised_prompt
    import httpx

    body = httpx.get(response.data[0].url).content
    assert Image.open(io.BytesIO(body)).size == (1024, 1792)


def test_sdk_edit_with_mask_and_multiple_images(client) -> None:
    response = client.images.edit(
        model="gpt-image-2",
        image=[png_file(256, 256), png_file(256, 256)],
        mask=png_file(256, 256, "RGBA"),
        prompt="merge",
    )
    assert Image.open(io.BytesIO(base64.b64decode(response.data[0].b64_json))).size == (256, 256)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_sdk_variations(client) -> None:
    response = client.images.create_variation(
        model="dall-e-2", image=png_file(256, 256), n=2, size="512x512", response_format="b64_json"
    )
    assert len(response.data) == 2


def test_sdk_sees_openai_errors(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="gpt-image-2", prompt="forbidden-content here")
    assert info.value.code == "moderation_blocked"
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="gpt-image-2", prompt="x", response_format="url")
    assert info.value.param == "response_format"
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="dall-e-3", prompt="x", n=2)
