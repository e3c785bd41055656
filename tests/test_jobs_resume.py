"""Server jobs on an asynchronous provider (BFL): a ``kill -9`` of ``limner serve`` after the
jobs were submitted, a restart, and every job resumed from its recorded handle — succeeded, with
one submission each."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from _server_fixtures import free_port
from limner.emulators.common import EmulatorServer
from limner.store import db
from limner.store.jobs_schema import server_jobs
from test_server_jobs import _healthy, _spawn, _wait

MODEL = "bfl:flux-2-klein-4b"
SUBMIT = "POST /v1/flux-2-klein-4b"
JOBS = 4
WORKERS = 2  # what test_server_jobs._spawn starts the server with

with contextlib.suppress(pytest.skip.Exception):  # PostgreSQL, where psycopg is installed
    from test_server_postgres import postgres_url  # noqa: F401


def _with_handle(home: Path) -> int:
    engine = db.create_engine(home)
    try:
        with engine.connect() as conn:
            return int(
                conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(server_jobs)
                    .where(
                        server_jobs.c.status == "running",
                        server_jobs.c.provider_handle.is_not(None),
                    )
                )
                or 0
            )
    except sa.exc.OperationalError:  # the schema is not there yet
        return 0
    finally:
        engine.dispose()


@pytest.mark.slow
def test_sigkill_after_submission_resumes_every_job_once(
    emulator: Callable[[str], tuple[EmulatorServer, str]], tmp_path: Path
) -> None:
    bfl, base = emulator("bfl")
    httpx.post(bfl.url + "/_emulator/jobs", json={"generation_s": 1.5})
    env = {
        "BFL_API_KEY": "bfl-test-key",
        "LIMNER_BFL_BASE_URL": base,
        "LIMNER_SERVER_LEASE_S": "1.5",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _spawn(tmp_path, port, env)
    try:
        _healthy(url, proc)
        jobs = [{"prompt": f"job {i}", "model": MODEL, "size": "256x256"} for i in range(JOBS)]
        batch = httpx.post(url + "/v1/jobs", json={"jobs": jobs}).json()
        deadline = time.monotonic() + 20
        while _with_handle(tmp_path) < WORKERS:  # both workers' jobs are generating remotely
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.kill()
        proc.wait(timeout=10)
        assert httpx.get(bfl.url + "/_emulator/stats").json()[SUBMIT] == WORKERS
        proc = _spawn(tmp_path, port, env)
        _healthy(url, proc)
        final = [_wait(url, j["id"], timeout=40) for j in batch["jobs"]]
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert [j["status"] for j in final] == ["succeeded"] * JOBS
    assert all(j["submit_count"] == 1 for j in final)  # each job was sent exactly once
    assert httpx.get(bfl.url + "/_emulator/stats").json()[SUBMIT] == JOBS  # and generated once
    assert len({j["result"]["generation_id"] for j in final}) == JOBS
    assert sum(1 for j in final if j["attempts"] == 2) == WORKERS  # the two resumed after the kill


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_adds_the_handle_column_to_an_older_store(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "postgresql":
        if "postgres_url" not in globals():
            pytest.skip("psycopg is not installed")
        engine = sa.create_engine(request.getfixturevalue("postgres_url"))
    else:
        engine = db.create_engine(tmp_path)
    db.migrate(engine)
    with engine.begin() as conn:  # as a store made before the column existed
        conn.execute(sa.text("ALTER TABLE server_jobs DROP COLUMN provider_handle"))
        conn.execute(sa.text("ALTER TABLE batch_items DROP COLUMN provider_handle"))
        names = ("m006_batch_handles", "m007_job_handles")
        conn.execute(db.migrations_table.delete().where(db.migrations_table.c.name.in_(names)))
    assert sorted(db.migrate(engine)) == sorted(names)
    inspector = sa.inspect(engine)
    for table in ("server_jobs", "batch_items"):
        assert "provider_handle" in {c["name"] for c in inspector.get_columns(table)}
    assert db.migrate(engine) == []
    engine.dispose()


def test_a_job_with_a_recorded_handle_is_queued_to_resume() -> None:
    """Recovery of a job whose worker died: with a handle it is queued again (to be resumed);
    without one it is parked ``uncertain``. Lease fencing: a live lease is left alone."""
    from limner.server.context import ServerContext
    from limner.server.jobs import JobQueue
    from limner.server.settings import ServerSettings

    ctx = ServerContext.create(ServerSettings.from_env())
    queue = JobQueue(ctx)
    now = time.time()
    base = {
        "owner": "anonymous", "created_at": now, "updated_at": now, "operation": "generate",
        "provider": "bfl", "model": MODEL, "request": {"prompt": "x"}, "attempts": 1,
        "submit_state": "submitted", "submit_count": 1, "cancel_requested": False,
        "status": "running", "lease_owner": "dead-worker",
    }  # fmt: skip
    rows = [
        {**base, "id": "resumable", "provider_handle": '{"id":"t1"}', "lease_expires": now - 1},
        {**base, "id": "unknowable", "provider_handle": None, "lease_expires": now - 1},
        {**base, "id": "alive", "provider_handle": '{"id":"t2"}', "lease_expires": now + 60},
    ]
    with queue.engine.begin() as conn:
        conn.execute(server_jobs.insert(), rows)
    queue.recover()
    jobs = {r["id"]: queue.get(r["id"]) for r in rows}
    assert jobs["resumable"]["status"] == "queued"
    assert jobs["resumable"]["provider_handle"] == '{"id":"t1"}'
    assert jobs["resumable"]["lease_owner"] is None
    assert jobs["unknowable"]["status"] == "uncertain"
    assert "not sent again" in jobs["unknowable"]["error"]["message"]
    assert jobs["alive"]["status"] == "running" and jobs["alive"]["lease_owner"] == "dead-worker"
    ctx.store.close()
