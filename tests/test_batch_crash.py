"""A real ``kill -9`` of a running ``limner batch``, then re-runs: no item lost, none recorded
twice, and the only requests sent twice are those the kill left in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from _server_fixtures import LIMNER_CLI
from limner.store import db
from limner.store.batch_schema import batch_items

MODEL = "openai:gpt-image-2"
ITEMS = 10


def _cli(args: list[str]) -> list[str]:
    return [*LIMNER_CLI, "batch", *args]


def _engine() -> sa.Engine:
    return db.create_engine(Path(os.environ["LIMNER_HOME"]))


def _status_counts(engine: sa.Engine) -> Counter[str]:
    """Items by status; ``sent`` counts running items whose request had left."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(batch_items.c.status, batch_items.c.sent_at)).all()
    counts = Counter(status for status, _ in rows)
    counts["sent"] = sum(1 for status, sent_at in rows if status == "running" and sent_at)
    return counts


def _generations(url: str) -> int:
    stats = httpx.get(url.rsplit("/v1", 1)[0] + "/_emulator/stats").json()
    return int(stats.get("POST /v1/images/generations", 0))


def kill_batch_when(args: list[str], ready: Callable[[], bool], poll_s: float = 0.05) -> None:
    """Start ``limner batch args`` and SIGKILL it as soon as ``ready()`` holds (or after 60 s)."""
    proc = subprocess.Popen(_cli(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            time.sleep(poll_s)
            try:
                if ready():
                    break
            except sa.exc.OperationalError:  # the schema is not there yet
                continue
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def _start_and_kill(args: list[str], engine: sa.Engine, after_done: int) -> tuple[int, int]:
    """Start a batch, SIGKILL it once ``after_done`` items are done; return the items claimed
    and the items whose request had been sent when it died."""
    kill_batch_when(args, lambda: _status_counts(engine)["done"] >= after_done)
    counts = _status_counts(engine)
    return counts["running"], counts["sent"]


def _logged_per_item(engine: sa.Engine) -> Counter[str]:
    gens = db.generations
    with engine.connect() as conn:
        prompts = (
            conn.execute(sa.select(gens.c.prompt).where(gens.c.status == "ok")).scalars().all()
        )
    return Counter(prompts)


def _setup(tmp_path: Path, url: str) -> tuple[Path, list[str]]:
    httpx.post(url.rsplit("/v1", 1)[0] + "/_emulator/settings", json={"latency": 0.2})
    path = tmp_path / "crash.txt"
    path.write_text("".join(f"crash test prompt {i}\n" for i in range(ITEMS)))
    return path, [
        str(path),
        "-m",
        MODEL,
        "--size",
        "256x256",
        "--concurrency",
        "2",
        "--no-progress",
        "-o",
        str(tmp_path / "out"),
        "--json",
    ]


@pytest.mark.slow
def test_kill9_then_rerun_loses_nothing_and_records_nothing_twice(
    openai_env: Any, tmp_path: Path
) -> None:
    _, url = openai_env
    _, args = _setup(tmp_path, url)
    engine = _engine()
    claimed, in_flight = _start_and_kill(args, engine, after_done=4)
    sent_before = _generations(url)
    assert 4 <= sent_before < ITEMS
    rerun = subprocess.run(_cli(args), capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["done"] == ITEMS and summary["failed"] == 0
    logged = _logged_per_item(engine)
    assert len(logged) == ITEMS and set(logged.values()) == {1}  # none lost, none recorded twice
    # Requests sent twice: at most the ones the kill caught in flight (the documented window).
    assert ITEMS <= _generations(url) <= ITEMS + in_flight
    recovered = summary["recovered"]
    assert recovered["resent"] + recovered["adopted"] == in_flight
    assert recovered["unsent"] == claimed - in_flight
    final = subprocess.run(_cli(args), capture_output=True, text=True, timeout=60)
    assert json.loads(final.stdout)["sent"] == 0
    assert _generations(url) <= ITEMS + in_flight
    engine.dispose()


@pytest.mark.slow
def test_park_mode_holds_in_flight_items_until_asked(openai_env: Any, tmp_path: Path) -> None:
    _, url = openai_env
    _, args = _setup(tmp_path, url)
    engine = _engine()
    _, in_flight = _start_and_kill(args, engine, after_done=2)
    parked = subprocess.run(
        _cli([*args, "--uncertain", "park"]), capture_output=True, text=True, timeout=60
    )
    summary = json.loads(parked.stdout)
    assert summary["uncertain"] == in_flight - summary["recovered"]["adopted"]
    assert parked.returncode == (1 if summary["uncertain"] else 0)
    released = subprocess.run(
        _cli([*args, "--retry-uncertain"]), capture_output=True, text=True, timeout=60
    )
    assert released.returncode == 0 and json.loads(released.stdout)["done"] == ITEMS
    assert set(_logged_per_item(engine).values()) == {1}
    engine.dispose()
