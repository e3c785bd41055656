"""The published OpenAPI document describes the multipart bodies of the edit and variation
routes, which read their forms by hand; and a request built from it is accepted."""

from __future__ import annotations

from typing import Any

import httpx

from _server_fixtures import png_bytes, server_starter  # noqa: F401


def _form_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    body = document["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    schema: dict[str, Any] = body["content"]["multipart/form-data"]["schema"]
    return schema


def test_multipart_routes_publish_their_fields(openai_env: Any, start_server: Any) -> None:
    server = start_server()
    document = httpx.get(server.url + "/openapi.json").json()
    edits = _form_schema(document, "/v1/images/edits")
    fields = edits["properties"]
    for name in (
        "image",
        "image[]",
        "mask",
        "prompt",
        "model",
        "n",
        "size",
        "response_format",
        "quality",
        "background",
        "output_format",
        "negative_prompt",
        "seed",
        "tags",
    ):
        assert name in fields, name  # fmt: skip
    assert fields["image"]["items"] == {"type": "string", "format": "binary"}
    assert fields["mask"]["format"] == "binary"
    assert fields["response_format"]["enum"] == ["b64_json", "url"]
    assert fields["n"]["maximum"] == 10 and "provider_options" not in fields
    assert set(edits["required"]) == {"prompt", "image"} and not edits["additionalProperties"]
    variations = _form_schema(document, "/v1/images/variations")
    assert variations["required"] == ["image"] and "prompt" not in variations["properties"]
    # A request made from the documented names works.
    answer = httpx.post(
        server.url + "/v1/images/edits",
        data={"prompt": "a hat", "model": "openai:gpt-image-2", "size": "256x256", "n": "1",
              "response_format": "url"},
        files=[("image[]", ("a.png", png_bytes(64, 64), "image/png")),
               ("image[]", ("b.png", png_bytes(64, 64, (0, 0, 200)), "image/png"))],
        timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"][0]["url"].startswith(server.url + "/v1/assets/")
