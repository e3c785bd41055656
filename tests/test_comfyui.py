"""The comfyui: provider against its emulator, and the ComfyUI workflow export."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from limner import errors
from limner.client import Limner
from limner.emulators.common import BLOCKED_WORD, EmulatorServer
from limner.images import load_image
from limner.local.comfyui import workflow_for
from limner.types import ImageRequest

Start = Callable[[str], tuple[EmulatorServer, str]]


@pytest.fixture
def comfy(emulator: Start, monkeypatch: pytest.MonkeyPatch) -> tuple[EmulatorServer, str]:
    server, url = emulator("comfyui")
    monkeypatch.setenv("LIMNER_COMFYUI_BASE_URL", url)
    return server, url


def _settings(url: str, **values: Any) -> None:
    httpx.post(f"{url}/_emulator/comfyui", json=values).raise_for_status()


def test_generate_queues_polls_and_downloads(
    comfy: tuple[EmulatorServer, str], tmp_path: Any
) -> None:
    _, url = comfy
    _settings(url, run_seconds=0.4)
    with Limner(home=tmp_path) as client:
        result = client.run("generate", ImageRequest(prompt="a lighthouse", model="comfyui:sd_xl_base_1.0.safetensors",
                                                     size="128x96", n=2, seed=11, steps=12))  # fmt: skip
    assert [(i.width, i.height) for i in result.images] == [(128, 96), (128, 96)]
    stats = httpx.get(f"{url}/_emulator/stats").json()
    assert stats["POST /prompt"] == 1 and stats["GET /view"] == 2
    assert stats[f"GET /history/{result.request_id}"] >= 2  # {} while running, then the outputs


def test_websocket_progress_per_step(comfy: tuple[EmulatorServer, str], tmp_path: Any) -> None:
    _, url = comfy
    _settings(url, run_seconds=1.0)
    seen: list[tuple[float | None, str]] = []
    with Limner(home=tmp_path, on_progress=lambda f, m: seen.append((f, m))) as client:
        result = client.run("generate", ImageRequest(prompt="a fox", model="comfyui:any.safetensors",
                                                     size="64x64", steps=10, seed=3))  # fmt: skip
    steps = [m for f, m in seen if m.startswith("step ")]
    assert steps and all(m.endswith("/10") for m in steps)
    assert all(0 < (f or 0) < 1 for f, m in seen if m.startswith("step "))
    assert result.images


def test_edit_uploads_the_image_and_mask(comfy: tuple[EmulatorServer, str], tmp_path: Any) -> None:
    _, url = comfy
    image = load_image(Image.new("RGB", (64, 64), "red"))
    mask = load_image(Image.new("L", (64, 64), 255))
    with Limner(home=tmp_path) as client:
        result = client.run("inpaint", ImageRequest(prompt="a door", model="comfyui:v1-5.safetensors", images=[image],
                                                    mask=mask, strength=0.6, seed=1))  # fmt: skip
    assert result.images
    stats = httpx.get(f"{url}/_emulator/stats").json()
    assert stats["POST /upload/image"] == 2


def test_workflow_errors_name_the_node(comfy: tuple[EmulatorServer, str], tmp_path: Any) -> None:
    bad = {
        "1": {"class_type": "NoSuchNode", "inputs": {}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["1", 0]}},
    }
    with (
        Limner(home=tmp_path) as client,
        pytest.raises(errors.ProviderRejectedError, match="NoSuchNode"),
    ):
        client.run(
            "generate",
            ImageRequest(
                prompt="x", model="comfyui:any.safetensors", provider_options={"workflow": bad}
            ),
        )


def test_execution_error_is_a_failed_job(comfy: tuple[EmulatorServer, str], tmp_path: Any) -> None:
    with (
        Limner(home=tmp_path) as client,
        pytest.raises(errors.JobFailedError, match="content filter"),
    ):
        client.run(
            "generate",
            ImageRequest(prompt=f"a {BLOCKED_WORD}", model="comfyui:any.safetensors", size="64x64"),
        )


def test_deadline_interrupts_the_prompt(comfy: tuple[EmulatorServer, str], tmp_path: Any) -> None:
    _, url = comfy
    _settings(url, run_seconds=30)
    with (
        Limner(home=tmp_path, deadline_s=0.6) as client,
        pytest.raises(errors.ProviderTimeoutError),
    ):
        client.run(
            "generate", ImageRequest(prompt="slow", model="comfyui:any.safetensors", size="64x64")
        )
    stats = httpx.get(f"{url}/_emulator/stats").json()
    assert stats["POST /interrupt"] == 1 and stats["POST /queue"] == 1


def test_exported_workflow_is_accepted_by_the_server(comfy: tuple[EmulatorServer, str]) -> None:
    _, url = comfy
    wf = workflow_for(checkpoint="sd_turbo.safetensors", family="sd", prompt="a fox", negative_prompt="blur", seed=42,
                      steps=3, cfg=1.5, width=512, height=512, scheduler="dpm++-2m-karras",
                      loras=[("style.safetensors", 0.7)])  # fmt: skip
    sampler = wf["3"]["inputs"]
    assert (
        sampler["seed"],
        sampler["steps"],
        sampler["cfg"],
        sampler["sampler_name"],
        sampler["scheduler"],
    ) == (42, 3, 1.5, "dpmpp_2m", "karras")
    assert wf["5"]["inputs"] == {"width": 512, "height": 512, "batch_size": 1}
    response = httpx.post(f"{url}/prompt", json={"prompt": wf})
    assert response.status_code == 200, response.text
    assert json.loads(json.dumps(wf)) == wf
