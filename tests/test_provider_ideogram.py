"""Ideogram provider driven end to end against the Ideogram emulator: the legacy, v3 and v2
surfaces, masks (black marks the area), price quotes and unsafe results."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import httpx
import pytest
from PIL import Image

import limner
from _provider_helpers import emulator_stats, generate
from limner import errors
from limner.catalog import get_catalog
from limner.emulators.common import BLOCKED_WORD, EmulatorServer
from limner.images import load_image
from limner.providers.ideogram import IdeogramProvider, describe
from limner.store import Store
from limner.types import ImageRequest, Operation, ReferenceImage

EmulatorFactory = Callable[[str], tuple[EmulatorServer, str]]
FAST = {"poll_interval": 0.01}


@pytest.fixture
def ideogram(
    emulator: EmulatorFactory, monkeypatch: pytest.MonkeyPatch
) -> tuple[EmulatorServer, str]:
    server, url = emulator("ideogram")
    monkeypatch.setenv("IDEOGRAM_API_KEY", "ideo-test")
    monkeypatch.setenv("LIMNER_IDEOGRAM_BASE_URL", url)
    return server, url


def _png(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (40, 90, 160)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _white_left_mask(size: tuple[int, int] = (64, 48)) -> bytes:
    img = Image.new("L", size, 0)
    img.paste(255, (0, 0, size[0] // 2, size[1]))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _multipart_fields(request: httpx.Request) -> dict[str, list[bytes]]:
    """Parse a built multipart request into name -> values, with the stdlib email parser."""
    from email.parser import BytesParser
    from email.policy import HTTP

    body = request.read()
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, list[bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields.setdefault(str(name), []).append(bytes(part.get_payload(decode=True)))
    return fields


def test_v3_generate_with_style_magic_prompt_palette_seed(
    ideogram: tuple[EmulatorServer, str],
) -> None:
    server, _ = ideogram
    result = limner.generate(
        "a poster that says OPEN LATE",
        model="ideogram:ideogram-v3",
        aspect_ratio="16:9",
        style="design",
        quality="turbo",
        negative_prompt="blur",
        seed=42,
        n=2,
        provider_options={"magic_prompt": True, "color_palette": "pastel"},
    )
    assert len(result.images) == 2
    assert [i.seed for i in result.images] == [42, 43]
    assert result.images[0].width > result.images[0].height
    assert result.images[0].revised_prompt and result.images[0].revised_prompt.startswith(
        "a poster that says OPEN LATE,"
    )
    assert result.cost_usd == pytest.approx(0.06)  # 2 x turbo, from the catalog
    assert emulator_stats(server)["POST /v1/ideogram-v3/generate"] == 1


def test_v3_request_fields_are_multipart_in_ideogram_spelling() -> None:
    spec = get_catalog().resolve("ideogram:ideogram-v3")
    request = ImageRequest(
        prompt="p",
        aspect_ratio="4:5",
        style="fiction",
        quality="quality",
        provider_options={"style_codes": ["AABBCCDD", "11223344"], "color_palette": ["#ff0000"]},
        references=[
            ReferenceImage(image=load_image(_png()), kind="style"),
            ReferenceImage(image=load_image(_png()), kind="character"),
        ],
    )
    built = IdeogramProvider(api_key="k", base_url="http://127.0.0.1:1")._http_request(
        Operation.GENERATE, request, spec
    )
    fields = _multipart_fields(built)
    assert built.headers["api-key"] == "k"
    assert fields["aspect_ratio"] == [b"4x5"] and fields["style_type"] == [b"FICTION"]
    assert fields["rendering_speed"] == [b"QUALITY"]
    assert fields["style_codes"] == [b"AABBCCDD", b"11223344"]
    assert json.loads(fields["color_palette"][0]) == {"members": [{"color_hex": "#ff0000"}]}
    assert (
        len(fields["style_reference_images"]) == 1
        and len(fields["character_reference_images"]) == 1
    )


def test_style_reference_images_reach_the_emulator(ideogram: tuple[EmulatorServer, str]) -> None:
    plain = limner.generate("a cat", model="ideogram:ideogram-v3", seed=1)
    styled = limner.generate(
        "a cat",
        model="ideogram:ideogram-v3",
        seed=1,
        references=[ReferenceImage(image=load_image(_png()), kind="style")],
    )
    assert plain.images[0].to_pil().tobytes() != styled.images[0].to_pil().tobytes()


def test_legacy_generate_uses_image_request_json(ideogram: tuple[EmulatorServer, str]) -> None:
    server, _ = ideogram
    result = limner.generate(
        "a logo",
        model="ideogram:ideogram-v2",
        aspect_ratio="3:2",
        style="render_3d",
        quality="turbo",
    )
    assert result.cost_usd == pytest.approx(0.05)
    assert emulator_stats(server)["POST /generate"] == 1
    native = IdeogramProvider(api_key="k").native_request(
        Operation.GENERATE,
        ImageRequest(prompt="a logo", aspect_ratio="3:2", quality="turbo"),
        get_catalog().resolve("ideogram:ideogram-v2"),
    )
    assert native["json"]["image_request"] == {
        "prompt": "a logo",
        "aspect_ratio": "ASPECT_3_2",
        "model": "V_2_TURBO",
    }


def test_v2_api_quotes_the_price_first_and_records_it(ideogram: tuple[EmulatorServer, str]) -> None:
    server, _ = ideogram
    result = limner.generate(
        "a mug on a table", model="ideogram:ideogram-4.5", quality="high", n=3, aspect_ratio="9:16"
    )
    assert len(result.images) == 3
    assert result.cost_usd == pytest.approx(0.30)  # the quote: 3 x 100,000 usd_micros
    assert (
        emulator_stats(server)["POST /v2/image/generate/ideogram-4-5"] == 2
    )  # dry run + the real call
    entry = Store(limner.Limner().home).get(str(result.generation_id))
    assert entry is not None and entry.cost_usd == pytest.approx(0.30)
    quiet = limner.generate(
        "a mug", model="ideogram:ideogram-4.5", provider_options={"price_quote": False}
    )
    assert quiet.cost_usd == pytest.approx(0.06)  # the catalog's medium price
    assert emulator_stats(server)["POST /v2/image/generate/ideogram-4-5"] == 3


def test_quote_flow_alone_generates_nothing(ideogram: tuple[EmulatorServer, str]) -> None:
    from limner.fetch import SafeFetcher
    from limner.http import FlowRunner

    server, url = ideogram
    spec = get_catalog().resolve("ideogram:ideogram-4.6")
    provider = IdeogramProvider(api_key="k", base_url=url)
    with httpx.Client() as http:
        output = FlowRunner(
            http, "ideogram", fetcher=SafeFetcher(allow_loopback=True, allow_http=True)
        ).run(
            provider.quote_flow(
                Operation.GENERATE, ImageRequest(prompt="x", n=2, quality="low"), spec
            )
        )
    assert output.cost_usd == pytest.approx(0.06) and output.images == []
    assert output.raw["quote"]["qualifier"] == "exact"
    assert not any(k.startswith("GET /delivery") for k in emulator_stats(server))


def test_inpaint_sends_black_marks_area_mask(ideogram: tuple[EmulatorServer, str]) -> None:
    server, url = ideogram
    result = limner.edit(_png(), "a window", mask=_white_left_mask(), model="ideogram:ideogram-v3")
    assert emulator_stats(server)["POST /v1/ideogram-v3/edit"] == 1 and len(result.images) == 1
    spec = get_catalog().resolve("ideogram:ideogram-v3")
    request = ImageRequest(
        prompt="p", images=[load_image(_png())], mask=load_image(_white_left_mask())
    )
    fields = _multipart_fields(
        IdeogramProvider(api_key="k", base_url=url)._http_request(Operation.INPAINT, request, spec)
    )
    mask = Image.open(io.BytesIO(fields["mask"][0])).convert("L")
    assert mask.getpixel((5, 5)) == 0  # the area to change is black
    assert mask.getpixel((60, 5)) == 255


def test_legacy_inpaint_and_remix(ideogram: tuple[EmulatorServer, str]) -> None:
    server, _ = ideogram
    limner.edit(_png(), "a window", mask=_white_left_mask(), model="ideogram:ideogram-v2")
    remixed = limner.edit(_png(), "in neon", model="ideogram:ideogram-v2", strength=0.25)
    assert emulator_stats(server)["POST /edit"] == 1 and emulator_stats(server)["POST /remix"] == 1
    assert (remixed.images[0].width, remixed.images[0].height) == (64, 48)


def test_remix_reframe_upscale_and_remove_background(ideogram: tuple[EmulatorServer, str]) -> None:
    server, _ = ideogram
    image = load_image(_png())
    with limner.Limner() as client:
        client.run(
            Operation.EDIT,
            ImageRequest(
                prompt="as a sketch", model="ideogram:ideogram-4.5", images=[image], strength=0.7
            ),
        )
        reframed = client.run(
            Operation.OUTPAINT,
            ImageRequest(
                prompt="wider", model="ideogram:ideogram-v3", images=[image], size="1344x768"
            ),
        )
        upscaled = client.run(
            Operation.UPSCALE,
            ImageRequest(
                model="ideogram:ideogram-v3", images=[image], provider_options={"resemblance": 80}
            ),
        )
        upscaled_v2 = client.run(
            Operation.UPSCALE,
            ImageRequest(
                model="ideogram:ideogram-4.6",
                images=[image],
                provider_options={"factor": 4, **FAST},
            ),
        )
        cut = client.run(
            Operation.REMOVE_BACKGROUND,
            ImageRequest(model="ideogram:ideogram-4.6", images=[image], provider_options=FAST),
        )
    stats = emulator_stats(server)
    assert stats["POST /v2/image/remix/ideogram-4-5"] == 2
    assert stats["POST /v1/ideogram-v3/reframe"] == 1 and stats["POST /upscale"] == 1
    assert reframed.images[0].width > reframed.images[0].height
    assert upscaled.images[0].width == 128 and upscaled_v2.images[0].width == 256
    assert upscaled_v2.cost_usd == pytest.approx(0.06) and cut.cost_usd == pytest.approx(0.01)


def test_describe(ideogram: tuple[EmulatorServer, str]) -> None:
    texts = describe(_png())
    assert len(texts) == 2 and "64x48" in texts[0]


def test_unsafe_results_are_a_content_policy_error(ideogram: tuple[EmulatorServer, str]) -> None:
    server, _ = ideogram
    with pytest.raises(errors.ContentPolicyError, match="is_image_safe"):
        limner.generate(f"a {BLOCKED_WORD}", model="ideogram:ideogram-v3")
    assert not any(k.startswith("GET /delivery") for k in emulator_stats(server))


def test_partly_unsafe_results_keep_the_safe_ones_with_a_warning(
    ideogram: tuple[EmulatorServer, str],
) -> None:
    server, _ = ideogram
    with limner.Limner() as warm:
        url = warm.provider("ideogram").base_url
    good = httpx.post(
        url + "/generate",
        headers={"Api-Key": "k"},
        json={"image_request": {"prompt": "ok", "num_images": 1}},
    ).json()
    body = {
        "created": good["created"],
        "data": [good["data"][0], {"is_image_safe": False, "url": None, "seed": 2}],
    }
    httpx.post(server.url + "/_emulator/faults", json={"status": 200, "body": body})
    result = limner.generate("two", model="ideogram:ideogram-v2", n=2)
    assert len(result.images) == 1
    assert any("withheld 1 unsafe" in w for w in result.warnings)


def test_errors_are_mapped(ideogram: tuple[EmulatorServer, str], client: limner.Limner) -> None:
    server, _ = ideogram
    with pytest.raises(errors.InvalidRequestError, match="aspect ratio 7:3"):
        generate(client, "x", model="ideogram:ideogram-v3", aspect_ratio="7:3")
    with pytest.raises(errors.InvalidRequestError, match="provider option"):
        generate(client, "x", model="ideogram:ideogram-v3", provider_options={"cfg": 3})
    with pytest.raises(errors.InvalidRequestError, match="colour palette"):
        generate(
            client, "x", model="ideogram:ideogram-v3", provider_options={"color_palette": "neon"}
        )
    httpx.post(
        server.url + "/_emulator/faults",
        json={"status": 422, "body": {"detail": "Prompt failed the safety check"}},
    )
    with pytest.raises(errors.ContentPolicyError, match="safety check"):
        generate(client, "x", model="ideogram:ideogram-v3")
    httpx.post(
        server.url + "/_emulator/faults",
        json={"status": 422, "body": {"detail": "num_images too large"}},
    )
    with pytest.raises(errors.ProviderRejectedError, match="num_images too large"):
        generate(client, "x", model="ideogram:ideogram-v3")
    httpx.post(server.url + "/_emulator/faults", json={"status": 401})
    with pytest.raises(errors.AuthenticationError):
        generate(client, "x", model="ideogram:ideogram-v3")
    httpx.post(server.url + "/_emulator/faults", json={"status": 429, "retry_after": 0})
    assert len(generate(client, "x", model="ideogram:ideogram-v3").images) == 1


def test_emulator_refuses_missing_key_and_bad_enums(ideogram: tuple[EmulatorServer, str]) -> None:
    _, url = ideogram
    assert (
        httpx.post(url + "/v1/ideogram-v3/generate", files={"prompt": (None, "x")}).status_code
        == 401
    )
    bad = httpx.post(
        url + "/v1/ideogram-v3/generate",
        headers={"Api-Key": "k"},
        files={"prompt": (None, "x"), "rendering_speed": (None, "FAST")},
    )
    assert bad.status_code == 422 and "rendering_speed" in bad.json()["detail"]


def test_tool_endpoints_and_async_images_are_polled(ideogram: tuple[EmulatorServer, str]) -> None:
    server, _ = ideogram
    httpx.post(server.url + "/_emulator/ideogram", json={"polls_to_finish": 3})
    seen: list[str] = []
    with limner.Limner(on_progress=lambda f, m: seen.append(m)) as client:
        result = client.run(
            Operation.GENERATE,
            ImageRequest(
                prompt="a lamp",
                model="ideogram:ideogram-4.5",
                n=2,
                quality="low",
                provider_options={"async": True, "price_quote": False, **FAST},
            ),
        )
    assert seen == ["ideogram pending", "ideogram pending", "ideogram completed"]
    assert len(result.images) == 2
    assert result.cost_usd == pytest.approx(0.06)  # usage_cost_usd_micros of the completed body
    polls = [k for k in emulator_stats(server) if k.startswith("GET /v2/generations/")]
    assert len(polls) == 1 and emulator_stats(server)[polls[0]] == 3
    with pytest.raises(errors.JobFailedError, match="internal error"):
        limner.generate(
            "fail-task", model="ideogram:ideogram-4.5", provider_options={"async": True, **FAST}
        )
    httpx.post(server.url + "/_emulator/ideogram", json={"polls_to_finish": 1000})
    with pytest.raises(errors.ProviderTimeoutError, match="not done within"):
        limner.generate(
            "slow",
            model="ideogram:ideogram-4.5",
            provider_options={"async": True, "poll_interval": 0.01, "poll_timeout": 0.05},
        )
