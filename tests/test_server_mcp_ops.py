"""The MCP ``upscale`` and ``remove_background`` tools, driven by the official MCP client over
stdio: local backends, a cloud model through the engine, and the budget refusing one."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

mcp = pytest.importorskip("mcp")
from _server_fixtures import mcp_stdio_params, png_bytes, server_starter  # noqa: E402, F401


async def _calls(env: dict[str, str], calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    from mcp import Client

    async with Client(mcp_stdio_params(env)) as client:
        return [await client.call_tool(name, args) for name, args in calls]


def _summary(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content[0].text
    data: dict[str, Any] = json.loads(result.content[-1].text)
    return data


def test_upscale_and_remove_background_locally(tmp_path: Path) -> None:
    from PIL import Image, ImageDraw

    image = tmp_path / "subject.png"
    picture = Image.new("RGB", (48, 40), (240, 240, 240))
    ImageDraw.Draw(picture).ellipse((14, 10, 34, 30), fill=(200, 20, 20))
    picture.save(image)
    upscaled, cut = asyncio.run(
        _calls({}, [
            ("upscale", {"image_path": str(image), "scale": 3}),
            ("remove_background", {"image_path": str(image)}),
        ])
    )  # fmt: skip
    summary = _summary(upscaled)
    assert [c.type for c in upscaled.content] == ["image", "text"]
    assert (summary["images"][0]["width"], summary["images"][0]["height"]) == (144, 120)
    assert os.path.exists(summary["images"][0]["path"]) and summary["generation_id"]
    cut_summary = _summary(cut)
    assert [c.type for c in cut.content] == ["image", "image", "text"]  # cut-out, then its mask
    with Image.open(cut_summary["images"][0]["path"]) as cutout:
        assert cutout.mode == "RGBA" and cutout.getpixel((1, 1))[3] == 0  # background gone


def test_cloud_operations_go_through_the_engine_and_its_budget(
    emulator: Any, tmp_path: Path
) -> None:
    _, base = emulator("stability")
    image = tmp_path / "in.png"
    image.write_bytes(png_bytes(32, 32))
    env = {
        "STABILITY_API_KEY": "sk-stab", "LIMNER_STABILITY_BASE_URL": base,
        # remove-background lists at $0.05 and upscale-fast at $0.02: the cap admits the first.
        "LIMNER_BUDGET_DAILY_USD": "0.06",
    }  # fmt: skip
    removed, refused, missing = asyncio.run(
        _calls(env, [
            ("remove_background", {"image_path": str(image), "model": "stability:remove-background"}),
            ("upscale", {"image_path": str(image), "model": "stability:upscale-fast"}),
            ("upscale", {"image_path": str(tmp_path / "nope.png")}),
        ])
    )  # fmt: skip
    summary = _summary(removed)
    assert summary["model"] == "stability:remove-background" and summary["images"]
    assert refused.is_error and "daily budget" in refused.content[0].text
    assert missing.is_error and "does not exist" in missing.content[0].text
    from limner.store import Store

    store = Store()
    try:
        entries = {e.model: e for e in store.search(None, limit=10)}
    finally:
        store.close()
    assert entries["stability:remove-background"].cost_usd == pytest.approx(0.05)
    assert entries["stability:upscale-fast"].status == "refused"


async def _keyed_http_calls(url: str, secret: str, calls: int) -> list[Any]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {secret}"})
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        args = {"prompt": "a fox", "model": "openai:gpt-image-2", "size": "256x256",
                "quality": "low"}  # fmt: skip
        return [await client.call_tool("generate", args) for _ in range(calls)]


def test_mcp_under_serve_charges_the_callers_key(openai_env: Any, start_server: Any) -> None:
    server = start_server()
    ring = server.app.state.ctx.keys
    # $0.0075 is reserved per call (estimate plus the metered margin): one call fits, not two.
    key_id, secret = ring.create("agent", ["generate"], budget={"daily": 0.008})
    first, second = asyncio.run(_keyed_http_calls(server.url + "/mcp/", secret, 2))
    assert not first.is_error and ring.budget_status(key_id)[0]["spent_usd"] > 0
    assert second.is_error and "'agent'" in second.content[0].text
    assert "left of its daily budget" in second.content[0].text
