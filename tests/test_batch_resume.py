"""A ``kill -9`` of a batch after its asynchronous (BFL) jobs were submitted: the re-run follows
those jobs from their recorded handles instead of submitting them again.

The BFL emulator is set to take its time generating (``generation_s``) while submits answer at
once, so the kill lands while the submitted jobs are still generating."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from limner.batch import BatchOptions, BatchRunner, batch_id_for, parse_batch_file
from limner.emulators.common import EmulatorServer
from limner.flows import HandleRecorder
from limner.store import db
from limner.store.batch_schema import batch_items
from test_batch_crash import _cli, _engine, kill_batch_when

MODEL = "bfl:flux-2-klein-4b"
SUBMIT = "POST /v1/flux-2-klein-4b"
ITEMS = 4
CONCURRENCY = 2


@pytest.fixture
def bfl_env(
    emulator: Callable[[str], tuple[EmulatorServer, str]], monkeypatch: pytest.MonkeyPatch
) -> EmulatorServer:
    server, url = emulator("bfl")
    monkeypatch.setenv("BFL_API_KEY", "bfl-test-key")
    monkeypatch.setenv("LIMNER_BFL_BASE_URL", url)
    httpx.post(server.url + "/_emulator/jobs", json={"generation_s": 1.5})
    return server


def _args(tmp_path: Path, name: str = "resume") -> list[str]:
    path = tmp_path / f"{name}.txt"
    path.write_text("".join(f"{name} prompt {i}\n" for i in range(ITEMS)))
    return [
        str(path), "-m", MODEL, "--size", "256x256", "--concurrency", str(CONCURRENCY),
        "--no-progress", "--json", "-o", str(tmp_path / "out"),
    ]  # fmt: skip


def _running_with_handle(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.scalar(
                sa.select(sa.func.count())
                .select_from(batch_items)
                .where(
                    batch_items.c.status == "running", batch_items.c.provider_handle.is_not(None)
                )
            )
            or 0
        )


def _kill_once_submitted(args: list[str], engine: sa.Engine) -> int:
    """Start the batch, SIGKILL it as soon as ``CONCURRENCY`` items have their provider job
    recorded (the next submit waits for one of them to finish); return how many had."""
    kill_batch_when(args, lambda: _running_with_handle(engine) >= CONCURRENCY, poll_s=0.02)
    return _running_with_handle(engine)


def _submits(server: EmulatorServer) -> int:
    return int(httpx.get(server.url + "/_emulator/stats").json().get(SUBMIT, 0))


def _logged(engine: sa.Engine) -> Counter[str]:
    gens = db.generations
    with engine.connect() as conn:
        rows = conn.execute(sa.select(gens.c.prompt).where(gens.c.status == "ok")).scalars()
        return Counter(rows.all())


def _run(args: list[str]) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(_cli(args), capture_output=True, text=True, timeout=90)
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(done.stderr[-2000:]) from None


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["resubmit", "park"])
def test_kill9_after_submit_resumes_each_job_once(
    bfl_env: EmulatorServer, tmp_path: Path, mode: str
) -> None:
    args = [*_args(tmp_path), "--uncertain", mode]
    engine = _engine()
    in_flight = _kill_once_submitted(args, engine)
    assert in_flight == CONCURRENCY and _submits(bfl_env) == in_flight
    code, summary = _run(args)
    assert code == 0 and summary["done"] == ITEMS and summary["uncertain"] == 0
    assert summary["recovered"]["resumed"] == in_flight and summary["resumed"] == in_flight
    assert summary["recovered"]["resent"] == summary["recovered"]["parked"] == 0
    logged = _logged(engine)
    assert len(logged) == ITEMS and set(logged.values()) == {1}  # none lost, none twice
    assert _submits(bfl_env) == ITEMS  # the provider generated each item exactly once
    with engine.connect() as conn:
        handles = conn.scalars(sa.select(batch_items.c.provider_handle)).all()
    assert all(handles) and len(set(handles)) == ITEMS  # every item's own job, recorded
    code, again = _run(args)
    assert code == 0 and again["sent"] == 0 and _submits(bfl_env) == ITEMS
    engine.dispose()


@pytest.mark.slow
def test_a_job_the_provider_lost_fails_then_is_submitted_anew(
    bfl_env: EmulatorServer, tmp_path: Path
) -> None:
    args = _args(tmp_path, "lost")
    engine = _engine()
    in_flight = _kill_once_submitted(args, engine)
    bfl_env.app.state.emulator.jobs.clear()  # the provider forgot them (they expired)
    code, summary = _run(args)
    assert code == 1 and summary["failed"] == in_flight and summary["resumed"] == 0
    assert all("not found" in p["error"] for p in summary["problems"])
    with engine.connect() as conn:  # a definite failure drops the handle: next time, a new job
        failed = conn.execute(
            sa.select(batch_items.c.provider_handle).where(batch_items.c.status == "failed")
        ).scalars()
        assert list(failed) == [None] * in_flight
    code, final = _run(args)
    assert code == 0 and final["done"] == ITEMS
    assert _submits(bfl_env) == ITEMS + in_flight
    assert set(_logged(engine).values()) == {1}
    engine.dispose()


@pytest.mark.parametrize("mode", ["resubmit", "park"])
def test_a_recorded_job_that_cannot_be_resumed_follows_the_uncertain_rule(
    openai_env: tuple[EmulatorServer, str], tmp_path: Path, mode: str
) -> None:
    server, _ = openai_env
    path = tmp_path / "one.txt"
    path.write_text("a fox\n")
    parsed = parse_batch_file(path, {"model": "openai:gpt-image-2", "size": "256x256"})
    batch_id = batch_id_for("batch", f"fallback-{mode}")
    with BatchRunner(BatchOptions(uncertain=mode)) as runner:
        rows = runner.plan_items(parsed.lines)
        runner.store.open_batch(batch_id, kind="batch", name=batch_id, source=None, options={})
        runner.store.add_items(batch_id, rows)
        with runner.store.engine.begin() as conn:  # a run died after a job was recorded
            now = time.time()
            conn.execute(
                batch_items.update().values(
                    status="running", run_id="dead", claimed_at=now, sent_at=now,
                    provider_handle='{"id":"gone"}',
                )
            )  # fmt: skip
        summary = runner.run(batch_id, rows)
        handles = runner.store.items(batch_id)[0].provider_handle
    generated = (
        httpx.get(server.url + "/_emulator/stats").json().get("POST /v1/images/generations", 0)
    )
    # OpenAI answers synchronously: there is no job to follow, so the sent-item rule applies.
    assert summary.recovered["resumed"] == 1 and summary.resumed == 0 and handles is None
    if mode == "park":
        assert (summary.uncertain, summary.done, generated) == (1, 0, 0)
        assert "cannot be resumed" in summary.problems[0]["error"]
    else:
        assert (summary.uncertain, summary.done, generated) == (0, 1, 1)


def test_a_request_split_into_several_jobs_keeps_no_handle() -> None:
    written: list[str | None] = []
    recorder = HandleRecorder(written.append)
    for handle in ("first", "second", "third"):
        recorder("bfl", handle)
    assert written == ["first", None]  # several jobs cannot be resumed as one


def _drop_handle_column(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE batch_items DROP COLUMN provider_handle"))
        conn.execute(
            db.migrations_table.delete().where(db.migrations_table.c.name == "m006_batch_handles")
        )


def test_migration_adds_the_handle_column_to_an_older_store(tmp_path: Path) -> None:
    from limner.store import Store

    Store(tmp_path / "fresh").close()  # a new store: the column comes with the table
    engine = db.create_engine(tmp_path / "old")
    assert "m006_batch_handles" in db.migrate(engine)
    _drop_handle_column(engine)  # now as a store made before the column existed
    assert db.migrate(engine) == ["m006_batch_handles"]
    columns = {c["name"] for c in sa.inspect(engine).get_columns("batch_items")}
    assert "provider_handle" in columns
    assert db.migrate(engine) == []
    engine.dispose()
