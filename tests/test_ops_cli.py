"""The operation commands end to end: real subprocess for `check` exit codes, CliRunner for the rest."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter

from _ops_photos import photo, png_bomb, superres_dir
from _server_fixtures import LIMNER_CLI
from limner.cli import cli
from limner.store import Store


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LIMNER_CLI, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    sharp = photo("coffee", 300)
    for name, img in {
        "sharp": sharp,
        "blurry": sharp.filter(ImageFilter.GaussianBlur(4)),
        "cat": photo("chelsea", 300),
    }.items():
        paths[name] = tmp_path / f"{name}.png"
        img.save(paths[name])
    return paths


def test_check_exit_codes(photos: dict[str, Path], tmp_path: Path) -> None:
    ok = run_cli(
        "check", str(photos["sharp"]), str(photos["cat"]), "--min-size", "300x200", "--json"
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["passed"] is True
    failed = run_cli("check", str(photos["sharp"]), str(photos["blurry"]))
    assert failed.returncode == 1 and "FAIL" in failed.stdout and "blurry" in failed.stdout
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(12_000, 12_000))
    refused = run_cli("check", str(bomb))
    assert (
        refused.returncode == 2
        and "not decoded" in refused.stderr
        and "Traceback" not in refused.stderr
    )
    missing = CliRunner().invoke(cli, ["check", str(tmp_path / "nope.png")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    bad_size = CliRunner().invoke(cli, ["check", str(photos["sharp"]), "--min-size", "huge"])
    assert bad_size.exit_code == 2 and "WIDTHxHEIGHT" in bad_size.output


def test_upscale_command(
    photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LIMNER_SUPERRES_DIR", str(superres_dir()))
    out = tmp_path / "big.png"
    result = CliRunner().invoke(
        cli,
        ["upscale", str(photos["cat"]), "--scale", "2", "-m", "espcn", "-o", str(out), "--json"],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert Image.open(out).size == (600, 400) and body["model"] == "espcn_x2"
    entry = Store().get(body["generation_id"])
    assert entry is not None and entry.operation == "upscale"
    pickle = tmp_path / "esrgan.pth"
    pickle.write_bytes(b"x")
    refused = CliRunner().invoke(cli, ["upscale", str(photos["cat"]), "-m", str(pickle)])
    assert refused.exit_code == 2 and "pickle" in refused.output


def test_remove_bg_and_mask_commands(photos: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    small = tmp_path / "small.png"
    photo("chelsea", 96).save(small)
    result = runner.invoke(cli, ["remove-bg", str(small), "--background", "#00ff00"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "small-nobg.png").mode == "RGBA"
    assert Image.open(tmp_path / "small-mask.png").mode == "L"
    masked = runner.invoke(
        cli,
        [
            "mask",
            str(small),
            "--rect",
            "10,10,50,40",
            "--grow",
            "2",
            "--preview",
            str(tmp_path / "p.png"),
        ],
    )
    assert masked.exit_code == 0, masked.output
    mask = Image.open(tmp_path / "small-mask.png")
    assert mask.getpixel((9, 9)) == 255 and mask.getpixel((60, 60)) == 0
    assert (tmp_path / "p.png").exists()
    two = runner.invoke(cli, ["mask", str(small), "--rect", "1,1,5,5", "--alpha"])
    assert two.exit_code == 2 and "exactly one mask source" in two.output
    points = runner.invoke(cli, ["mask", str(small), "--points", "10,10"])
    assert points.exit_code == 2 and "segment-anything" in points.output


def test_outpaint_canvas_only(photos: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "wide.png"
    result = CliRunner().invoke(
        cli,
        [
            "outpaint",
            str(photos["cat"]),
            "--to-aspect",
            "16:9",
            "--canvas-only",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert abs(body["width"] / body["height"] - 16 / 9) < 0.03
    assert Image.open(body["mask"]).size == Image.open(out).size
