"""``limner describe`` driven through the CLI against the Ideogram and Midjourney emulators."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from limner.cli import cli
from limner.emulators.common import EmulatorServer

EmulatorFactory = Callable[[str], tuple[EmulatorServer, str]]


def describe(*args: str) -> Result:
    return CliRunner().invoke(cli, ["describe", *args])


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (40, 90, 160)).save(path)
    return path


def test_ideogram_describes_as_text_and_json(
    emulator: EmulatorFactory, monkeypatch: pytest.MonkeyPatch, photo: Path
) -> None:
    _, url = emulator("ideogram")
    monkeypatch.setenv("IDEOGRAM_API_KEY", "ideo-test")
    monkeypatch.setenv("LIMNER_IDEOGRAM_BASE_URL", url)
    text = describe(str(photo))
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("1. ") and "64x48" in lines[0]
    as_json = describe(str(photo), "-m", "ideogram", "--json")
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.stdout)
    assert payload["model"].startswith("ideogram:") and payload["image"] == str(photo)
    assert [f"{i}. {d}" for i, d in enumerate(payload["descriptions"], 1)] == lines


def test_midjourney_describes_through_the_proxy(
    emulator: EmulatorFactory, monkeypatch: pytest.MonkeyPatch, photo: Path
) -> None:
    _, url = emulator("midjourney")
    monkeypatch.setenv("MIDJOURNEY_PROXY_URL", url)
    monkeypatch.setenv("MJ_API_SECRET", "mj-secret")
    result = describe(str(photo), "-m", "midjourney", "--poll-interval", "0.01", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["model"] == "midjourney:current"
    assert len(payload["descriptions"]) == 4
    assert all("colour bands" in d for d in payload["descriptions"])


def test_bad_input_exits_2_with_a_clear_message(photo: Path, tmp_path: Path) -> None:
    missing = describe(str(tmp_path / "nope.png"))
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    not_image = describe(str(text))
    assert not_image.exit_code == 2 and "is not an image" in not_image.stderr
    no_describe = describe(str(photo), "-m", "openai:gpt-image-2")
    assert no_describe.exit_code == 2
    assert "openai:gpt-image-2 cannot describe images" in no_describe.stderr
    assert "-m ideogram or -m midjourney" in no_describe.stderr
    unknown = describe(str(photo), "-m", "no-such-model")
    assert unknown.exit_code == 2 and "no-such-model" in unknown.stderr


def test_describe_is_listed_in_help() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert "describe" in result.stdout and "Suggest prompts for an image" in result.stdout
