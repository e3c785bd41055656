"""Shared set-up for the server tests: a real limner server on a loopback port."""

from __future__ import annotations

import io
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The limner CLI in a subprocess, run by this interpreter (a console script may be elsewhere).
LIMNER_CLI = [sys.executable, "-c", "import sys; from limner.cli import main; main(sys.argv[1:])"]


def mcp_stdio_params(env: dict[str, str]) -> Any:
    """How the official MCP client starts ``limner mcp`` over stdio, with ``env`` added."""
    from mcp.client.stdio import StdioServerParameters

    return StdioServerParameters(
        command=LIMNER_CLI[0], args=[*LIMNER_CLI[1:], "mcp"], env={**os.environ, **env}
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.app = app
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(name="start_server")
def server_starter(tmp_path: Path) -> Iterator[Any]:
    """``start_server(**settings)`` runs a limner server in a thread; stopped after the test."""
    from limner.server.app import create_app
    from limner.server.settings import ServerSettings

    servers: list[RunningServer] = []

    def start(**overrides: Any) -> RunningServer:
        port = free_port()
        settings = ServerSettings.from_env(port=port, **overrides)
        server = RunningServer(create_app(settings), port).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def png_bytes(
    width: int = 64, height: int = 64, color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB"
) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (width, height), color).save(buf, format="PNG")
    return buf.getvalue()
