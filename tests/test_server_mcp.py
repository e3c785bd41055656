"""``limner mcp`` over stdio, driven by the official MCP client."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

mcp = pytest.importorskip("mcp")
from _server_fixtures import mcp_stdio_params, server_starter  # noqa: E402, F401


async def _session(env: dict[str, str]) -> tuple[list[str], Any, Any, Any]:
    from mcp import Client

    async with Client(mcp_stdio_params(env)) as client:
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        generated = await client.call_tool(
            "generate", {"prompt": "a snail", "model": "openai:gpt-image-2", "size": "256x256"}
        )
        estimate = await client.call_tool(
            "estimate_cost",
            {"model": "openai:gpt-image-2", "n": 4, "size": "1024x1024", "quality": "low"},
        )
        refused = await client.call_tool("generate", {"prompt": "x", "model": "no-such-model"})
        return tools, generated, estimate, refused


def test_mcp_tools_generate_estimate_and_refuse(openai_env: Any) -> None:
    _, base = openai_env
    env = {"OPENAI_API_KEY": "sk-test", "LIMNER_OPENAI_BASE_URL": base}
    tools, generated, estimate, refused = asyncio.run(_session(env))
    assert tools == [
        "edit", "estimate_cost", "generate", "recommend_model", "remove_background",
        "search_log", "upscale",
    ]  # fmt: skip
    kinds = [c.type for c in generated.content]
    assert kinds == ["image", "text"] and generated.content[0].mime_type == "image/png"
    summary = json.loads(generated.content[1].text)
    assert summary["images"][0]["width"] == 256 and os.path.exists(summary["images"][0]["path"])
    assert json.loads(estimate.content[0].text)["total_usd"] == pytest.approx(4 * 0.006)
    assert refused.is_error and "Unknown model" in refused.content[0].text


async def _http_session(url: str) -> tuple[list[str], Any]:
    from mcp import Client

    async with Client(url) as client:
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        estimate = await client.call_tool(
            "estimate_cost", {"model": "openai:gpt-image-2", "quality": "low", "size": "1024x1024"}
        )
        return tools, estimate


def test_mcp_over_streamable_http_under_serve(openai_env: Any, start_server: Any) -> None:
    import httpx

    server = start_server()
    tools, estimate = asyncio.run(_http_session(server.url + "/mcp/"))
    assert "generate" in tools and json.loads(estimate.content[0].text)[
        "per_image_usd"
    ] == pytest.approx(0.006)
    server.app.state.ctx.keys.create("k", ["read"])  # from now on a key is required
    refused = httpx.post(
        server.url + "/mcp/", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    )
    assert refused.status_code == 401
