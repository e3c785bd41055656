"""Server security: bind refusal, Host and Origin checks, SSRF-safe fetching, rate limits."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from _server_fixtures import server_starter  # noqa: F401
from limner import errors
from limner.fetch import SafeFetcher, check_address
from limner.server.settings import ServerSettings


def test_non_loopback_bind_needs_auth() -> None:
    with pytest.raises(errors.UserError, match="without authentication"):
        ServerSettings(host="0.0.0.0").check_bind(auth_configured=False)
    ServerSettings(host="0.0.0.0").check_bind(auth_configured=True)
    ServerSettings(host="127.0.0.1").check_bind(auth_configured=False)


def test_cli_refuses_public_bind_without_keys() -> None:
    from click.testing import CliRunner

    from limner.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 2 and "without authentication" in result.output


@pytest.mark.parametrize(
    "ip",
    ["169.254.169.254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "::127.0.0.1",
     "192.0.0.192", "100.100.100.200", "fd00:ec2::254", "10.0.0.1", "224.0.0.1", "0.0.0.0", "::", "fe80::1"],
)  # fmt: skip
def test_internal_addresses_are_refused_in_every_form(ip: str) -> None:
    assert check_address(ip) is not None


def test_fetcher_refuses_obfuscated_hosts_ports_and_userinfo() -> None:
    fetcher = SafeFetcher(allowed_ports=frozenset({80, 443}), allow_http=True)
    with httpx.Client() as client:
        for url in (
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.1/x.png",
            "http://[::ffff:7f00:1]/",
        ):
            with pytest.raises(errors.InputImageError, match="loopback"):
                fetcher.fetch(client, url)
        with pytest.raises(errors.InputImageError, match="port 6379"):
            fetcher.fetch(client, "http://8.8.8.8:6379/")
        with pytest.raises(errors.InputImageError, match="credentials"):
            fetcher.fetch(client, "http://user:pw@8.8.8.8/")
        with pytest.raises(errors.InputImageError, match="only http"):
            fetcher.fetch(client, "file:///etc/passwd")


def test_fetcher_connects_to_the_checked_address(openai_env: Any) -> None:
    emulator, _ = openai_env
    fetcher = SafeFetcher(allow_loopback=True)
    with httpx.Client() as client:
        fetched = fetcher.fetch(client, f"http://localhost:{emulator.port}/_emulator/stats")
    assert fetched.data.startswith(b"{") and fetcher.resolved["localhost"][0] in (
        "127.0.0.1",
        "::1",
    )


def test_redirect_to_an_internal_address_is_refused(openai_env: Any) -> None:
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    from limner.emulators.common import EmulatorServer

    app = Starlette(
        routes=[Route("/r", lambda request: RedirectResponse("http://169.254.169.254/latest"))]
    )
    with (
        EmulatorServer(app) as redirector,
        httpx.Client() as client,
        pytest.raises(errors.InputImageError, match=r"169\.254\.169\.254"),
    ):
        SafeFetcher(allow_loopback=True).fetch(client, redirector.url + "/r")


def test_foreign_host_header_and_cross_origin_post_are_refused(
    openai_env: Any, start_server: Any
) -> None:
    server = start_server()
    rebound = httpx.get(server.url + "/v1/models", headers={"host": "attacker.example"})
    assert rebound.status_code == 421
    csrf = httpx.post(
        server.url + "/v1/jobs", json={"prompt": "x"}, headers={"origin": "http://attacker.example"}
    )
    assert csrf.status_code == 403 and csrf.json()["error"]["code"] == "cross_origin"


def test_per_key_rate_limit_answers_429_with_retry_after(
    openai_env: Any, start_server: Any
) -> None:
    from limner.server.auth import KeyRing
    from limner.store import Store

    store = Store()
    _, key = KeyRing(store).create("slow", ["read"], rate_per_minute=2)
    store.close()
    server = start_server()
    headers = {"authorization": f"Bearer {key}"}
    codes = [httpx.get(server.url + "/v1/models", headers=headers).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    limited = httpx.get(server.url + "/v1/models", headers=headers)
    assert int(limited.headers["retry-after"]) >= 1


def test_unexpected_errors_hide_the_traceback(
    openai_env: Any, start_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server()
    app = server.app

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail sk-live-123")

    time.sleep(0)
    response = httpx.get(server.url + "/boom")
    assert response.status_code == 500
    assert "secret" not in response.text and "Traceback" not in response.text


def test_keys_never_reach_the_log(
    openai_env: Any,
    start_server: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import logging

    provider_key = "sk-canary-provider-7f3a9c"
    monkeypatch.setenv("OPENAI_API_KEY", provider_key)
    server = start_server()
    server_key = server.app.state.ctx.keys.create("canary", ["generate", "read"])[1]
    caplog.set_level(logging.DEBUG)
    headers = {"authorization": f"Bearer {server_key}"}
    ok = httpx.post(
        server.url + "/v1/images/generations",
        json={"prompt": "x", "model": "openai:gpt-image-2", "size": "256x256"},
        headers=headers,
    )
    assert ok.status_code == 200
    bad = httpx.post(
        server.url + "/v1/images/generations",
        json={"prompt": "x"},
        headers={"authorization": "Bearer lmn_canary_wrong"},
    )
    assert bad.status_code == 401
    for secret in (provider_key, server_key, "lmn_canary_wrong"):
        assert secret not in caplog.text and secret not in ok.text and secret not in bad.text
