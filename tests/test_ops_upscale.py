"""Upscaling on a real photo: FSRCNN/ESPCN beat Lanczos, tiling is seamless, unsafe files refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from _ops_photos import photo, png_bytes, superres_dir
from limner import errors
from limner.ops.upscale import run_tiled, upscale, upscale_image
from limner.store import Store


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255**2 / np.mean((x - y) ** 2)))


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = superres_dir()
    monkeypatch.setenv("LIMNER_SUPERRES_DIR", str(folder))
    return folder


@pytest.mark.parametrize("model", ["fsrcnn", "espcn"])
def test_learned_x2_beats_lanczos_on_the_astronaut(models: Path, model: str) -> None:
    original = photo("astronaut", 256)
    small = original.resize((128, 128), Image.Resampling.BICUBIC)
    learned, used = upscale_image(small, 2, model)
    plain, _ = upscale_image(small, 2, "lanczos")
    assert learned.size == original.size and used == f"{model}_x2"
    assert psnr(learned, original) > psnr(plain, original) + 0.2


def test_model_file_path_and_scale_mismatch(models: Path) -> None:
    small = photo("coffee", 90)
    out, used = upscale_image(small, 3, str(models / "ESPCN_x3.pb"))
    assert out.size == (small.width * 3, small.height * 3) and used == "ESPCN_x3.pb"
    with pytest.raises(errors.InvalidRequestError, match="upscales by 2, not 4"):
        upscale_image(small, 4, str(models / "FSRCNN_x2.pb"))


def test_tiles_meet_without_seams(models: Path) -> None:
    small = photo("chelsea", 150)
    whole, _ = upscale_image(small, 2, "fsrcnn", tile=1024)
    tiled, _ = upscale_image(small, 2, "fsrcnn", tile=64)
    diff = np.abs(np.asarray(whole, dtype=int) - np.asarray(tiled, dtype=int))
    assert diff.max() <= 2


def test_run_tiled_places_every_tile() -> None:
    array = np.arange(50 * 70, dtype=np.float32).reshape(50, 70)
    out = run_tiled(
        array, 2, lambda part: np.kron(part, np.ones((2, 2), np.float32)), tile=16, overlap=3
    )
    assert np.array_equal(out, np.kron(array, np.ones((2, 2), np.float32)))


def test_alpha_is_kept() -> None:
    img = photo("astronaut", 64).convert("RGBA")
    img.putalpha(Image.new("L", img.size, 128))
    out, _ = upscale_image(img, 2)
    assert out.mode == "RGBA" and out.size == (128, 128)
    assert out.getchannel("A").getextrema() == (128, 128)


@pytest.mark.parametrize("name", ["weights.pth", "model.ckpt", "x.pt", "y.bin"])
def test_pickle_checkpoints_are_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x80\x04 pickle")
    with pytest.raises(errors.InvalidRequestError, match="pickle"):
        upscale_image(photo("coffee", 32), 2, str(path))


def test_missing_named_model_says_where_to_put_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LIMNER_SUPERRES_DIR", str(tmp_path))
    with pytest.raises(errors.InvalidRequestError, match=r"FSRCNN_x2\.pb") as info:
        upscale_image(photo("coffee", 32), 2, "fsrcnn")
    assert "LIMNER_SUPERRES_DIR" in (info.value.hint or "")


def test_bad_scale_is_refused() -> None:
    with pytest.raises(errors.InvalidRequestError, match="Scale 5"):
        upscale_image(photo("coffee", 32), 5)


def test_result_is_stored_and_logged(models: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    result = upscale(png_bytes(photo("coffee", 60)), 2, "espcn", store=store)
    entry = store.get(result.generation_id or "")
    assert entry is not None and entry.operation == "upscale" and entry.model == "espcn_x2"
    assert entry.images[0].path.read_bytes() == result.image.data
    assert (result.image.width, result.image.height) == (120, 80)


def test_cloud_upscaler_runs_through_the_client(
    emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from limner.client import Limner

    server, url = emulator("recraft")
    monkeypatch.setenv("RECRAFT_API_TOKEN", "rc-test")
    monkeypatch.setenv("LIMNER_RECRAFT_BASE_URL", url)
    with Limner() as client:
        result = upscale(png_bytes(photo("coffee", 64)), model="recraft:recraftv4_1", client=client)
        entry = client.store.get(result.generation_id or "")
    assert result.images and entry is not None
    assert entry.operation == "upscale" and entry.provider == "recraft"
    assert any("crispUpscale" in key for key in server.app.state.emulator.stats)
