"""The job queue on a real PostgreSQL server shared by two limner servers.

The set-up starts PostgreSQL (``initdb`` + ``pg_ctl``, as the ``postgres`` user when run as root)
in a temporary directory on a loopback port; the test is skipped where PostgreSQL is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _server_fixtures import free_port, server_starter  # noqa: F401

pytest.importorskip("psycopg")


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    # Outside pytest's private (0700) temp tree, so that the postgres user can reach it.
    root = Path(tempfile.mkdtemp(prefix="limner-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    port = free_port()
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "limner", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", options, "-w", "-l", str(data / "log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://limner@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_servers_share_one_queue(
    openai_env: Any, start_server: Any, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator, _ = openai_env
    monkeypatch.setenv("LIMNER_DATABASE_URL", postgres_url)
    front = start_server(run_worker=False)
    worker_a = start_server(workers=2)
    worker_b = start_server(workers=2)
    jobs = [
        {"prompt": f"pg job {i}", "model": "openai:gpt-image-2", "size": "256x256"}
        for i in range(8)
    ]
    batch = httpx.post(
        front.url + "/v1/jobs", json={"jobs": jobs}, headers={"Idempotency-Key": "pg-batch"}
    ).json()
    replay = httpx.post(
        front.url + "/v1/jobs", json={"jobs": jobs}, headers={"Idempotency-Key": "pg-batch"}
    ).json()
    assert replay["batch_id"] == batch["batch_id"]
    deadline = time.monotonic() + 30
    while True:
        final = [httpx.get(f"{worker_b.url}/v1/jobs/{j['id']}").json() for j in batch["jobs"]]
        if all(j["status"] == "succeeded" for j in final):
            break
        assert time.monotonic() < deadline, [j["status"] for j in final]
        time.sleep(0.1)
    assert all(j["submit_count"] == 1 for j in final)
    assert httpx.get(emulator.url + "/_emulator/stats").json()["POST /v1/images/generations"] == 8
    assert worker_a.url != worker_b.url
