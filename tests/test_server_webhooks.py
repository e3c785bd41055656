"""Durable webhooks: stored deliveries, retried with backoff, surviving a server restart."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from _server_fixtures import LIMNER_CLI, free_port, server_starter  # noqa: F401

SECRET = "whsec-durable"


class Receiver:
    """A webhook receiver on loopback that answers 500 to the first ``failures`` attempts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        async def hook(request: Request) -> Response:
            body = await request.body()
            with self.lock:
                status = 500 if len(self.calls) < self.failures else 204
                self.calls.append((dict(request.headers), body, status))
            return Response(status_code=status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    from limner.emulators.common import EmulatorServer

    hook = Receiver(failures=2)
    with EmulatorServer(hook.app()) as server:
        yield hook, server.url + "/hook"


def _spawn(home: Path, port: int, env_extra: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LIMNER_HOME": str(home), **env_extra}
    args = ["serve", "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen([*LIMNER_CLI, *args], env=env)


def _wait_for(what: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def _healthy(url: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "server exited"
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _delivery(home: Path) -> dict[str, Any] | None:
    engine = sa.create_engine(f"sqlite:///{home / 'limner.db'}")
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT * FROM server_webhook_deliveries")).first()
    finally:
        engine.dispose()
    return dict(row._mapping) if row else None


@pytest.mark.slow
def test_pending_delivery_survives_a_restart_and_arrives_once(
    openai_env: Any, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    from limner.server.webhooks import verify

    hook, hook_url = receiver
    _, base = openai_env
    env = {
        "OPENAI_API_KEY": "sk-test", "LIMNER_OPENAI_BASE_URL": base,
        "LIMNER_SERVER_WEBHOOK_SECRET": SECRET, "LIMNER_SERVER_WEBHOOK_ALLOW_PRIVATE": "1",
        "LIMNER_SERVER_WEBHOOK_BACKOFF_S": "0.5",
    }  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _spawn(tmp_path, port, env)
    try:
        _wait_for(lambda: _healthy(url, proc))
        spec = {"prompt": "hooked", "model": "openai:gpt-image-2", "size": "256x256",
                "webhook_url": hook_url}  # fmt: skip
        job = httpx.post(url + "/v1/jobs", json=spec).json()
        # The first attempt failed and is recorded (not leased): kill the server outright.
        _wait_for(
            lambda: (d := _delivery(tmp_path)) and d["attempts"] == 1 and not d["lease_owner"]
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert len(hook.calls) == 1
        proc = _spawn(tmp_path, port, env)
        _wait_for(lambda: _healthy(url, proc))
        final = _wait_for(
            lambda: (j := httpx.get(f"{url}/v1/jobs/{job['id']}").json())["webhook_status"] and j
        )
        time.sleep(1.0)  # room for a duplicate to show up, were there one
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert final["webhook_status"] == "delivered" and final["status"] == "succeeded"
    assert [status for _, _, status in hook.calls] == [500, 500, 204]  # arrived once
    delivery_ids = {headers["limner-delivery"] for headers, _, _ in hook.calls}
    assert len(delivery_ids) == 1 and len({body for _, body, _ in hook.calls}) == 1
    headers, body, _ = hook.calls[-1]
    assert headers["limner-event"] == "job.succeeded" and headers["limner-job"] == job["id"]
    assert verify(SECRET, body, headers["limner-signature"])
    assert not verify("another-secret", body, headers["limner-signature"])
    stored = _delivery(tmp_path)
    assert stored and stored["status"] == "delivered" and stored["attempts"] == 3


def test_a_job_that_ended_without_its_delivery_gets_one_at_start(
    openai_env: Any, receiver: tuple[Receiver, str], start_server: Any, tmp_path: Path
) -> None:
    """A crash between a job's end and the write of its delivery: the sweep writes it."""
    from limner.store import Store
    from limner.store.jobs_schema import server_jobs

    hook, hook_url = receiver
    hook.failures = 0
    ended = time.time() - 60
    store = Store()
    with store.engine.begin() as conn:
        conn.execute(server_jobs.insert().values(
            id="job-from-before", owner="local", created_at=ended, updated_at=ended,
            status="failed", operation="generate", provider="openai", model="openai:gpt-image-2",
            request={}, attempts=1, submit_state="none", submit_count=0, cancel_requested=False,
            webhook_url=hook_url, error={"code": "x", "message": "it failed"},
        ))  # fmt: skip
    store.close()
    server = start_server(webhook_secret=SECRET, webhook_allow_private=True)
    job = _wait_for(
        lambda: (
            (j := httpx.get(server.url + "/v1/jobs/job-from-before").json())["webhook_status"] and j
        )
    )
    assert job["webhook_status"] == "delivered" and len(hook.calls) == 1
    headers, body, _ = hook.calls[0]
    assert headers["limner-event"] == "job.failed" and _is_the_failed_job(body)


def _is_the_failed_job(body: bytes) -> bool:
    import json

    data = json.loads(body)
    return bool(data["id"] == "job-from-before" and data["error"]["message"] == "it failed")


def test_a_delivery_that_keeps_failing_gives_up_after_the_attempts(
    openai_env: Any, receiver: tuple[Receiver, str], start_server: Any
) -> None:
    hook, hook_url = receiver
    hook.failures = 100
    server = start_server(
        webhook_secret=SECRET, webhook_allow_private=True, webhook_backoff_s=0.02,
        webhook_attempts=3,
    )  # fmt: skip
    spec = {"prompt": "x", "model": "openai:gpt-image-2", "size": "256x256",
            "webhook_url": hook_url}  # fmt: skip
    job = httpx.post(server.url + "/v1/jobs", json=spec).json()
    final = _wait_for(
        lambda: (j := httpx.get(f"{server.url}/v1/jobs/{job['id']}").json())["webhook_status"] and j
    )
    assert final["webhook_status"] == "failed after 3 attempts" and len(hook.calls) == 3


def test_verify_refuses_forged_signature_headers() -> None:
    """What a receiver may be sent: each forged header is refused, never an exception."""
    from limner.server.webhooks import sign, verify

    body = b'{"id":"job_1"}'
    good = sign(SECRET, body)
    timestamp = good.split(",")[0]
    assert verify(SECRET, body, good)
    assert not verify(SECRET, body + b" ", good)
    for header in (
        f"{timestamp},v1=\u00e9\u00e9",  # not ASCII
        f"{timestamp}",  # no v1
        "v1=abc",  # no t
        "t=soon,v1=abc",
        f"t={10**30},{good.split(',')[1]}",  # far outside the tolerance
        "",
    ):
        assert not verify(SECRET, body, header), header
