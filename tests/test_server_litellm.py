"""LiteLLM, used as a client with our server as its OpenAI-compatible backend.

Needs ``pip install litellm==1.106.2`` (skipped otherwise). That release declares openai<3 but
works with the openai 3.x this project tests with; reinstall the project's openai afterwards."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from _server_fixtures import server_starter  # noqa: F401

litellm = pytest.importorskip("litellm")


@pytest.mark.slow
def test_litellm_image_generation_through_the_server(
    openai_env: Any, start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch of the price map
    server = start_server()
    response = litellm.image_generation(
        model="openai/openai:gpt-image-2", prompt="a paper crane", size="256x256",
        api_base=server.url + "/v1", api_key="unused-on-loopback",
    )  # fmt: skip
    data = response.data[0].b64_json
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (256, 256)
    # LiteLLM maps the 404 to its BadRequestError; the server's message travels through.
    with pytest.raises(Exception, match="Unknown model 'no-such-model'"):
        litellm.image_generation(
            model="openai/no-such-model", prompt="x", api_base=server.url + "/v1", api_key="k"
        )
