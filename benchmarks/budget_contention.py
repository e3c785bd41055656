"""Budget enforcement under contention.

200 concurrent requests from 4 processes share one store and a daily cap that admits 50 of them,
against the OpenAI emulator on loopback. Records how many were admitted, the total spend in the
log (must not exceed the cap) and the time the budget guard adds to each request (reserve before
the call, settle or release after it). A second run without a cap gives the baseline latency.

    .venv/bin/python benchmarks/budget_contention.py [--processes 4] [--requests 200] [--admit 50]

Writes benchmarks/results/budget_contention.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

MODEL, SIZE, PRICE = "openai:dall-e-2", "256x256", 0.016  # flat list price: actual == estimate

WORKER = textwrap.dedent(
    """
    import json, sys, threading, time
    from concurrent.futures import ThreadPoolExecutor
    from limner import Limner
    from limner.budget import BudgetGuard
    from limner.errors import BudgetExceededError
    from limner.types import ImageRequest

    home, count, start_at, model, size, threads = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
    spent = threading.local()  # the guards run in the thread that calls client.run

    class TimedGuard:
        # What the budget guard adds to a request: reserve before the call, settle/release after.
        def __init__(self, inner):
            self.inner = inner
        def _timed(self, fn, *args):
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                spent.seconds = getattr(spent, "seconds", 0.0) + time.perf_counter() - t
        def before_send(self, plan):
            return self._timed(self.inner.before_send, plan)
        def settle(self, plan, token, cost):
            self._timed(self.inner.settle, plan, token, cost)
        def release(self, plan, token):
            self._timed(self.inner.release, plan, token)

    client = Limner(home=home, guards=[])
    client.guards = [TimedGuard(BudgetGuard(client))]
    client.store  # open the store before the clock starts

    def one(i):
        spent.seconds = 0.0
        request = ImageRequest(prompt=f"lighthouse {i}", model=model, size=size)
        started = time.perf_counter()
        try:
            outcome = "ok" if client.run("generate", request) else "?"
        except BudgetExceededError:
            outcome = "refused"
        return outcome, time.perf_counter() - started, spent.seconds

    time.sleep(max(start_at - time.time(), 0))
    with ThreadPoolExecutor(threads) as pool:
        print(json.dumps(list(pool.map(one, range(count)))))
    """
)


def _run(
    processes: int, per_process: int, cap: float | None, base_url: str, threads: int | None = None
) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="limner-bench-")
    from limner.store import Store

    Store(Path(home)).close()  # create the schema once, before the processes open it
    env = {
        **os.environ,
        "LIMNER_HOME": home,
        "OPENAI_API_KEY": "sk-bench",
        "LIMNER_OPENAI_BASE_URL": base_url,
    }
    env.pop("LIMNER_BUDGET_MONTHLY_USD", None)
    env.pop("LIMNER_BUDGET_DAILY_USD", None)
    if cap is not None:
        env["LIMNER_BUDGET_DAILY_USD"] = f"{cap:.6f}"
    start_at = time.time() + 4.0  # every process has imported limner by then
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, home, str(per_process), str(start_at), MODEL, SIZE, str(threads or per_process)],
            env=env, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(processes)
    ]  # fmt: skip
    outputs = [json.loads(w.communicate(timeout=600)[0]) for w in workers]
    if any(w.returncode for w in workers):
        raise SystemExit("a worker failed")
    rows = [row for out in outputs for row in out]
    guard_ms = sorted(1000 * r[2] for r in rows)
    store = Store(Path(home))
    try:
        logged = store.search(limit=None)
    finally:
        store.close()
    total_ms = sorted(1000 * r[1] for r in rows)

    def pct(values: list[float], q: float) -> float:
        return round(values[min(int(q * len(values)), len(values) - 1)], 2) if values else 0.0

    return {
        "cap_usd": cap,
        "requests": len(rows),
        "admitted": sum(r[0] == "ok" for r in rows),
        "refused": sum(r[0] == "refused" for r in rows),
        "spend_usd_logged": round(sum(e.cost_usd or 0 for e in logged if e.status == "ok"), 6),
        "refused_logged": sum(e.status == "refused" for e in logged),
        "guard_ms": {"mean": round(statistics.fmean(guard_ms), 2) if guard_ms else 0.0,
                     "p50": pct(guard_ms, 0.5), "p95": pct(guard_ms, 0.95), "max": pct(guard_ms, 1.0)},
        "request_ms": {"p50": pct(total_ms, 0.5), "p95": pct(total_ms, 0.95), "max": pct(total_ms, 1.0)},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--admit", type=int, default=50)
    args = parser.parse_args()
    from limner.emulators import base_url, create_app
    from limner.emulators.common import EmulatorServer

    per_process = args.requests // args.processes
    cap = round(PRICE * args.admit + PRICE / 2, 6)  # room for `admit` requests, not one more
    with EmulatorServer(create_app("openai")) as server:
        url = base_url("openai", server.url)
        capped = _run(args.processes, per_process, cap, url)
        baseline = _run(args.processes, per_process, None, url)
        # One request at a time: the reservation's own cost, without queueing behind others.
        serial = _run(1, args.admit + 10, cap, url, threads=1)
    result = {
        "benchmark": "budget_contention",
        "model": MODEL, "size": SIZE, "price_usd": PRICE,
        "processes": args.processes, "requests_per_process": per_process,
        "expected_admitted": args.admit,
        "capped": capped, "uncapped": baseline, "serial_capped": serial,
        "cap_respected": capped["spend_usd_logged"] <= cap + 1e-9 and serial["spend_usd_logged"] <= cap + 1e-9,
        "load_average_at_end": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "unix_time": time.time(),
    }  # fmt: skip
    out = Path(__file__).parent / "results" / "budget_contention.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.processes} processes x {per_process} concurrent requests, cap ${cap:.4f} (admits {args.admit} at ${PRICE})"
    )
    print(
        f"{'run':10} {'admitted':>8} {'refused':>8} {'spend $':>9} {'guard p50/p95/max ms':>22} {'request p50/p95 ms':>20}"
    )
    for name, run in (("capped", capped), ("uncapped", baseline), ("serial", serial)):
        g, r = run["guard_ms"], run["request_ms"]
        print(f"{name:10} {run['admitted']:>8} {run['refused']:>8} {run['spend_usd_logged']:>9.4f} "
              f"{g['p50']:>7.2f}/{g['p95']:.2f}/{g['max']:.2f} {r['p50']:>11.1f}/{r['p95']:.1f}")  # fmt: skip
    print(
        "capped/uncapped: all requests at once; serial: one process, one request at a time, same cap"
    )
    print(f"cap respected: {result['cap_respected']}; results in {out}")


if __name__ == "__main__":
    main()
