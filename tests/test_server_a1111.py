"""The AUTOMATIC1111-compatible subset: txt2img, img2img with a mask, models, options, progress."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import pytest
from PIL import Image

from _server_fixtures import png_bytes, server_starter  # noqa: F401


@pytest.fixture
def server(openai_env: Any, start_server: Any) -> Any:
    return start_server()


def test_txt2img_returns_images_parameters_and_info(server: Any) -> None:
    body = {
        "prompt": "a lighthouse", "negative_prompt": "fog", "seed": 42, "steps": 20, "cfg_scale": 6,
        "width": 256, "height": 256, "batch_size": 2, "sampler_name": "Euler a",
        "override_settings": {"sd_model_checkpoint": "openai:gpt-image-2"},
    }  # fmt: skip
    response = httpx.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=30)
    assert response.status_code == 200
    data = response.json()
    assert len(data["images"]) == 2
    assert Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).size == (256, 256)
    info = json.loads(data["info"])
    assert info["prompt"] == "a lighthouse" and info["sd_model_name"] == "openai:gpt-image-2"
    assert info["width"] == 256 and len(info["all_seeds"]) == 2
    assert info["infotexts"][0].startswith("a lighthouse\nNegative prompt: fog\nSteps: 20")
    # gpt-image-2 takes no steps, CFG or seed: named, not silently dropped.
    assert set(info["extra_generation_params"]["not used by this model"]) >= {
        "steps",
        "guidance",
        "seed",
    }
    assert data["parameters"]["prompt"] == "a lighthouse"


def test_img2img_with_mask(server: Any) -> None:
    image = base64.b64encode(png_bytes(64, 64)).decode()
    mask = base64.b64encode(png_bytes(64, 64, (255, 255, 255))).decode()
    body = {
        "prompt": "paint it",
        "init_images": [image],
        "mask": mask,
        "override_settings": {"sd_model_checkpoint": "openai:gpt-image-2"},
    }
    data = httpx.post(server.url + "/sdapi/v1/img2img", json=body, timeout=30).json()
    assert json.loads(data["info"])["is_using_inpainting_conditioning"] is True
    wrong = {**body, "mask": base64.b64encode(png_bytes(32, 32)).decode()}
    response = httpx.post(server.url + "/sdapi/v1/img2img", json=wrong)
    assert response.status_code == 400 and "mask" in response.json()["detail"].lower()
    garbage = httpx.post(server.url + "/sdapi/v1/img2img", json={**body, "init_images": ["%%%"]})
    assert garbage.status_code == 400 and "base64" in garbage.json()["detail"]


def test_models_options_samplers_progress(server: Any) -> None:
    models = httpx.get(server.url + "/sdapi/v1/sd-models").json()
    assert any(m["title"] == "openai:gpt-image-2" for m in models)
    assert {"name", "aliases", "options"} <= set(
        httpx.get(server.url + "/sdapi/v1/samplers").json()[0]
    )
    assert (
        httpx.post(
            server.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "gpt-image-2"}
        ).status_code
        == 200
    )
    assert (
        httpx.get(server.url + "/sdapi/v1/options").json()["sd_model_checkpoint"]
        == "openai:gpt-image-2"
    )
    unknown = httpx.post(
        server.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "nope-model"}
    )
    assert unknown.status_code == 404
    progress = httpx.get(server.url + "/sdapi/v1/progress").json()
    assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0
