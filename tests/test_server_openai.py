"""The OpenAI-compatible API, driven by the official ``openai`` SDK against a real server that
routes to the OpenAI emulator."""

from __future__ import annotations

import base64
import io
import os
import threading
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from _server_fixtures import png_bytes, server_starter  # noqa: F401


@pytest.fixture
def server(openai_env: Any, start_server: Any) -> Any:
    return start_server()


@pytest.fixture
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused-on-loopback", max_retries=0)


def _size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def test_generate_b64_and_url(client: openai.OpenAI, server: Any) -> None:
    result = client.images.generate(
        model="openai:gpt-image-2", prompt="a red kite", size="256x256", n=2
    )
    assert len(result.data) == 2
    assert _size(result.data[0].b64_json or "") == (256, 256)
    assert result.usage is not None and result.usage.output_tokens > 0
    by_url = client.images.generate(
        model="gpt-image-2", prompt="a red kite", size="256x256", response_format="url"
    )
    url = by_url.data[0].url or ""
    assert url.startswith(server.url + "/v1/assets/")
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert fetched.headers["x-content-type-options"] == "nosniff"
    tampered = httpx.get(url.replace("sig=", "sig=A"))
    assert tampered.status_code == 403 and tampered.json()["error"]["code"] == "url_expired"
    # A signature that is not ASCII, or an expiry far in the future, is refused like any other.
    path, _, query = url.partition("?")
    expires = dict(pair.split("=", 1) for pair in query.split("&"))["expires"]
    for params in (
        {"expires": expires, "sig": "9\u00b45=>"},
        {"expires": "150065501695229080633344", "sig": "9\u00b45"},
    ):
        forged = httpx.get(path, params=params)
        assert forged.status_code == 403 and forged.json()["error"]["code"] == "url_expired"


def test_edit_with_several_images_and_mask(client: openai.OpenAI) -> None:
    mask = png_bytes(64, 64, (0, 0, 0, 0), mode="RGBA")
    result = client.images.edit(
        model="openai:gpt-image-2",
        image=[
            ("a.png", png_bytes(), "image/png"),
            ("b.png", png_bytes(color=(0, 0, 255)), "image/png"),
        ],
        mask=("mask.png", mask, "image/png"),
        prompt="add a hat",
    )
    assert _size(result.data[0].b64_json or "") == (64, 64)
    assert result.model_extra and result.model_extra["limner"]["model"] == "openai:gpt-image-2"


def test_variations(client: openai.OpenAI) -> None:
    result = client.images.create_variation(
        model="openai:dall-e-2", image=("a.png", png_bytes(), "image/png"), n=2, size="256x256"
    )
    assert len(result.data) == 2


def test_models_lists_the_catalog(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert "openai:gpt-image-2" in ids
    assert client.models.retrieve("openai:gpt-image-2").owned_by == "openai"


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"prompt": "x", "colour": "red"}', 400, "unknown field 'colour'"),
        (b"{}", 400, "missing required field 'prompt'"),
        (b'{"prompt": "x", "model": "no-such-model"}', 404, "Unknown model"),
        (b'{"prompt": "x", "model": "openai:gpt-image-2", "size": "999x7"}', 400, "Size 999x7"),
        (b'{"prompt": "x", "n": 0}', 400, "n"),
        (b'{"prompt": "x", "seed": 1180591620717411303424}', 400, "seed"),
        (b'{"prompt": "x", "seed": 9223372036854775807, "n": 2}', 400, "leaves no room"),
    ],
)
def test_bad_json_requests_are_4xx(server: Any, body: bytes, status: int, needle: str) -> None:
    response = httpx.post(
        server.url + "/v1/images/generations",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status
    assert needle in _error(response)["message"]


def _edit(
    server: Any, files: list[tuple[str, tuple[str, bytes, str]]], **data: str
) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/images/edits",
        data={"prompt": "p", "model": "openai:gpt-image-2", **data},
        files=files,
    )


def test_bad_uploads_are_4xx(server: Any) -> None:
    not_image = _edit(server, [("image", ("a.png", b"hello, not a picture", "image/png"))])
    assert not_image.status_code == 400 and "not an image" in _error(not_image)["message"]
    wrong_mask = _edit(
        server,
        [
            ("image", ("a.png", png_bytes(64, 64), "image/png")),
            ("mask", ("m.png", png_bytes(32, 32), "image/png")),
        ],
    )
    assert wrong_mask.status_code == 400 and "mask" in _error(wrong_mask)["message"].lower()
    missing = _edit(server, [])
    assert missing.status_code == 400


def test_oversized_upload_is_413_or_400(openai_env: Any, start_server: Any) -> None:
    server = start_server(max_upload_bytes=2000, max_request_bytes=100_000)
    noise = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    too_big = _edit(server, [("image", ("a.png", buf.getvalue(), "image/png"))])
    assert too_big.status_code == 400 and "larger than" in _error(too_big)["message"]
    huge = httpx.post(
        server.url + "/v1/images/generations",
        content=b"x" * 200_000,
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413


def test_keys_required_once_created(openai_env: Any, start_server: Any) -> None:
    from limner.server.auth import KeyRing
    from limner.store import Store

    store = Store()
    _, reader = KeyRing(store).create("reader", ["read"])
    _, maker = KeyRing(store).create("maker", ["generate", "read"])
    store.close()
    server = start_server()
    body = {"prompt": "x", "model": "openai:gpt-image-2", "size": "256x256"}
    missing = httpx.post(server.url + "/v1/images/generations", json=body)
    assert missing.status_code == 401 and _error(missing)["code"] == "missing_api_key"
    bad = httpx.post(
        server.url + "/v1/images/generations",
        json=body,
        headers={"authorization": "Bearer lmn_wrong"},
    )
    assert bad.status_code == 401 and _error(bad)["code"] == "invalid_api_key"
    scoped = httpx.post(
        server.url + "/v1/images/generations",
        json=body,
        headers={"authorization": f"Bearer {reader}"},
    )
    assert scoped.status_code == 403 and _error(scoped)["code"] == "insufficient_scope"
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=maker, max_retries=0)
    assert len(sdk.images.generate(**body).data) == 1  # type: ignore[arg-type]
    db_bytes = (store.home / "limner.db").read_bytes()
    assert maker.encode() not in db_bytes and reader.encode() not in db_bytes


def test_idempotency_replay_mismatch_and_conflict(server: Any, openai_env: Any) -> None:
    emulator, _ = openai_env
    url = server.url + "/v1/images/generations"
    body = {"prompt": "a boat", "model": "openai:gpt-image-2", "size": "256x256"}
    first = httpx.post(url, json=body, headers={"Idempotency-Key": "k1"})
    again = httpx.post(url, json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    other = httpx.post(url, json={**body, "prompt": "a plane"}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 422 and _error(other)["code"] == "idempotency_mismatch"
    assert httpx.get(emulator.url + "/_emulator/stats").json()["POST /v1/images/generations"] == 1

    httpx.post(emulator.url + "/_emulator/faults", json={"delay": 1.5, "count": 1})
    slow: dict[str, httpx.Response] = {}
    thread = threading.Thread(
        target=lambda: slow.setdefault(
            "r", httpx.post(url, json=body, headers={"Idempotency-Key": "k2"}, timeout=30)
        )
    )
    thread.start()
    import time

    deadline = time.monotonic() + 10
    while (
        httpx.get(emulator.url + "/_emulator/stats").json().get("POST /v1/images/generations", 0)
        < 2
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    duplicate = httpx.post(url, json=body, headers={"Idempotency-Key": "k2"})
    thread.join()
    assert duplicate.status_code == 409 and _error(duplicate)["code"] == "idempotency_conflict"
    assert slow["r"].status_code == 200


def test_provider_errors_map_to_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(
            model="openai:gpt-image-2", prompt="forbidden-content here", size="256x256"
        )
    assert info.value.code == "content_policy"


def test_upstream_calls_follow_the_proxy_environment(
    openai_env: Any, emulator: Any, start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY routes provider calls through the proxy and NO_PROXY exempts hosts, as for
    httpx. The proxy here is a second emulator: it answers the absolute-form requests a proxy
    receives itself, so each emulator's count shows which way a call went."""
    upstream, _ = openai_env
    proxy, _ = emulator("openai")
    local = httpx.Client(trust_env=False, timeout=30)  # this test's own calls go direct

    def generations(server: Any) -> int:
        stats = local.get(server.url + "/_emulator/stats").json()
        return int(stats.get("POST /v1/images/generations", 0))

    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    body = {"model": "openai:gpt-image-2", "prompt": "a lighthouse", "size": "1024x1024"}
    proxied = start_server()
    response = local.post(proxied.url + "/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    assert (generations(proxy), generations(upstream)) == (1, 0)

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    exempt = start_server()
    response = local.post(exempt.url + "/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    assert (generations(proxy), generations(upstream)) == (1, 1)


def test_a_provider_option_wider_than_64_bits_is_logged_whole(server: Any) -> None:
    body = {"prompt": "a kite", "model": "openai:gpt-image-2", "size": "256x256"}
    wide = {**body, "provider_options": {"user": 2**70 + 1}}
    response = httpx.post(server.url + "/v1/images/generations", json=wide, timeout=60)
    assert response.status_code == 200, response.text
    generation = response.json()["limner"]["generation_id"]
    item = httpx.get(f"{server.url}/v1/gallery/items/{generation}").json()
    assert item["params"]["provider_options"] == {"user": 2**70 + 1}
