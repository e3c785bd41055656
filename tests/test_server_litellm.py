"""LiteLLM, used as a client with our server as its OpenAI-compatible backend.

LiteLLM 1.106.2 requires openai<3 while this project tests with openai 3.x, so it lives in its
own virtualenv (``scripts/litellm-venv`` builds ``.cache/litellm-venv``) and runs here in a
subprocess of that venv's Python. The test skips, saying why, only when that venv is absent."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from _server_fixtures import server_starter  # noqa: F401

LITELLM_PYTHON = Path(__file__).resolve().parents[1] / ".cache" / "litellm-venv" / "bin" / "python"

# Runs inside the LiteLLM venv. Only loopback may be reached, as in every test of this suite;
# LiteLLM's price map is read from the package instead of fetched at import time.
CLIENT_SCRIPT = r"""
import ipaddress, json, os, socket, sys

_connect = socket.socket.connect

def _loopback_only(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        host = str(address[0]).split("%")[0]
        try:
            allowed = ipaddress.ip_address(host).is_loopback
        except ValueError:
            allowed = host == "localhost"
        if not allowed:
            raise ConnectionRefusedError(f"tests may not reach {host}: only loopback is allowed")
    return _connect(self, address)

socket.socket.connect = _loopback_only
import litellm

api_base = sys.argv[1]
out = {}
ok = litellm.image_generation(
    model="openai/openai:gpt-image-2", prompt="a paper crane", size="256x256",
    api_base=api_base, api_key="unused-on-loopback",
)
out["b64_json"] = ok.data[0].b64_json
try:
    litellm.image_generation(
        model="openai/no-such-model", prompt="x", api_base=api_base, api_key="unused-on-loopback"
    )
except Exception as exc:
    out["error"] = {"type": type(exc).__name__, "status": getattr(exc, "status_code", None),
                    "message": str(exc)}
print(json.dumps(out))
"""


def run_litellm_client(api_base: str) -> dict[str, Any]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
    }
    done = subprocess.run(
        [str(LITELLM_PYTHON), "-c", CLIENT_SCRIPT, api_base],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
@pytest.mark.skipif(
    not LITELLM_PYTHON.exists(),
    reason=f"LiteLLM venv absent ({LITELLM_PYTHON}): run scripts/litellm-venv to build it",
)
def test_litellm_image_generation_through_the_server(openai_env: Any, start_server: Any) -> None:
    server = start_server()
    result = run_litellm_client(server.url + "/v1")

    image = Image.open(io.BytesIO(base64.b64decode(result["b64_json"])))
    image.load()
    assert image.size == (256, 256)
    # LiteLLM wraps the server's 4xx in its own exception class; our message travels through.
    error = result.get("error")
    assert error is not None, "LiteLLM accepted an unknown model"
    assert error["status"] is not None and 400 <= error["status"] < 500, error
    assert "Unknown model 'no-such-model'" in error["message"], error
