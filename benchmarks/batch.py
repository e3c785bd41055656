"""Batch throughput under a provider rate limit, and crash safety under ``kill -9``.

Against the OpenAI emulator with 2 s latency and a 60 requests/minute limit (429 beyond it):

1. a clean run of N prompts: wall time against the bound the limit sets (N / rpm minutes),
   and the 429s the provider sent;
2. the same with ``kill -9`` at random moments and re-runs until done: items lost, items
   recorded twice, and requests the provider received twice (the in-flight window), for the
   default ``--uncertain resubmit`` and for ``--uncertain park``.

    .venv/bin/python benchmarks/batch.py --prompts 120 --rpm 60 --latency 2 --kills 3

``--provider bfl`` runs the same against the BFL emulator, an asynchronous API (submit, then
poll): the latency goes into generation (the emulator's ``generation_s``) while submits answer
at once, so a kill usually lands while jobs are generating remotely. Those jobs are resumed from
their recorded handles (counted as ``resumed``) rather than submitted again. The rate limit
counts every request, polls included, so its bound is the requests made / rpm.

The full benchmark is ``--prompts 1000`` (about 17 minutes per phase).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from limner.emulators import base_url, create_app
from limner.emulators.common import EmulatorServer
from limner.store import db

RESULTS = Path(__file__).parent / "results" / "batch.json"
# What each provider's run asks for, and the emulator's stats key of its submit.
PROVIDERS: dict[str, dict[str, Any]] = {
    "openai": {
        "model": "openai:gpt-image-2", "submit": "POST /v1/images/generations",
        "key": ("OPENAI_API_KEY", "sk-bench"), "args": ["--quality", "low"],
    },
    "bfl": {
        "model": "bfl:flux-2-klein-4b", "submit": "POST /v1/flux-2-klein-4b",
        "key": ("BFL_API_KEY", "bfl-bench"), "args": [],
    },
}  # fmt: skip


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-c", "from limner.cli import main; main()", "batch", *args]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.provider = PROVIDERS[args.provider]
        self.asynchronous = args.provider != "openai"
        self.server = EmulatorServer(create_app(args.provider)).start()
        self.root = self.server.url
        self.tmp = Path(tempfile.mkdtemp(prefix="limner-bench-"))

    def reset_emulator(self) -> None:
        # A fresh app per phase would need a new port; clearing the counters is enough.
        state = self.server.app.state.emulator
        state.stats.clear()
        state.jobs.clear()
        latency = 0.0 if self.asynchronous else self.args.latency
        httpx.post(
            f"{self.root}/_emulator/settings", json={"latency": latency, "rpm": self.args.rpm}
        )
        if self.asynchronous:
            httpx.post(f"{self.root}/_emulator/jobs", json={"generation_s": self.args.latency})

    def env(self, home: Path) -> dict[str, str]:
        name, value = self.provider["key"]
        url_env = f"LIMNER_{self.args.provider.upper()}_BASE_URL"
        return {**os.environ, "LIMNER_HOME": str(home), name: value,
                url_env: base_url(self.args.provider, self.root)}  # fmt: skip

    def batch_args(self, name: str, extra: list[str] | None = None) -> tuple[list[str], Path]:
        path = self.tmp / f"{name}.txt"
        path.write_text("".join(f"{name} prompt {i}\n" for i in range(self.args.prompts)))
        args = [str(path), "-m", self.provider["model"], "--size", "256x256", *self.provider["args"],
                "--rpm", str(self.args.rpm), "--concurrency", str(self.args.concurrency),
                "--no-progress", "--json", "-o", str(self.tmp / f"{name}_out"), *(extra or [])]  # fmt: skip
        return args, path

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.root}/_emulator/stats").json())

    def clean_run(self) -> dict[str, Any]:
        self.reset_emulator()
        home = self.tmp / "home-clean"
        args, _ = self.batch_args("clean")
        started = time.perf_counter()
        proc = subprocess.run(_cli(args), env=self.env(home), capture_output=True, text=True)
        wall = time.perf_counter() - started
        summary = _summary(proc)
        stats = self.stats()
        # Every request counts against the limit: for an asynchronous API, its polls too.
        limited = stats.get("total", 0) - stats.get("rate_limited", 0) - _deliveries(stats)
        bound = (limited if self.asynchronous else self.args.prompts) / self.args.rpm * 60
        return {
            "provider": self.args.provider,
            "prompts": self.args.prompts, "done": summary["done"], "failed": summary["failed"],
            "wall_s": round(wall, 2), "batch_wall_s": summary["wall_s"], "bound_s": round(bound, 2),
            "ratio": round(wall / bound, 4),
            "batch_ratio": round(summary["wall_s"] / bound, 4), "provider_429": stats.get("rate_limited", 0),
            "client_saw_429": summary["rate_limited"], "requests": stats.get(self.provider["submit"], 0),
            "requests_counted_by_limit": limited,
        }  # fmt: skip

    def chaos_run(self, mode: str, rng: random.Random) -> dict[str, Any]:
        self.reset_emulator()
        home = self.tmp / f"home-{mode}"
        args, _ = self.batch_args(f"chaos-{mode}", ["--uncertain", mode])
        kills, in_flight_at_kills, handles_at_kills = 0, [], []
        started = time.perf_counter()
        while kills < self.args.kills:
            proc = subprocess.Popen(
                _cli(args), env=self.env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                proc.wait(timeout=rng.uniform(2.0, self.args.kill_window))
                break  # it finished before the kill
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                sent, with_handle = _count_sent_in_flight(home)
                in_flight_at_kills.append(sent)
                handles_at_kills.append(with_handle)
        summary = self.run_to_end(args, home)
        parked = summary["uncertain"]
        requests_before_release = self.provider_requests()
        if parked:
            summary = self.run_to_end([*args, "--retry-uncertain"], home)
        wall = time.perf_counter() - started
        logged = _logged_prompts(home)
        stats = self.stats()
        requests = self.provider_requests()
        return {
            "provider": self.args.provider, "mode": mode, "prompts": self.args.prompts,
            "kills": kills, "in_flight_at_kills": in_flight_at_kills,
            # Sent items whose provider job was recorded: each run after a kill resumes them.
            "resumed": sum(handles_at_kills), "handles_at_kills": handles_at_kills,
            "done": summary["done"],
            "items_lost": self.args.prompts - len(logged),
            "items_recorded_twice": sum(1 for c in logged.values() if c > 1),
            "parked_uncertain": parked,
            "provider_generated_twice_before_release": max(requests_before_release - self.args.prompts, 0),
            "provider_requests": requests,
            "provider_generated_twice": max(requests - self.args.prompts, 0),
            "provider_429": stats.get("rate_limited", 0), "wall_s": round(wall, 2),
        }  # fmt: skip

    def run_to_end(self, args: list[str], home: Path) -> dict[str, Any]:
        proc = subprocess.run(_cli(args), env=self.env(home), capture_output=True, text=True)
        return _summary(proc)

    def provider_requests(self) -> int:
        """Submissions the provider accepted (each one a generation it would charge for)."""
        if self.asynchronous:
            return len(self.server.app.state.emulator.jobs)
        stats = self.stats()
        return stats.get(self.provider["submit"], 0) - stats.get("rate_limited", 0)

    def close(self) -> None:
        self.server.stop()


def _summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return dict(json.loads(proc.stdout))
    except json.JSONDecodeError:
        raise SystemExit(f"limner batch exited {proc.returncode}: {proc.stderr[-2000:]}") from None


def _deliveries(stats: dict[str, int]) -> int:
    return sum(v for k, v in stats.items() if k.startswith("GET /delivery/"))


def _count_sent_in_flight(home: Path) -> tuple[int, int]:
    """Items whose request had left but whose generation was not recorded (the crash window),
    and how many of those had their provider job recorded (to be resumed)."""
    from limner.store.batch_schema import batch_items

    engine = db.create_engine(home)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(batch_items.c.sent_at, batch_items.c.provider_handle).where(
                    batch_items.c.status == "running"
                )
            ).all()
    except sa.exc.OperationalError:  # killed before the store was created
        return 0, 0
    finally:
        engine.dispose()
    return sum(1 for r in rows if r.sent_at), sum(1 for r in rows if r.provider_handle)


def _logged_prompts(home: Path) -> Counter[str]:
    engine = db.create_engine(home)
    try:
        with engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(db.generations.c.prompt).where(db.generations.c.status == "ok")
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    return Counter(rows)


def _table(clean: dict[str, Any] | None, chaos: list[dict[str, Any]]) -> str:
    lines = [
        "| run | prompts | wall s (command / batch) | bound s | wall/bound (command / batch) | 429s | lost | recorded twice | provider generated twice | resumed | kills |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if clean:
        lines.append(
            f"| clean, {clean['provider']} | {clean['prompts']} | {clean['wall_s']} / {clean['batch_wall_s']} | {clean['bound_s']} | {clean['ratio']} / {clean['batch_ratio']} | {clean['provider_429']} | {clean['prompts'] - clean['done']} | 0 | 0 | 0 | 0 |"
        )
    for c in chaos:
        dup = str(c["provider_generated_twice"])
        if c["parked_uncertain"]:
            dup = (
                f"{c['provider_generated_twice_before_release']} ({c['parked_uncertain']} parked;"
                f" {c['provider_generated_twice']} once released)"
            )
        lines.append(
            f"| kill -9, {c['mode']}, {c['provider']} | {c['prompts']} | {c['wall_s']} | - | - | {c['provider_429']}"
            f" | {c['items_lost']} | {c['items_recorded_twice']} | {dup}"
            f" (sent, in flight at kills: {c['in_flight_at_kills']})"
            f" | {c['resumed']} (recorded jobs at kills: {c['handles_at_kills']}) | {c['kills']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--prompts", type=int, default=120, help="Prompts per run (1000 for the full benchmark)."
    )
    parser.add_argument("--rpm", type=int, default=60)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--kills", type=int, default=3, help="kill -9s per chaos run.")
    parser.add_argument(
        "--kill-window", type=float, default=20.0, help="Kill within 2..N s of each start."
    )
    parser.add_argument(
        "--modes", default="resubmit,park", help="Chaos runs to do (empty for none)."
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--provider", choices=sorted(PROVIDERS), default="openai",
        help="Emulated provider: openai (synchronous) or bfl (asynchronous: submit, then poll).",
    )  # fmt: skip
    parser.add_argument("--no-clean", action="store_true", help="Only the kill -9 runs.")
    args = parser.parse_args()
    # Killed clients leave the emulator with disconnected requests; that is expected here.
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    bench = Bench(args)
    rng = random.Random(args.seed)
    try:
        clean = bench.clean_run() if not args.no_clean else None
        print(json.dumps(clean), flush=True)
        chaos = []
        for mode in filter(None, args.modes.split(",")):
            chaos.append(bench.chaos_run(mode, rng))
            print(json.dumps(chaos[-1]), flush=True)
    finally:
        bench.close()
    table = _table(clean, chaos)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/batch.py " + " ".join(sys.argv[1:])
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs = previous.get("runs", {}) if isinstance(previous, dict) else {}
    key = f"{args.prompts} prompts" + (", kill -9 only" if args.no_clean else "")
    if args.provider != "openai":
        key += f", {args.provider}"
    runs[key] = {
        "command": command,
        "settings": vars(args),
        "clean": clean,
        "chaos": chaos,
        "table": table,
    }
    RESULTS.write_text(json.dumps({"runs": runs}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
