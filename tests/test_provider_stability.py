"""Stability AI v2beta: limner's adapter against the emulator, end to end over loopback HTTP."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import httpx
import pytest
from PIL import Image

from limner import errors
from limner.client import Limner
from limner.emulators.common import BLOCKED_WORD, EmulatorServer
from limner.images import load_image
from limner.types import ImageInput, ImageRequest, Operation, ReferenceImage

FAST = {"poll_interval": 0.01, "poll_max_interval": 0.02}
Emulator = Callable[[str], tuple[EmulatorServer, str]]
Env = tuple[Limner, EmulatorServer, str]


@pytest.fixture
def stab(emulator: Emulator) -> Iterator[Env]:
    server, url = emulator("stability")
    client = Limner(keys={"stability": "sk-stab"}, base_urls={"stability": url})
    yield client, server, url
    client.close()


def _image(
    width: int = 48, height: int = 32, colour: tuple[int, int, int] = (30, 90, 200)
) -> ImageInput:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return load_image(buf.getvalue())


def _mask(width: int = 48, height: int = 32) -> ImageInput:
    img = Image.new("L", (width, height), 0)
    img.paste(255, (0, 0, width // 2, height))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return load_image(buf.getvalue(), name="mask.png")


def _stats(server: EmulatorServer) -> dict[str, int]:
    return httpx.get(server.url + "/_emulator/stats").json()


def _request(model: str, **kw: object) -> ImageRequest:
    options = {**FAST, **kw.pop("provider_options", {})}  # type: ignore[dict-item]
    return ImageRequest(model=model, provider_options=options, **kw)  # type: ignore[arg-type]


def test_generate_sd3_multipart_with_seed_header(stab: Env) -> None:
    client, server, _ = stab
    request = _request(
        "sd3.5-large",
        prompt="a castle",
        negative_prompt="fog",
        aspect_ratio="16:9",
        seed=42,
        guidance=5.0,
        style="cinematic",
    )
    native = client.provider("stability").native_request(
        Operation.GENERATE, request, client.resolve("sd3.5-large")
    )
    assert native["multipart"]["model"] == "sd3.5-large" and native["multipart"]["cfg_scale"] == 5.0
    result = client.run(Operation.GENERATE, request)
    image = result.images[0]
    assert image.width > image.height and image.seed == 42 and image.media_type == "image/png"
    assert result.cost_usd == pytest.approx(0.065)
    assert _stats(server)["POST /v2beta/stable-image/generate/sd3"] == 1


def test_json_accept_and_image_to_image(stab: Env) -> None:
    client, _, _ = stab
    request = _request(
        "stable-image-ultra",
        prompt="as a mosaic",
        images=[_image()],
        strength=0.4,
        output_format="webp",
        provider_options={"accept": "json"},
    )
    result = client.run(Operation.EDIT, request)
    assert (result.images[0].width, result.images[0].height) == (48, 32)
    assert result.images[0].media_type == "image/webp"


def test_core_has_no_image_to_image(stab: Env) -> None:
    client, _, _ = stab
    with pytest.raises(errors.UnsupportedOperationError):
        client.run(Operation.EDIT, _request("stable-image-core", prompt="x", images=[_image()]))


@pytest.mark.parametrize(
    ("model", "op", "extra", "size"),
    [
        ("stability:inpaint", Operation.INPAINT, {"mask": "yes"}, (48, 32)),
        ("stability:erase", Operation.INPAINT, {"mask": "yes"}, (48, 32)),
        ("stability:outpaint", Operation.OUTPAINT, {"size": "96x64"}, (96, 64)),
        (
            "stability:search-and-replace",
            Operation.EDIT,
            {"provider_options": {"search_prompt": "cup"}},
            (48, 32),
        ),
        ("stability:remove-background", Operation.REMOVE_BACKGROUND, {}, (48, 32)),
        ("stability:upscale-fast", Operation.UPSCALE, {}, (192, 128)),
        ("stability:upscale-conservative", Operation.UPSCALE, {}, (192, 128)),
        ("stability:control-sketch", Operation.CONTROLNET, {}, (48, 32)),
        ("stability:control-structure", Operation.CONTROLNET, {}, (48, 32)),
    ],
)
def test_edit_upscale_control_services(
    stab: Env, model: str, op: Operation, extra: dict[str, object], size: tuple[int, int]
) -> None:
    client, server, _ = stab
    kw: dict[str, object] = {"images": [_image()], "prompt": "a blue vase"}
    if extra.pop("mask", None):
        kw["mask"] = _mask()
    kw.update(extra)
    result = client.run(op, _request(model, **kw))
    assert (result.images[0].width, result.images[0].height) == size
    service = client.resolve(model).wire["service"]
    assert _stats(server)[f"POST /v2beta/stable-image/{service}"] == 1
    if model.endswith("remove-background"):
        assert result.images[0].to_pil().mode == "RGBA"


def test_style_control_takes_the_reference(stab: Env) -> None:
    client, _, _ = stab
    ref = ReferenceImage(image=_image(32, 32, (250, 200, 0)), kind="style", weight=0.8)
    request = _request(
        "control-style", prompt="a harbour", images=[_image()], references=[ref], aspect_ratio="1:1"
    )
    native = client.provider("stability").native_request(
        Operation.STYLE_REFERENCE, request, client.resolve("control-style")
    )
    assert native["multipart"]["fidelity"] == 0.8
    _, files = client.provider("stability")._fields(  # type: ignore[attr-defined]
        Operation.STYLE_REFERENCE, request, client.resolve("control-style")
    )
    assert dict(files)["image"] is ref.image
    result = client.run(Operation.STYLE_REFERENCE, request)
    assert result.images[0].width == result.images[0].height


def test_inpaint_mask_is_white_for_the_area(stab: Env) -> None:
    client, _, _ = stab
    alpha = Image.new("RGBA", (48, 32), (0, 0, 0, 255))
    alpha.paste((0, 0, 0, 0), (0, 0, 10, 32))
    buf = io.BytesIO()
    alpha.save(buf, format="PNG")
    request = _request(
        "stability:inpaint", prompt="x", images=[_image()], mask=load_image(buf.getvalue())
    )
    spec = client.resolve("stability:inpaint")
    _, files = client.provider("stability")._fields(Operation.INPAINT, request, spec)  # type: ignore[attr-defined]
    mask = Image.open(io.BytesIO(dict(files)["mask"]))
    assert mask.getpixel((2, 2)) == 255 and mask.getpixel((40, 2)) == 0


def test_creative_upscale_polls_results(stab: Env) -> None:
    client, server, _ = stab
    httpx.post(server.url + "/_emulator/jobs", json={"polls": 2})
    result = client.run(
        Operation.UPSCALE, _request("upscale-creative", prompt="a vase", images=[_image(16, 16)])
    )
    assert (result.images[0].width, result.images[0].height) == (64, 64)
    assert result.cost_usd == pytest.approx(0.60)
    results = sum(v for k, v in _stats(server).items() if k.startswith("GET /v2beta/results/"))
    assert results == 3  # 202, 202, 200


def test_expired_result_is_404_then_job_failed(stab: Env, emulator: Emulator) -> None:
    client, server, url = stab
    response = httpx.post(
        url + "/v2beta/stable-image/upscale/creative",
        headers={"Authorization": "Bearer k"},
        files={"image": ("i.png", _image().data, "image/png"), "prompt": (None, "x")},
    )
    gid = response.json()["id"]
    httpx.post(server.url + "/_emulator/jobs", json={"polls": 0, "result_ttl": 0})
    assert (
        httpx.get(url + f"/v2beta/results/{gid}", headers={"Authorization": "Bearer k"}).status_code
        == 200
    )
    import time

    time.sleep(0.01)
    gone = httpx.get(url + f"/v2beta/results/{gid}", headers={"Authorization": "Bearer k"})
    assert gone.status_code == 404 and gone.json()["name"] == "not_found"
    provider = client.provider("stability")
    with pytest.raises(errors.JobFailedError, match="expire"):
        provider._result_ready(gone, gid)  # type: ignore[attr-defined]


def test_content_filtered_and_moderation_are_policy_errors(stab: Env) -> None:
    client, _, _ = stab
    with pytest.raises(errors.ContentPolicyError, match="CONTENT_FILTERED"):
        client.run(Operation.GENERATE, _request("stable-image-core", prompt=f"a {BLOCKED_WORD}"))
    with pytest.raises(errors.ContentPolicyError, match="content moderation"):
        client.run(
            Operation.GENERATE, _request("stable-image-core", prompt=f"{BLOCKED_WORD} again")
        )


def test_missing_search_prompt_refused_before_sending(stab: Env) -> None:
    client, server, _ = stab
    with pytest.raises(errors.InvalidRequestError, match="search_prompt"):
        client.run(
            Operation.EDIT, _request("search-and-replace", prompt="a cat", images=[_image()])
        )
    assert _stats(server).get("total", 0) == 0


def test_429_retry_rate_limit_402_401(stab: Env) -> None:
    client, server, url = stab
    path = "/v2beta/stable-image/generate/core"
    httpx.post(
        server.url + "/_emulator/faults",
        json={"status": 429, "retry_after": 0, "count": 1, "path": path},
    )
    assert client.run(Operation.GENERATE, _request("stable-image-core", prompt="a")).images
    assert _stats(server)["POST " + path] == 2
    httpx.post(server.url + "/_emulator/faults", json={"status": 402, "count": 1, "path": path})
    with pytest.raises(errors.InsufficientCreditsError):
        client.run(Operation.GENERATE, _request("stable-image-core", prompt="b"))
    httpx.post(server.url + "/_emulator/jobs", json={"rate_limit": 0})
    client.retry = type(client.retry)(max_attempts=1)
    with pytest.raises(errors.RateLimitError, match="rate limit"):
        client.run(Operation.GENERATE, _request("stable-image-core", prompt="c"))
    httpx.post(server.url + "/_emulator/jobs", json={"rate_limit": 150})
    unauthorised = httpx.post(url + path, files={"prompt": (None, "x")})
    from limner.providers.stability import StabilityProvider

    assert isinstance(StabilityProvider()._error(unauthorised), errors.AuthenticationError)


def test_non_multipart_body_is_rejected(stab: Env) -> None:
    _, _, url = stab
    response = httpx.post(
        url + "/v2beta/stable-image/generate/core",
        headers={"Authorization": "Bearer k"},
        json={"prompt": "x"},
    )
    assert response.status_code == 400 and "multipart" in response.json()["errors"][0]


async def test_async_generate(stab: Env) -> None:
    client, _, _ = stab
    result = await client.arun(
        Operation.GENERATE, _request("sd3.5-flash", prompt="a", aspect_ratio="9:16")
    )
    assert result.images[0].height > result.images[0].width


def test_erase_needs_no_prompt_but_inpaint_does(stab: Env) -> None:
    client, _, _ = stab
    result = client.run(
        Operation.INPAINT, _request("erase", prompt="", images=[_image()], mask=_mask())
    )
    assert result.images
    with pytest.raises(errors.InvalidRequestError, match="prompt is empty"):
        client.run(
            Operation.INPAINT, _request("inpaint", prompt="", images=[_image()], mask=_mask())
        )
