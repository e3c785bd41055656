"""Black Forest Labs: limner's adapter against the BFL emulator, end to end over loopback HTTP."""

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
from limner.types import ImageRequest, Operation, ReferenceImage

FAST = {"poll_interval": 0.01, "poll_max_interval": 0.02}
Emulator = Callable[[str], tuple[EmulatorServer, str]]


@pytest.fixture
def bfl(emulator: Emulator) -> Iterator[tuple[Limner, EmulatorServer, str]]:
    server, url = emulator("bfl")
    client = Limner(keys={"bfl": "bfl-test-key"}, base_urls={"bfl": url})
    yield client, server, url
    client.close()


def _png(
    width: int, height: int, colour: tuple[int, int, int] = (200, 40, 40), mode: str = "RGB"
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), colour if mode == "RGB" else 255).save(buf, format="PNG")
    return buf.getvalue()


def _stats(server: EmulatorServer) -> dict[str, int]:
    return httpx.get(server.url + "/_emulator/stats").json()


def _request(model: str, **kw: object) -> ImageRequest:
    options = {**FAST, **kw.pop("provider_options", {})}  # type: ignore[dict-item]
    return ImageRequest(model=model, provider_options=options, **kw)  # type: ignore[arg-type]


def test_generate_polls_downloads_and_records_reported_cost(
    bfl: tuple[Limner, EmulatorServer, str],
) -> None:
    client, server, _ = bfl
    result = client.run(
        Operation.GENERATE, _request("bfl:flux-2-pro", prompt="a red fox", size="256x256", seed=7)
    )
    image = result.images[0]
    assert (image.width, image.height) == (256, 256)
    assert image.media_type == "image/jpeg"
    assert image.seed == 7
    # 1 MP minimum charge of FLUX.2 [pro]: 3 credits = $0.03, as the emulator reported it.
    assert result.cost_usd == pytest.approx(0.03)
    assert result.usage.credits == pytest.approx(3.0)
    entry = client.store.get(result.generation_id or "")
    assert entry is not None and entry.cost_usd == pytest.approx(0.03)
    stats = _stats(server)
    assert stats["POST /v1/flux-2-pro"] == 1
    assert stats["GET /v1/get_result"] == 3  # Pending, Pending, Ready
    assert stats.get("delivery_with_key", 0) == 0


def test_key_goes_to_api_host_only(bfl: tuple[Limner, EmulatorServer, str]) -> None:
    client, server, url = bfl
    provider = client.provider("bfl")
    assert provider.trusts_host(url + "/get_result?id=1")  # type: ignore[attr-defined]
    assert provider.trusts_host("https://api.us1.bfl.ai/v1/get_result?id=1")  # type: ignore[attr-defined]
    assert not provider.trusts_host("https://delivery-us1.bfl.ai/results/x.jpeg")  # type: ignore[attr-defined]
    assert not provider.trusts_host("https://bfldeliveryprod.blob.core.windows.net/x")  # type: ignore[attr-defined]
    assert not provider.trusts_host("https://api.bfl.ai.evil.example/v1")  # type: ignore[attr-defined]
    client.run(Operation.GENERATE, _request("bfl:flux-2-klein-4b", prompt="a hut", size="128x128"))
    stats = _stats(server)
    assert stats["GET /v1/get_result"] >= 1
    assert stats.get("delivery_with_key", 0) == 0


def test_transient_task_not_found_is_tolerated(bfl: tuple[Limner, EmulatorServer, str]) -> None:
    client, server, _ = bfl
    httpx.post(server.url + "/_emulator/jobs", json={"not_found_polls": 1, "polls": 0})
    result = client.run(
        Operation.GENERATE, _request("bfl:flux-2-pro", prompt="a boat", size="128x128")
    )
    assert result.images[0].width == 128
    assert _stats(server)["GET /v1/get_result"] == 2


def test_edit_sends_images_and_references_as_input_images(
    bfl: tuple[Limner, EmulatorServer, str],
) -> None:
    client, _, _ = bfl
    image = load_image(_png(192, 128))
    ref = ReferenceImage(image=load_image(_png(64, 64, (0, 0, 255))), kind="style")
    request = _request("bfl:flux-2-pro", prompt="make it night", images=[image], references=[ref])
    provider = client.provider("bfl")
    spec = client.resolve("bfl:flux-2-pro")
    native = provider.native_request(Operation.EDIT, request, spec)
    assert {"input_image", "input_image_2"} <= set(native["json"])
    result = client.run(Operation.EDIT, request)
    # The output keeps the input's size; cost adds the input megapixels at the per-MP rate.
    assert (result.images[0].width, result.images[0].height) == (192, 128)
    assert result.cost_usd is not None and result.cost_usd > 0.03


def test_kontext_takes_aspect_ratio_from_size_with_warning(
    bfl: tuple[Limner, EmulatorServer, str],
) -> None:
    client, _, _ = bfl
    image = load_image(_png(64, 64))
    result = client.run(
        Operation.EDIT,
        _request("bfl:flux-kontext-pro", prompt="a hat", images=[image], size="1600x900"),
    )
    assert any("16:9" in w for w in result.warnings)
    assert result.images[0].width > result.images[0].height
    assert result.cost_usd == pytest.approx(0.04)


def test_inpaint_sends_white_mask(bfl: tuple[Limner, EmulatorServer, str]) -> None:
    client, _, _ = bfl
    image = load_image(_png(96, 64))
    # The user's mask: transparent pixels mark the area; BFL wants white there.
    rgba = Image.new("RGBA", (96, 64), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 48, 64))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    mask = load_image(buf.getvalue(), name="mask.png")
    request = _request("bfl:flux-pro-1.0-fill", prompt="a window", images=[image], mask=mask)
    body = client.provider("bfl")._body(Operation.INPAINT, request, client.resolve("flux-fill"))  # type: ignore[attr-defined]
    import base64

    sent = Image.open(io.BytesIO(base64.b64decode(body["mask"])))
    assert sent.getpixel((10, 10)) == 255 and sent.getpixel((80, 10)) == 0
    result = client.run(Operation.INPAINT, request)
    assert (result.images[0].width, result.images[0].height) == (96, 64)
    assert result.cost_usd == pytest.approx(0.05)


def test_outpaint_pads_to_target_size(bfl: tuple[Limner, EmulatorServer, str]) -> None:
    client, _, _ = bfl
    image = load_image(_png(64, 64))
    result = client.run(
        Operation.OUTPAINT,
        _request("flux-expand", prompt="more sky", images=[image], size="128x96"),
    )
    assert (result.images[0].width, result.images[0].height) == (128, 96)
    with pytest.raises(errors.InvalidRequestError, match="larger than the image"):
        client.run(
            Operation.OUTPAINT, _request("flux-expand", prompt="x", images=[image], size="64x64")
        )


def test_moderated_status_is_content_policy_error(bfl: tuple[Limner, EmulatorServer, str]) -> None:
    client, _, _ = bfl
    with pytest.raises(errors.ContentPolicyError, match="Moderated"):
        client.run(
            Operation.GENERATE,
            _request("bfl:flux-2-pro", prompt=f"a {BLOCKED_WORD}", size="128x128"),
        )


def test_429_is_retried(bfl: tuple[Limner, EmulatorServer, str]) -> None:
    client, server, _ = bfl
    httpx.post(
        server.url + "/_emulator/faults",
        json={"status": 429, "retry_after": 0, "count": 1, "path": "/v1/flux-2-pro"},
    )
    result = client.run(
        Operation.GENERATE, _request("bfl:flux-2-pro", prompt="a cat", size="128x128")
    )
    assert result.images
    assert _stats(server)["POST /v1/flux-2-pro"] == 2


def test_active_task_limit_answers_429(emulator: Emulator) -> None:
    _, url = emulator("bfl")
    headers = {"x-key": "k"}
    body = {"prompt": "x", "aspect_ratio": "1:1"}
    codes = [
        httpx.post(url + "/flux-kontext-max", json=body, headers=headers).status_code
        for _ in range(7)
    ]
    assert codes == [200] * 6 + [429]


def test_402_and_403_are_mapped(
    bfl: tuple[Limner, EmulatorServer, str], emulator: Emulator
) -> None:
    client, server, url = bfl
    httpx.post(server.url + "/_emulator/jobs", json={"credits": 1})
    with pytest.raises(errors.InsufficientCreditsError, match="Insufficient credits"):
        client.run(Operation.GENERATE, _request("bfl:flux-2-pro", prompt="a cat", size="128x128"))
    # A request without x-key is refused by the API, and that maps to AuthenticationError.
    response = httpx.post(url + "/flux-2-pro", json={"prompt": "x"})
    assert response.status_code == 403
    from limner.providers.bfl import BFLProvider

    assert isinstance(BFLProvider()._error(response, None), errors.AuthenticationError)


def test_invalid_field_is_provider_rejected_with_message(
    bfl: tuple[Limner, EmulatorServer, str],
) -> None:
    client, _, _ = bfl
    with pytest.raises(errors.ProviderRejectedError, match="safety_tolerance"):
        client.run(
            Operation.GENERATE,
            _request(
                "bfl:flux-2-pro",
                prompt="a cat",
                size="128x128",
                provider_options={"safety_tolerance": 9},
            ),
        )


def test_poll_deadline_from_provider_options(bfl: tuple[Limner, EmulatorServer, str]) -> None:
    client, server, _ = bfl
    httpx.post(server.url + "/_emulator/jobs", json={"polls": 1000})
    with pytest.raises(errors.ProviderTimeoutError):
        client.run(
            Operation.GENERATE,
            _request(
                "bfl:flux-2-pro",
                prompt="slow",
                size="128x128",
                provider_options={"deadline_s": 0.1},
            ),
        )


def test_expired_sample_url_is_an_error(emulator: Emulator) -> None:
    server, url = emulator("bfl")
    httpx.post(server.url + "/_emulator/settings", json={"delivery_ttl": 0})
    client = Limner(keys={"bfl": "k"}, base_urls={"bfl": url})
    with pytest.raises(errors.ProviderUnavailableError, match="expired"):
        client.run(Operation.GENERATE, _request("bfl:flux-2-pro", prompt="late", size="128x128"))
    client.close()


async def test_async_generate(bfl: tuple[Limner, EmulatorServer, str]) -> None:
    client, _, _ = bfl
    result = await client.arun(
        Operation.GENERATE, _request("bfl:flux-pro-1.1", prompt="a bird", size="256x256")
    )
    assert (result.images[0].width, result.images[0].height) == (256, 256)
    assert result.cost_usd == pytest.approx(0.04)


def test_style_reference_becomes_image_prompt(bfl: tuple[Limner, EmulatorServer, str]) -> None:
    client, _, _ = bfl
    style = load_image(_png(64, 64, (0, 200, 0)))
    request = _request("bfl:flux-pro-1.1", prompt="a tower", images=[style], size="256x256")
    spec = client.resolve("bfl:flux-pro-1.1")
    native = client.provider("bfl").native_request(Operation.STYLE_REFERENCE, request, spec)
    assert native["json"]["image_prompt"].startswith("<base64")
    result = client.run(Operation.STYLE_REFERENCE, request)
    assert (result.images[0].width, result.images[0].height) == (256, 256)
