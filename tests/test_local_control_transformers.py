"""ControlNet on the transformer families (SD3 and FLUX.1) in the local engine, on tiny
random-weight pipelines and ControlNets saved with save_pretrained and loaded by path, as
users' models are."""

from __future__ import annotations

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

FAMILIES = ("sd3", "flux")


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """family -> (pipeline folder, ControlNet folder), each built once per session."""
    from limner.local import testing

    root = tmp_path_factory.mktemp("tiny-transformer-control")
    out = {}
    for family in FAMILIES:
        pipe = testing.build_tiny(family, root / family)
        net = testing.build_tiny_transformer_controlnet(root / f"{family}-controlnet", pipe)
        out[family] = (root / family, str(net))
    return out


@pytest.fixture
def client(tmp_path: Path) -> Limner:
    return Limner(home=tmp_path / "home")


def photo(which: str = "astronaut") -> Any:
    from skimage import data

    picture = getattr(data, which)()
    return load_image(Image.fromarray(picture).convert("RGB").resize((64, 64)))


def run(client: Limner, op: str, model: Path, **fields: Any) -> Result:
    fields.setdefault("prompt", "the cat")
    fields.setdefault("steps", 2)
    fields.setdefault("seed", 5)
    if not fields.get("images"):
        fields.setdefault("size", "64x64")
    return client.run(op, ImageRequest(model=f"local:{model}", **fields), use_cache=False)


def pixels(result: Result, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index].to_pil().convert("RGB"), dtype=np.int16)


def controls(net: str, *scales: float) -> dict[str, Any]:
    """Canny on the first image, then the second image used as a ready map, one per scale."""
    kinds = [{"type": "canny", "model": net}, {"type": "none", "model": net, "image": 1}]
    return {"controlnets": [{**k, "scale": s} for k, s in zip(kinds, scales, strict=False)]}


@pytest.mark.parametrize("family", FAMILIES)
def test_canny_control_steers_the_image_and_is_reproducible(
    client: Limner, models: dict[str, tuple[Path, str]], family: str
) -> None:
    model, net = models[family]
    plain = pixels(run(client, "generate", model))
    controlled = run(
        client, "controlnet", model, images=[photo()], provider_options=controls(net, 1.0)
    )
    again = run(client, "controlnet", model, images=[photo()], provider_options=controls(net, 1.0))
    assert (controlled.images[0].width, controlled.images[0].height) == (64, 64)
    assert any("ControlNetPipeline" in w for w in controlled.warnings)
    assert np.abs(pixels(controlled) - plain).max() > 10
    assert np.array_equal(pixels(controlled), pixels(again))
    assert controlled.images[0].seed == 5
    batch = run(
        client, "controlnet", model, images=[photo()], n=2, provider_options=controls(net, 1.0)
    )
    alone = run(
        client, "controlnet", model, images=[photo()], seed=6, provider_options=controls(net, 1.0)
    )
    assert [image.seed for image in batch.images] == [5, 6]
    assert np.abs(pixels(batch, 1) - pixels(alone)).max() <= 2  # image k is its seed's image


@pytest.mark.parametrize("family", FAMILIES)
def test_two_controls_at_once_each_with_its_scale(
    client: Limner, models: dict[str, tuple[Path, str]], family: str
) -> None:
    model, net = models[family]
    coffee, camera = [photo(), photo("coffee")], [photo(), photo("camera")]
    single = run(
        client, "controlnet", model, images=coffee[:1], provider_options=controls(net, 1.0)
    )
    both = run(client, "controlnet", model, images=coffee, provider_options=controls(net, 1.0, 0.5))
    stronger = run(
        client, "controlnet", model, images=coffee, provider_options=controls(net, 1.0, 1.5)
    )
    assert any("ControlNetPipeline" in w for w in both.warnings)
    assert np.abs(pixels(both) - pixels(single)).max() > 10  # the second control acts
    assert np.abs(pixels(both) - pixels(stronger)).max() > 10  # ...as strongly as its scale says
    # At scale 0 the second control adds nothing: which image it reads no longer matters.
    off_coffee = run(
        client, "controlnet", model, images=coffee, provider_options=controls(net, 1.0, 0.0)
    )
    off_camera = run(
        client, "controlnet", model, images=camera, provider_options=controls(net, 1.0, 0.0)
    )
    assert np.abs(pixels(off_coffee) - pixels(off_camera)).max() <= 2
    on_camera = run(
        client, "controlnet", model, images=camera, provider_options=controls(net, 1.0, 1.5)
    )
    assert np.abs(pixels(stronger) - pixels(on_camera)).max() > 10


@pytest.mark.parametrize("family", FAMILIES)
def test_a_missing_control_image_is_a_user_error(
    client: Limner, models: dict[str, tuple[Path, str]], family: str
) -> None:
    model, net = models[family]
    with pytest.raises(errors.UserError, match="control image"):
        run(client, "controlnet", model, provider_options=controls(net, 1.0))
    with pytest.raises(errors.UserError, match="control image"):  # the second map is missing
        run(client, "controlnet", model, images=[photo()], provider_options=controls(net, 1.0, 0.5))


def test_flux_control_with_img2img_and_sd3_refuses_it(
    client: Limner, models: dict[str, tuple[Path, str]]
) -> None:
    flux, flux_net = models["flux"]
    edited = run(client, "edit", flux, images=[photo()], strength=0.6,
                 provider_options=controls(flux_net, 0.8))  # fmt: skip
    assert any("FluxControlNetImg2ImgPipeline" in w for w in edited.warnings)
    sd3, sd3_net = models["sd3"]
    with pytest.raises(errors.UnsupportedOperationError, match="text-to-image only"):
        run(client, "edit", sd3, images=[photo()], provider_options=controls(sd3_net, 0.8))
