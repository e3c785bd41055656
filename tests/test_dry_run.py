"""--dry-run on rerun, outpaint, upscale and remove-bg: the request and its cost, nothing sent."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from limner.cli import cli
from limner.emulators.common import EmulatorServer

Emulator = Callable[[str], tuple[EmulatorServer, str]]


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (30, 90, 200)).save(path)
    return path


def _cloud(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, name: str, key_env: str) -> str:
    server, url = emulator(name)
    monkeypatch.setenv(key_env, "test-key-123")
    monkeypatch.setenv(f"LIMNER_{name.upper()}_BASE_URL", url)
    return server.url


def _sent(server_url: str) -> int:
    return int(httpx.get(f"{server_url}/_emulator/stats").json().get("total", 0))


def _invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize(
    ("command", "provider", "key_env", "model", "operation"),
    [
        ("upscale", "recraft", "RECRAFT_API_TOKEN", "recraft:recraftv4_1", "upscale"),
        ("remove-bg", "removebg", "REMOVEBG_API_KEY", "removebg:remove-bg", "remove-background"),
        ("outpaint", "stability", "STABILITY_API_KEY", "stability:inpaint", "inpaint"),
    ],
)
def test_cloud_ops_dry_run_send_nothing(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, picture: Path, tmp_path: Path,
    command: str, provider: str, key_env: str, model: str, operation: str,
) -> None:  # fmt: skip
    root = _cloud(emulator, monkeypatch, provider, key_env)
    extra = ["--left", "32", "-p", "more sky"] if command == "outpaint" else []
    out = tmp_path / "out.png"
    body = json.loads(
        _invoke(command, str(picture), "-m", model, *extra, "-o", str(out), "--dry-run", "--json").stdout
    )  # fmt: skip
    assert (body["model"], body["operation"]) == (model, operation)
    assert body["request"] and body["estimated_cost_usd"] > 0
    text = _invoke(command, str(picture), "-m", model, *extra, "--dry-run").stdout
    assert "nothing sent" in text and "Estimated cost: $" in text
    assert _sent(root) == 0 and not out.exists()


@pytest.mark.parametrize(("command", "model"), [("upscale", "lanczos"), ("remove-bg", "grabcut")])
def test_local_ops_dry_run_say_they_cost_nothing(
    picture: Path, tmp_path: Path, command: str, model: str
) -> None:
    out = tmp_path / "out.png"
    body = json.loads(_invoke(command, str(picture), "-o", str(out), "--dry-run", "--json").stdout)
    assert body["model"] == model and body["local"] is True and body["estimated_cost_usd"] == 0.0
    assert body["input_size"] == "64x48"
    text = _invoke(command, str(picture), "--dry-run").stdout
    assert "on this machine" in text and "$0.0000 (local)" in text
    assert not out.exists() and not list(picture.parent.glob("in-*.png"))


def test_rerun_dry_run_sends_nothing(openai_env: Any, tmp_path: Path) -> None:
    _, url = openai_env
    root = url.rsplit("/v1", 1)[0]
    made = json.loads(
        _invoke("generate", "a red kite", "-m", "openai:gpt-image-2", "--size", "1024x1024",
                "-o", str(tmp_path), "--json").stdout
    )  # fmt: skip
    assert _sent(root) == 1
    gen_id = made["generation_id"]
    body = json.loads(_invoke("rerun", gen_id, "--seed", "5", "--dry-run", "--json").stdout)
    assert (
        body["model"] == "openai:gpt-image-2" and body["request"]["json"]["prompt"] == "a red kite"
    )
    assert body["estimated_cost_usd"] > 0
    assert "Estimated cost: $" in _invoke("rerun", gen_id, "--dry-run").stdout
    assert len(list(tmp_path.glob("*.png"))) == 1  # nothing new written either
    assert _sent(root) == 1  # only the original generation reached the emulator
