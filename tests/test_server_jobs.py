"""The durable job queue: submit, progress, cancel, idempotency, and a SIGKILL mid-batch."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from _server_fixtures import LIMNER_CLI, free_port, png_bytes, server_starter  # noqa: F401

TERMINAL = {"succeeded", "failed", "cancelled", "uncertain"}


@pytest.fixture
def server(openai_env: Any, start_server: Any) -> Any:
    return start_server(lease_s=2.0, workers=2)


def _wait(url: str, job_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return dict(job)
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_job_runs_and_reports_its_result(server: Any) -> None:
    created = httpx.post(
        server.url + "/v1/jobs",
        json={"prompt": "a fox", "model": "openai:gpt-image-2", "size": "256x256"},
    )
    assert created.status_code == 202
    job = _wait(server.url, created.json()["id"])
    assert job["status"] == "succeeded" and job["provider_request_id"].startswith("req_")
    image = job["result"]["images"][0]
    assert (image["width"], image["height"]) == (256, 256)
    assert httpx.get(image["url"]).headers["content-type"] == "image/png"


def test_batch_with_an_input_image_and_events(server: Any) -> None:
    import base64

    image = base64.b64encode(png_bytes(64, 64)).decode()
    batch = httpx.post(
        server.url + "/v1/jobs",
        json={"jobs": [
            {"prompt": "one", "model": "openai:gpt-image-2", "size": "256x256"},
            {"operation": "edit", "prompt": "two", "model": "openai:gpt-image-2", "images": [image]},
        ]},
    ).json()  # fmt: skip
    assert len(batch["jobs"]) == 2
    events = []
    with httpx.stream(
        "GET", f"{server.url}/v1/jobs/{batch['jobs'][1]['id']}/events", timeout=20
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
    assert events[-1] == "end" and "job" in events
    listed = httpx.get(server.url + "/v1/jobs", params={"batch_id": batch["batch_id"]}).json()[
        "data"
    ]
    assert {_wait(server.url, j["id"])["status"] for j in listed} == {"succeeded"}


def test_bad_jobs_are_refused_before_queueing(server: Any) -> None:
    unknown = httpx.post(server.url + "/v1/jobs", json={"prompt": "x", "model": "nope:nothing"})
    assert unknown.status_code == 404
    ssrf = httpx.post(
        server.url + "/v1/jobs",
        json={
            "operation": "edit",
            "prompt": "x",
            "model": "openai:gpt-image-2",
            "images": ["http://169.254.169.254/latest/meta-data/"],
        },
    )
    assert ssrf.status_code == 400 and "Refusing to fetch" in ssrf.json()["error"]["message"]
    extra = httpx.post(server.url + "/v1/jobs", json={"prompt": "x", "bogus": 1})
    assert extra.status_code == 400
    assert httpx.get(server.url + "/v1/jobs").json()["data"] == []


def test_cancel_a_queued_job(openai_env: Any, start_server: Any) -> None:
    server = start_server(run_worker=False)
    job = httpx.post(
        server.url + "/v1/jobs",
        json={"prompt": "x", "model": "openai:gpt-image-2", "size": "256x256"},
    ).json()
    cancelled = httpx.post(f"{server.url}/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert httpx.post(f"{server.url}/v1/jobs/{job['id']}/retry").json()["status"] == "queued"


def test_job_submission_is_idempotent(server: Any) -> None:
    body = {"prompt": "same", "model": "openai:gpt-image-2", "size": "256x256"}
    first = httpx.post(server.url + "/v1/jobs", json=body, headers={"Idempotency-Key": "abc"})
    second = httpx.post(server.url + "/v1/jobs", json=body, headers={"Idempotency-Key": "abc"})
    assert first.json()["id"] == second.json()["id"]
    assert len(httpx.get(server.url + "/v1/jobs").json()["data"]) == 1


def _spawn(home: Path, port: int, env_extra: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LIMNER_HOME": str(home), **env_extra}
    return subprocess.Popen(
        [
            *LIMNER_CLI,
            "serve",
            "--port",
            str(port),
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        env=env,
    )


def _healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, "server exited"
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.slow
def test_sigkill_mid_batch_loses_nothing_and_pays_nothing_twice(
    openai_env: Any, tmp_path: Path
) -> None:
    emulator, base = openai_env
    httpx.post(emulator.url + "/_emulator/settings", json={"latency": 0.5})
    env = {
        "OPENAI_API_KEY": "sk-test",
        "LIMNER_OPENAI_BASE_URL": base,
        "LIMNER_SERVER_LEASE_S": "1.5",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _spawn(tmp_path, port, env)
    try:
        _healthy(url, proc)
        jobs = [
            {"prompt": f"job {i}", "model": "openai:gpt-image-2", "size": "256x256"}
            for i in range(8)
        ]
        batch = httpx.post(url + "/v1/jobs", json={"jobs": jobs}).json()
        deadline = time.monotonic() + 20
        while (
            httpx.get(emulator.url + "/_emulator/stats")
            .json()
            .get("POST /v1/images/generations", 0)
            < 3
        ):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc = _spawn(tmp_path, port, env)
        _healthy(url, proc)
        ids = [j["id"] for j in batch["jobs"]]
        final = [_wait(url, job_id, timeout=40) for job_id in ids]
    finally:
        proc.kill()
        proc.wait(timeout=10)
    statuses = [j["status"] for j in final]
    assert len(final) == 8 and set(statuses) <= {"succeeded", "uncertain"}
    assert statuses.count("uncertain") <= 2  # at most the two jobs in flight at the kill
    submissions = httpx.get(emulator.url + "/_emulator/stats").json()["POST /v1/images/generations"]
    assert all(j["submit_count"] == 1 for j in final)  # each job was sent exactly once
    assert submissions <= len(final)  # and the provider saw no second submission
    for job in final:
        if job["status"] == "uncertain":
            assert "not sent again" in job["error"]["message"]


def test_webhook_is_signed_and_retried(openai_env: Any, start_server: Any) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from limner.emulators.common import EmulatorServer
    from limner.server.webhooks import verify

    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(status_code=500 if len(received) == 1 else 204)  # fail once, then accept

    secret = "whsec-test"
    with EmulatorServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as receiver:
        server = start_server(
            webhook_secret=secret, webhook_allow_private=True, webhook_backoff_s=0.05
        )
        spec = {
            "prompt": "hooked",
            "model": "openai:gpt-image-2",
            "size": "256x256",
            "webhook_url": receiver.url + "/hook",
        }
        job = httpx.post(server.url + "/v1/jobs", json=spec).json()
        _wait(server.url, job["id"])
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()["webhook_status"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()["webhook_status"] == "delivered"
    assert len(received) == 2
    headers, body = received[1]
    assert headers["limner-event"] == "job.succeeded" and verify(
        secret, body, headers["limner-signature"]
    )
    assert not verify("wrong-secret", body, headers["limner-signature"])
    assert httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()["submit_count"] == 1


def test_webhooks_refused_without_a_secret_or_to_internal_addresses(
    openai_env: Any, start_server: Any
) -> None:
    plain = start_server()
    spec = {"prompt": "x", "model": "openai:gpt-image-2", "webhook_url": "https://example.com/hook"}
    refused = httpx.post(plain.url + "/v1/jobs", json=spec)
    assert refused.status_code == 400 and "sends no webhooks" in refused.json()["error"]["message"]
    strict = start_server(webhook_secret="s")
    internal = httpx.post(
        strict.url + "/v1/jobs", json={**spec, "webhook_url": "http://169.254.169.254/hook"}
    )
    assert internal.status_code == 400 and "webhook_url" in internal.json()["error"]["message"]
