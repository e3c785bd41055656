"""The gallery's page and its JSON API: list, search, view, delete, re-run and use as input."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from _server_fixtures import server_starter  # noqa: F401


@pytest.fixture
def server(openai_env: Any, start_server: Any) -> Any:
    return start_server()


def _job(server: Any, spec: dict[str, Any]) -> dict[str, Any]:
    job = httpx.post(server.url + "/v1/jobs", json=spec).json()
    deadline = time.monotonic() + 20
    while job["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
        job = httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()
    return dict(job)


def test_page_and_static_files_are_served(server: Any) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and 'id="grid"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert (
        httpx.get(server.url + "/static/gallery.js")
        .headers["content-type"]
        .startswith("text/javascript")
    )
    assert httpx.get(server.url + "/static/..%2Fapp.py").status_code == 404


def test_search_view_use_as_input_and_delete(server: Any) -> None:
    first = _job(
        server,
        {
            "prompt": "a blue whale",
            "model": "openai:gpt-image-2",
            "size": "256x256",
            "tags": ["sea"],
        },
    )
    _job(server, {"prompt": "a red barn", "model": "openai:gpt-image-2", "size": "256x256"})
    found = httpx.get(server.url + "/v1/gallery/items", params={"q": "whale"}).json()["data"]
    assert [item["prompt"] for item in found] == ["a blue whale"]
    assert [
        i["prompt"]
        for i in httpx.get(server.url + "/v1/gallery/items", params={"tag": "sea"}).json()["data"]
    ] == ["a blue whale"]
    item = httpx.get(f"{server.url}/v1/gallery/items/{first['result']['generation_id']}").json()
    assert item["params"]["size"] == "256x256" and item["model"] == "openai:gpt-image-2"
    image = httpx.get(server.url + item["images"][0]["url"])
    assert image.status_code == 200
    edit = _job(
        server,
        {
            "operation": "edit",
            "prompt": "add a boat",
            "model": "openai:gpt-image-2",
            "images": ["asset:" + item["images"][0]["sha256"]],
        },
    )
    assert edit["status"] == "succeeded"
    assert httpx.delete(f"{server.url}/v1/gallery/items/{item['id']}").json()["deleted"] is True
    assert httpx.get(server.url + "/v1/gallery/items", params={"q": "whale"}).json()["data"] == []
