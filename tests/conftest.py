"""Test set-up: a private LIMNER_HOME per test, no plugins, no provider keys from the
environment, and no network beyond loopback."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator

import pytest

from limner.client import Limner
from limner.emulators import base_url, create_app
from limner.emulators.common import EmulatorServer

PROVIDER_ENV = (
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "REPLICATE_API_TOKEN", "FAL_KEY", "BFL_API_KEY",
    "STABILITY_API_KEY", "IDEOGRAM_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY",
    "RECRAFT_API_TOKEN", "MIDJOURNEY_PROXY_URL", "MJ_API_SECRET", "REMOVEBG_API_KEY",
    "LIMNER_DEFAULT_MODEL", "LIMNER_DATABASE_URL", "LIMNER_BUDGET_DAILY_USD",
    "LIMNER_BUDGET_MONTHLY_USD",
)  # fmt: skip

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        host = str(address[0])
        try:
            ok = ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            ok = host == "localhost"
        if not ok:
            raise ConnectionRefusedError(f"tests may not reach {host}: only loopback is allowed")
    _real_connect(self, address)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("limner-home")
    monkeypatch.setenv("LIMNER_HOME", str(home))
    monkeypatch.setenv("LIMNER_LOAD_PLUGINS", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in list(__import__("os").environ):
        if name.startswith("LIMNER_") and name.endswith("_BASE_URL"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)


@pytest.fixture
def client() -> Iterator[Limner]:
    """One warm client per test: many calls in one test share its HTTP pool and store."""
    with Limner() as shared:
        yield shared


@pytest.fixture
def emulator() -> Iterator[Callable[[str], tuple[EmulatorServer, str]]]:
    """Start a provider emulator on loopback: ``server, base_url = emulator("openai")``."""
    servers: list[EmulatorServer] = []

    def start(name: str) -> tuple[EmulatorServer, str]:
        server = EmulatorServer(create_app(name)).start()
        servers.append(server)
        return server, base_url(name, server.url)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def openai_env(
    emulator: Callable[[str], tuple[EmulatorServer, str]], monkeypatch: pytest.MonkeyPatch
) -> tuple[EmulatorServer, str]:
    """The OpenAI emulator, with OPENAI_API_KEY and LIMNER_OPENAI_BASE_URL pointing at it."""
    server, url = emulator("openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456")
    monkeypatch.setenv("LIMNER_OPENAI_BASE_URL", url)
    return server, url
