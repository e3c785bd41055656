"""A batch on a local Ray instance: tasks share one rate limiter, results land in the store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from limner.cli import cli
from limner.store import Store

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture
def local_ray() -> Iterator[None]:
    # Loopback only: the test process may reach nothing else.
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_batch_on_local_ray(openai_env: Any, local_ray: None, tmp_path: Path) -> None:
    _, url = openai_env
    root = url.rsplit("/v1", 1)[0]
    httpx.post(
        f"{root}/_emulator/faults",
        json={"status": 429, "retry_after": 0.2, "count": 1, "path": "/v1/images"},
    )
    path = tmp_path / "p.txt"
    path.write_text("".join(f"ray prompt {i}\n" for i in range(6)))
    args = [
        "batch",
        str(path),
        "-m",
        "openai:gpt-image-2",
        "--size",
        "256x256",
        "--ray",
        "--rpm",
        "600",
        "-o",
        str(tmp_path / "o"),
        "--json",
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["sent"]) == (6, 6)
    assert summary["rate_limited"] == 1  # the shared limiter actor saw the 429
    store = Store()
    prompts = sorted(e.prompt for e in store.search("ray prompt", limit=None, status="ok"))
    store.close()
    assert prompts == [f"ray prompt {i}" for i in range(6)]  # each once, in the shared store
    assert httpx.get(f"{root}/_emulator/stats").json()["POST /v1/images/generations"] == 7
    again = json.loads(CliRunner().invoke(cli, args, catch_exceptions=False).stdout)
    assert again["sent"] == 0
