"""`limner models add`, `limner rerun` and `limner export comfyui` on a tiny local model."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import numpy as np
from PIL import Image

from limner.cli import cli
from limner.client import Limner
from limner.types import ImageRequest

pytestmark = pytest.mark.local


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from limner.local.testing import build_tiny

    folder = tmp_path_factory.getbasetemp() / "tiny-local-models" / "sd15"
    if not (folder / "model_index.json").exists():
        build_tiny("sd15", folder)
    return folder


def test_models_add_registers_a_folder(tiny_sd: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["models", "add", "tiny", str(tiny_sd), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["family"] == "sd"
    with Limner() as client:
        spec = client.resolve("local:tiny")
        assert spec.wire["path"] == str(tiny_sd.resolve())
        result = client.run(
            "generate",
            ImageRequest(prompt="the cat", model="local:tiny", size="64x64", steps=2, seed=1),
        )
    assert result.model == "local:tiny"


def test_models_add_refuses_pickles(tmp_path: Path) -> None:
    evil = tmp_path / "model.ckpt"
    evil.write_bytes(pickle.dumps({"weights": 1}))
    out = CliRunner().invoke(cli, ["models", "add", "evil", str(evil)])
    assert out.exit_code == 2
    assert "pickle" in out.output


def test_rerun_reproduces_and_export_comfyui(tiny_sd: Path, tmp_path: Path) -> None:
    with Limner() as client:
        first = client.run("generate", ImageRequest(prompt="the cat", negative_prompt="dog", model=f"local:{tiny_sd}",
                                                    size="64x64", steps=3, guidance=4.0, seed=21,
                                                    provider_options={"scheduler": "euler-a"}))  # fmt: skip
    runner = CliRunner()
    out = runner.invoke(cli, ["rerun", first.generation_id or "", "-o", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    again = np.asarray(Image.open(payload["images"][0]["path"]).convert("RGB"))
    assert np.array_equal(again, np.asarray(first.images[0].to_pil().convert("RGB")))
    assert payload["images"][0]["seed"] == 21

    out = runner.invoke(cli, ["export", "comfyui", first.generation_id or ""])
    assert out.exit_code == 0, out.output
    workflow = json.loads(out.stdout)
    sampler = next(n["inputs"] for n in workflow.values() if n["class_type"] == "KSampler")
    assert (sampler["seed"], sampler["steps"], sampler["cfg"], sampler["sampler_name"]) == (
        21,
        3,
        4.0,
        "euler_ancestral",
    )
    latent = next(n["inputs"] for n in workflow.values() if n["class_type"] == "EmptyLatentImage")
    assert (latent["width"], latent["height"]) == (64, 64)
    texts = sorted(
        n["inputs"]["text"] for n in workflow.values() if n["class_type"] == "CLIPTextEncode"
    )
    assert texts == ["dog", "the cat"]
    assert workflow["4"]["inputs"]["ckpt_name"] == "sd15.safetensors"


def test_rerun_of_an_unknown_id_is_a_user_error() -> None:
    out = CliRunner().invoke(cli, ["rerun", "nope"])
    assert out.exit_code == 2
    assert "No generation" in out.output


def test_cli_generate_dry_run_and_bad_option(tiny_sd: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = [
        "generate",
        "the cat",
        "-m",
        f"local:{tiny_sd}",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--seed",
        "4",
    ]
    out = runner.invoke(
        cli, [*args, "--option", "scheduler=dpm++-2m-karras", "-o", str(tmp_path), "--json"]
    )
    assert out.exit_code == 0, out.output
    image = json.loads(out.stdout)["images"][0]
    assert (image["width"], image["seed"]) == (64, 4)
    dry = runner.invoke(cli, [*args, "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["request"]["model"]["family"] == "sd"
    bad = runner.invoke(cli, [*args, "--option", "scheduler=warp"])
    assert bad.exit_code == 2 and "Unknown scheduler" in bad.output
    missing = runner.invoke(cli, [*args, "--option", "device=cuda:7"])
    assert missing.exit_code == 2 and "not available" in missing.output


def test_cache_key_follows_the_weights_of_a_local_folder(tiny_sd: Path, tmp_path: Path) -> None:
    import os
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_sd, folder)
    request = ImageRequest(prompt="a cube", model=f"local:{folder}", size="64x64", steps=2, seed=3)
    with Limner() as client:
        first = client.run("generate", request)
        again = client.run("generate", request)
        weights = next(folder.rglob("*.safetensors"))
        stat = weights.stat()
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # new weights
        changed = client.run("generate", request)
    assert not first.cache_hit and again.cache_hit
    assert not changed.cache_hit
    entry = client.store.get(first.generation_id or "")
    meta = entry.params["provider_meta"] if entry else {}
    assert (
        meta["seeds"] == [3] and meta["model_revision"].startswith("local-") and meta["scheduler"]
    )
