"""The CLI: outputs, exit codes (0 ok, 1 runtime failure, 2 bad input), keys, logs, export."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner
from PIL import Image

from limner.cli import cli


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def png(path, w=64, h=64):
    Image.new("RGB", (w, h), (9, 9, 9)).save(path)
    return str(path)


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from limner.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'cv2', 'onnxruntime', 'httpx', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "HEAVY []" in out


def test_generate_json_saves_files(openai_env, tmp_path) -> None:
    code, out, _ = run("generate", "a logo", "-m", "openai:gpt-image-2", "--size", "1024x1024", "--quality", "high",
                       "-n", "2", "-o", str(tmp_path / "out"), "--json")  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert len(data["images"]) == 2 and data["cost_usd"] > 0
    for image in data["images"]:
        assert os.path.exists(image["path"]) and image["width"] == 1024
        assert Image.open(image["path"]).info["parameters"].startswith("a logo")


def test_edit_and_variations_commands(openai_env, tmp_path) -> None:
    photo = png(tmp_path / "photo.png", 256, 256)
    mask = tmp_path / "mask.png"
    Image.new("L", (256, 256), 255).save(mask)
    code, out, _ = run(
        "edit",
        photo,
        "add a car",
        "--mask",
        str(mask),
        "-m",
        "gpt-image-2",
        "-o",
        str(tmp_path / "e"),
        "--json",
    )
    assert code == 0 and json.loads(out)["operation"] == "inpaint"
    code, out, err = run(
        "variations",
        photo,
        "-m",
        "openai:dall-e-2",
        "-n",
        "3",
        "--size",
        "256x256",
        "-o",
        str(tmp_path / "v"),
        "--json",
    )
    assert code == 0, err
    assert len(json.loads(out)["images"]) == 3


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["generate", "", "-m", "gpt-image-2"], "prompt is empty"),
        (["generate", "x", "-m", "gpt-imagee-2"], "Did you mean"),
        (
            ["generate", "x", "-m", "openai:gpt-image-1.5", "--size", "1000x1000"],
            "Allowed: auto, 1024x1024",
        ),
        (["generate", "x", "-m", "gpt-image-2", "-n", "0"], "n must be between"),
        (["generate", "x", "-m", "gpt-image-2", "--option", "nonsense"], "KEY=VALUE"),
        (["models", "--capability", "teleport"], "Unknown capability"),
        (["logs", "--since", "yesterday-ish"], "not a duration"),
    ],
)
def test_bad_input_exits_2_with_message(openai_env, args: list[str], needle: str) -> None:
    code, out, err = run(*args)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err + out


def test_bad_images_exit_2(openai_env, tmp_path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("hello")
    code, _, err = run("edit", str(text), "x", "-m", "gpt-image-2")
    assert code == 2 and "not an image" in err
    photo, mask = png(tmp_path / "p.png", 64, 64), png(tmp_path / "m.png", 32, 32)
    code, _, err = run("edit", photo, "x", "--mask", mask, "-m", "gpt-image-2")
    assert code == 2 and "mask is 32x32" in err


def test_missing_key_and_retired_model_exit_2() -> None:
    code, _, err = run("generate", "x", "-m", "openai:gpt-image-2")
    assert code == 2 and "OPENAI_API_KEY" in err and "limner keys set openai" in err
    code, _, err = run("generate", "x", "-m", "openai:dall-e-2", env={"OPENAI_API_KEY": "sk-1"})
    assert code == 2 and "openai:gpt-image-2" in err


def test_provider_failure_exits_1(openai_env) -> None:
    code, _, err = run("generate", "forbidden-content", "-m", "gpt-image-2")
    assert code == 1 and "safety system" in err


def test_dry_run_sends_nothing(openai_env) -> None:
    import httpx

    _, url = openai_env
    code, out, _ = run(
        "generate",
        "a cat",
        "-m",
        "openai:dall-e-3",
        "--quality",
        "hd",
        "--size",
        "1792x1024",
        "--dry-run",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert data["request"]["json"]["model"] == "dall-e-3" and data["estimated_cost_usd"] == 0.12
    stats = httpx.get(url.removesuffix("/v1") + "/_emulator/stats").json()
    assert stats.get("total", 0) == 0


def test_keys_file_is_private_and_env_wins(openai_env, tmp_path, monkeypatch) -> None:
    code, _, _ = run("keys", "set", "openai", "--value", "sk-from-file")
    assert code == 0
    code, path, _ = run("keys", "path")
    mode = stat.S_IMODE(os.stat(path.strip()).st_mode)
    assert mode == 0o600
    code, out, _ = run("keys", "list", "--json")
    assert {"provider": "openai", "source": "env OPENAI_API_KEY"} in json.loads(out)
    assert "sk-from-file" not in out
    monkeypatch.delenv("OPENAI_API_KEY")
    code, out, _ = run("keys", "list")
    assert "openai: keys.json" in out
    code, _, err = run("generate", "x", "-m", "gpt-image-2", "-o", str(tmp_path))
    assert code == 0, err  # the stored key is used when the env var is absent
    assert run("keys", "set", "nosuch", "--value", "x")[0] == 2


def test_logs_search_and_manifest_export(openai_env, tmp_path) -> None:
    run("generate", "minimal logo", "-m", "gpt-image-2", "-o", str(tmp_path), "--tag", "brand")
    run("generate", "a red fox", "-m", "gpt-image-2", "-o", str(tmp_path), "-n", "2")
    code, out, _ = run("logs", "--json", "-q", "logo")
    entries = json.loads(out)
    assert [e["prompt"] for e in entries] == ["minimal logo"]
    code, out, _ = run("logs", "-n", "5")
    assert code == 0 and "red fox" in out
    manifest = tmp_path / "manifest.csv"
    assert run("export", "manifest", "-o", str(manifest))[0] == 0
    lines = manifest.read_text().splitlines()
    assert lines[0].startswith("id,created_at,model,prompt,revised_prompt") and len(lines) == 4
    code, out, _ = run("export", "manifest")
    rows = json.loads(out)
    assert {r["prompt"] for r in rows} == {"minimal logo", "a red fox"} and all(
        len(r["sha256"]) == 64 for r in rows
    )


def test_models_listing_filters_by_capability() -> None:
    code, out, _ = run("models", "--capability", "variation", "--json")
    assert code == 0
    rows = json.loads(out)
    assert "openai:dall-e-2" in [row["model"] for row in rows]
    assert all("variation" in row["operations"] for row in rows)
    code, out, _ = run("models", "show", "gpt-image-2", "--json")
    assert json.loads(out)["max_n"] == 10


def test_default_model_configured_then_by_key(openai_env) -> None:
    _, out, _ = run("models", "default")
    assert out.strip() == "openai:gpt-image-2"  # the first provider whose key is set
    run("models", "default", "openai:gpt-image-1.5")
    assert run("models", "default")[1].strip() == "openai:gpt-image-1.5"
    _, out, _ = run("generate", "no model given", "--json", "-o", "/tmp")
    assert json.loads(out)["model"] == "openai:gpt-image-1.5"


def test_demo_runs_without_key(tmp_path) -> None:
    code, out, err = run("demo", "-o", str(tmp_path))
    assert code == 0, err
    paths = out.split()
    assert len(paths) == 2
    with Image.open(paths[0]) as first:
        assert first.size == (1024, 1024)


def test_emulate_serves_on_loopback_in_a_subprocess(tmp_path) -> None:
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "limner", "emulate", "openai", "--port", str(port)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(100):
            try:
                response = httpx.post(url + "/images/generations", json={"model": "gpt-image-2", "prompt": "x", "size": "256x256"},
                                      headers={"authorization": "Bearer k"})  # fmt: skip
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert response.status_code == 200 and len(response.json()["data"]) == 1
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert f"LIMNER_OPENAI_BASE_URL=http://127.0.0.1:{port}/v1" in err
