"""Recraft provider driven end to end against the Recraft emulator."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

import limner
from _provider_helpers import emulator_stats, generate
from limner import errors
from limner.emulators.common import BLOCKED_WORD, EmulatorServer
from limner.store import Store
from limner.types import ImageRequest, Operation

EmulatorFactory = Callable[[str], tuple[EmulatorServer, str]]


@pytest.fixture
def recraft(
    emulator: EmulatorFactory, monkeypatch: pytest.MonkeyPatch
) -> tuple[EmulatorServer, str]:
    server, url = emulator("recraft")
    monkeypatch.setenv("RECRAFT_API_TOKEN", "rc-test")
    monkeypatch.setenv("LIMNER_RECRAFT_BASE_URL", url)
    return server, url


def _png(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _mask(size: tuple[int, int] = (64, 48)) -> bytes:
    img = Image.new("L", size, 0)
    img.paste(255, (0, 0, size[0] // 2, size[1]))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_generate_raster_downloads_urls_and_records_reported_credits(
    recraft: tuple[EmulatorServer, str],
) -> None:
    server, _ = recraft
    result = limner.generate(
        "a fox logo", model="recraft:recraftv4_1", size="1536x768", n=2, seed=3
    )
    assert [(i.width, i.height) for i in result.images] == [(1536, 768)] * 2
    assert result.cost_usd == pytest.approx(0.07)  # 2 x 35 credits, as the response reported
    assert emulator_stats(server)["POST /v1/images/generations"] == 1
    entry = Store(limner.Limner().home).get(str(result.generation_id))
    assert entry is not None and entry.cost_usd == pytest.approx(0.07)


def test_vector_models_return_svg(recraft: tuple[EmulatorServer, str]) -> None:
    result = limner.generate("a minimal owl icon", model="recraft:recraftv3_vector", style="icon")
    image = result.images[0]
    assert image.media_type == "image/svg+xml" and image.extension == "svg"
    assert image.data.startswith(b"<svg")


def test_v3_style_and_size_are_checked_before_sending(recraft: tuple[EmulatorServer, str]) -> None:
    server, _ = recraft
    with pytest.raises(errors.InvalidRequestError, match="style"):
        limner.generate("x", model="recraft:recraftv4", style="icon")
    with pytest.raises(errors.InvalidRequestError, match="Size 1500x1000"):
        limner.generate("x", model="recraft:recraftv3", size="1500x1000")
    assert emulator_stats(server).get("total", 0) == 0


def test_image_to_image_passes_strength(recraft: tuple[EmulatorServer, str]) -> None:
    server, _ = recraft
    result = limner.edit(_png(), "in watercolour", model="recraft:recraftv3", strength=0.4)
    assert (result.images[0].width, result.images[0].height) == (64, 48)
    assert emulator_stats(server)["POST /v1/images/imageToImage"] == 1
    assert result.cost_usd == pytest.approx(0.04)


def test_inpaint_sends_a_white_marks_area_mask(recraft: tuple[EmulatorServer, str]) -> None:
    from limner.catalog import get_catalog
    from limner.images import load_image
    from limner.providers.recraft import RecraftProvider

    server, url = recraft
    result = limner.edit(_png(), "a red door", mask=_mask(), model="recraft:recraftv3")
    assert emulator_stats(server)["POST /v1/images/inpaint"] == 1
    assert len(result.images) == 1
    request = ImageRequest(prompt="p", images=[load_image(_png())], mask=load_image(_mask()))
    built = RecraftProvider(api_key="k", base_url=url)._build(
        Operation.INPAINT, request, get_catalog().resolve("recraft:recraftv3")
    )
    body = built.read()
    start = body.index(b"\x89PNG", body.index(b'name="mask"'))
    mask = Image.open(io.BytesIO(body[start:])).convert("L")
    assert mask.getpixel((5, 5)) == 255 and mask.getpixel((60, 5)) == 0


@pytest.mark.parametrize(
    ("op", "action", "endpoint", "credits"),
    [
        (Operation.EDIT, "replace-background", "replaceBackground", 0.04),
        (Operation.EDIT, "vectorize", "vectorize", 0.01),
        (Operation.UPSCALE, "crisp", "crispUpscale", 0.004),
        (Operation.UPSCALE, "creative", "creativeUpscale", 0.25),
        (Operation.REMOVE_BACKGROUND, "remove-background", "removeBackground", 0.01),
    ],
)
def test_operations_by_action(
    recraft: tuple[EmulatorServer, str], op: Operation, action: str, endpoint: str, credits: float
) -> None:
    from limner.images import load_image

    server, _ = recraft
    request = ImageRequest(
        prompt="a beach at noon",
        model="recraft:recraftv3",
        images=[load_image(_png())],
        provider_options={"action": action},
    )
    with limner.Limner() as client:
        estimate = client.plan(op, request).estimated_cost
        result = client.run(op, request)
    assert emulator_stats(server)[f"POST /v1/images/{endpoint}"] == 1
    assert result.cost_usd == pytest.approx(credits)
    assert estimate == pytest.approx(credits)  # the catalog prices the endpoint, not the model
    if endpoint == "vectorize":
        assert result.images[0].media_type == "image/svg+xml"
    if op == Operation.UPSCALE:
        assert result.images[0].width == 64 * 4


def test_generate_background_needs_a_mask_and_unknown_actions_are_refused(
    recraft: tuple[EmulatorServer, str],
) -> None:
    from limner.images import load_image

    image = load_image(_png())
    with limner.Limner() as client:
        with pytest.raises(errors.InvalidRequestError, match="needs a mask"):
            client.run(
                Operation.EDIT,
                ImageRequest(
                    prompt="p",
                    model="recraft:recraftv3",
                    images=[image],
                    provider_options={"action": "generate-background"},
                ),
            )
        with pytest.raises(
            errors.InvalidRequestError, match="Actions for upscale: creative, crisp"
        ):
            client.run(
                Operation.UPSCALE,
                ImageRequest(
                    model="recraft:recraftv3", images=[image], provider_options={"action": "huge"}
                ),
            )
        result = client.run(
            Operation.EDIT,
            ImageRequest(
                prompt="a studio",
                model="recraft:recraftv3",
                images=[image],
                mask=load_image(_mask()),
                provider_options={"action": "generate-background"},
            ),
        )
    assert len(result.images) == 1


def test_controls_are_translated(recraft: tuple[EmulatorServer, str]) -> None:
    from limner.catalog import get_catalog
    from limner.providers.recraft import RecraftProvider

    spec = get_catalog().resolve("recraft:recraftv3")
    native = RecraftProvider(api_key="k").native_request(
        Operation.GENERATE,
        ImageRequest(
            prompt="p",
            provider_options={
                "colors": ["#ff0000"],
                "background_color": [0, 0, 0],
                "artistic_level": 2,
            },
            seed=5,
        ),
        spec,
    )
    body = native["json"]
    assert body["controls"] == {
        "colors": [{"rgb": [255, 0, 0]}],
        "background_color": {"rgb": [0, 0, 0]},
        "artistic_level": 2,
    }
    assert body["random_seed"] == 5 and body["model"] == "recraftv3"
    result = limner.generate(
        "p", model="recraft:recraftv3", provider_options={"colors": ["#00ff00"]}
    )
    assert len(result.images) == 1


def test_content_filter_and_errors_are_mapped(
    recraft: tuple[EmulatorServer, str], client: limner.Limner
) -> None:
    server, _ = recraft
    with pytest.raises(errors.ContentPolicyError, match="content filter"):
        generate(client, f"a {BLOCKED_WORD}", model="recraft:recraftv4")
    httpx.post(server.url + "/_emulator/faults", json={"status": 401})
    with pytest.raises(errors.AuthenticationError):
        generate(client, "x", model="recraft:recraftv4")
    httpx.post(
        server.url + "/_emulator/faults",
        json={"status": 400, "body": {"code": "invalid_size", "message": "Size is odd"}},
    )
    with pytest.raises(errors.ProviderRejectedError, match="Size is odd"):
        generate(client, "x", model="recraft:recraftv4")
    httpx.post(server.url + "/_emulator/faults", json={"status": 429, "retry_after": 0})
    assert len(generate(client, "x", model="recraft:recraftv4").images) == 1


def test_expired_result_urls_fail_cleanly(recraft: tuple[EmulatorServer, str]) -> None:
    server, _ = recraft
    httpx.post(server.url + "/_emulator/settings", json={"delivery_ttl": -1})
    with pytest.raises(errors.LimnerError):
        limner.generate("x", model="recraft:recraftv4")


def test_openai_sdk_drives_the_emulator_for_generation(recraft: tuple[EmulatorServer, str]) -> None:
    openai = pytest.importorskip("openai")
    _, url = recraft
    client = openai.OpenAI(api_key="rc-test", base_url=url)
    response = client.images.generate(
        model="recraftv4_1", prompt="a paper crane", size="1024x1024", extra_body={"random_seed": 4}
    )
    assert response.data and response.data[0].url
    assert httpx.get(response.data[0].url).headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    ("action", "endpoint", "with_mask"),
    [
        ("vectorize", "vectorize", False),
        ("remove-background", "removeBackground", False),
        ("erase-region", "eraseRegion", True),
    ],
)
def test_promptless_actions_run_without_a_prompt(
    recraft: tuple[EmulatorServer, str],
    client: limner.Limner,
    action: str,
    endpoint: str,
    with_mask: bool,
) -> None:
    from limner.images import load_image

    server, _ = recraft
    request = ImageRequest(
        model="recraft:recraftv3",
        images=[load_image(_png())],
        mask=load_image(_mask()) if with_mask else None,
        provider_options={"action": action},
    )
    # With a mask an edit is an inpaint (as the CLI runs it); the action still applies.
    op = Operation.INPAINT if with_mask else Operation.EDIT
    result = client.run(op, request)
    assert emulator_stats(server)[f"POST /v1/images/{endpoint}"] == 1
    assert len(result.images) == 1 and result.warnings == []


def test_a_prompt_given_to_a_promptless_action_is_not_sent_and_says_so(
    recraft: tuple[EmulatorServer, str], client: limner.Limner
) -> None:
    from limner.images import load_image

    request = ImageRequest(
        prompt="ignored",
        model="recraft:recraftv3",
        images=[load_image(_png())],
        provider_options={"action": "vectorize"},
    )
    result = client.run(Operation.EDIT, request)
    assert any("takes no prompt" in w for w in result.warnings)
    native = client.provider("recraft").native_request(
        Operation.EDIT, request, client.resolve("recraft:recraftv3")
    )
    assert "prompt" not in native["multipart"] and "model" not in native["multipart"]


@pytest.mark.parametrize("action", [None, "replace-background", "image-to-image"])
def test_actions_that_need_a_prompt_refuse_an_empty_one_before_sending(
    recraft: tuple[EmulatorServer, str], client: limner.Limner, action: str | None
) -> None:
    from limner.images import load_image

    server, _ = recraft
    request = ImageRequest(
        prompt="  ",
        model="recraft:recraftv3",
        images=[load_image(_png())],
        provider_options={"action": action} if action else {},
    )
    with pytest.raises(errors.InvalidRequestError, match="The prompt is empty") as caught:
        client.run(Operation.EDIT, request)
    if action:
        assert f"needs one for edit with action {action!r}" in caught.value.message
    assert "vectorize|erase-region|remove-background" in (caught.value.hint or "")
    assert emulator_stats(server).get("total", 0) == 0


def test_utility_endpoints_are_estimated_at_their_own_price(
    recraft: tuple[EmulatorServer, str],
) -> None:
    """Without an action, upscale is crisp and remove-background its endpoint; every action
    of the wire table that leaves the model's endpoint has a catalog price."""
    from limner.catalog import get_catalog
    from limner.images import load_image
    from limner.providers.recraft import ACTIONS, DEFAULT_ACTION, UTILITY_ENDPOINTS

    image = load_image(_png())
    with limner.Limner() as client:
        upscale = client.plan(
            Operation.UPSCALE, ImageRequest(model="recraft:recraftv3", images=[image])
        )
        cutout = client.plan(
            Operation.REMOVE_BACKGROUND, ImageRequest(model="recraft:recraftv3", images=[image])
        )
        erase = client.plan(
            Operation.EDIT,
            ImageRequest(
                model="recraft:recraftv3", images=[image], mask=load_image(_mask()),
                provider_options={"action": "erase-region"},
            ),
        )  # fmt: skip
    assert (upscale.estimated_cost, cutout.estimated_cost) == (0.004, 0.01)
    assert erase.estimated_cost == 0.002
    utilities = {a for (_, a), (endpoint, *_) in ACTIONS.items() if endpoint in UTILITY_ENDPOINTS}
    for spec in get_catalog().filter(provider="recraft"):
        assert utilities <= set(spec.option_prices["action"])
        for op in spec.operation_prices:
            assert DEFAULT_ACTION[Operation(op)] in utilities


def test_catalog_promptless_actions_match_the_wire_table() -> None:
    from limner.catalog import get_catalog
    from limner.providers.recraft import ACTIONS

    wire = {action for (op, action), (_, takes_prompt, _) in ACTIONS.items() if not takes_prompt}
    wire_edit = {
        action
        for (op, action), (_, takes_prompt, _) in ACTIONS.items()
        if not takes_prompt and op in (Operation.EDIT, Operation.INPAINT)
    }
    for spec in get_catalog().filter(provider="recraft"):
        assert set(spec.promptless_options["action"]) == wire_edit <= wire


def test_cli_edit_vectorizes_without_a_prompt(
    recraft: tuple[EmulatorServer, str], tmp_path: Path
) -> None:
    import json

    from click.testing import CliRunner

    from limner.cli import cli

    server, _ = recraft
    source = tmp_path / "logo.png"
    source.write_bytes(_png())
    runner = CliRunner()
    ok = runner.invoke(
        cli,
        ["edit", str(source), "", "-m", "recraft-v3", "--option", "action=vectorize",
         "-o", str(tmp_path / "logo.svg"), "--json"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    saved = json.loads(ok.stdout)["images"][0]
    assert saved["media_type"] == "image/svg+xml"
    assert (tmp_path / "logo.svg").read_bytes().startswith(b"<svg")
    refused = runner.invoke(
        cli,
        ["edit", str(source), "", "-m", "recraft-v3", "--option", "action=replace-background"],
    )
    assert refused.exit_code == 2
    assert "needs one for edit with action 'replace-background'" in refused.stderr
    assert emulator_stats(server)["total"] == 2  # the vectorize call and its download
    # The prompt may be left out altogether: the last argument names an existing file.
    bare = runner.invoke(
        cli,
        ["edit", str(source), "-m", "recraft-v3", "--option", "action=vectorize",
         "-o", str(tmp_path / "bare.svg"), "--json"],
    )  # fmt: skip
    assert bare.exit_code == 0, bare.output
    assert json.loads(bare.stdout)["images"][0]["media_type"] == "image/svg+xml"
    missing = runner.invoke(cli, ["edit", str(tmp_path / "nope.png"), "-m", "recraft-v3"])
    assert missing.exit_code == 2 and "is not a file" in missing.stderr
