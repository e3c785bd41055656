"""A property-based run (schemathesis) against the server's own OpenAPI document: whatever
the generated input, no route answers with a server error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from _server_fixtures import server_starter  # noqa: F401

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.slow
@pytest.mark.skipif(
    not SCHEMATHESIS.exists() and not shutil.which("schemathesis"),
    reason="schemathesis is not installed",
)
def test_no_route_answers_5xx(openai_env: Any, start_server: Any, tmp_path: Path) -> None:
    server = start_server()
    document = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/images/generations" in document["paths"] and "/v1/jobs" in document["paths"]
    run = subprocess.run(
        [
            str(SCHEMATHESIS if SCHEMATHESIS.exists() else shutil.which("schemathesis")),
            "run", server.url + "/openapi.json", "--checks", "not_a_server_error",
            "--max-examples", "5", "--phases", "examples,coverage,fuzzing", "--workers", "1",
            "--request-timeout", "30", "--no-color",
        ],
        capture_output=True, text=True, timeout=400, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
