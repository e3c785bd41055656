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


def test_serve_keeps_idle_connections_for_keep_alive_seconds(tmp_path: Any) -> None:
    """`limner serve --keep-alive N`: a client's idle connection is still usable before N
    seconds and closed by the server after (uvicorn's own default, 5 s, races httpx's)."""
    import os
    import socket
    import subprocess

    from _server_fixtures import LIMNER_CLI, free_port

    port = free_port()
    proc = subprocess.Popen(
        [*LIMNER_CLI, "serve", "--port", str(port), "--keep-alive", "2",
         "--no-worker", "--log-level", "warning"],
        env={**os.environ, "LIMNER_HOME": str(tmp_path)},
    )  # fmt: skip
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    def exchange(sock: socket.socket) -> bytes:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(65536)
        return head

    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "server exited"
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with sock:
            assert exchange(sock).startswith(b"HTTP/1.1 200")
            time.sleep(1)
            assert exchange(sock).startswith(b"HTTP/1.1 200")
            time.sleep(3)
            sock.settimeout(0.5)
            assert sock.recv(65536) == b""  # already closed by the server
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LIMNER_SERVER_BODY_READS", "four", "is not a whole number of zero or more"),
        ("LIMNER_SERVER_SLOT_WAIT_S", "-1", "is not a number of zero or more"),
        ("LIMNER_SERVER_GALLERY", "maybe", "is neither on nor off"),
    ],
)
def test_serve_refuses_a_malformed_setting_by_name(
    tmp_path: Any, variable: str, value: str, message: str
) -> None:
    import os
    import subprocess

    from _server_fixtures import LIMNER_CLI

    env = {**os.environ, "LIMNER_HOME": str(tmp_path), variable: value}
    done = subprocess.run(
        [*LIMNER_CLI, "serve", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{variable}={value!r} {message}" in done.stderr
    assert "unset it for the default" in done.stderr and "Traceback" not in done.stderr
