"""Requests per image and limner's overhead per image, for every provider with an emulator.

Each emulator runs in its own process (so that it does not share the interpreter lock with
limner) with a fixed latency added to every API request (``/_emulator/settings``; delivery
downloads get none). For each provider, N images are generated one after another through one
warm ``Limner`` client, after one warm-up call. Reported per image:

* requests: submits (POST), polls (other GETs), downloads (``/delivery/`` files), from the
  emulator's ``/_emulator/stats``, against the minimum the provider's protocol needs;
* overhead: wall time minus latency x API requests. It includes the emulator's own work
  (drawing and encoding the image) as well as limner's (validation, flow driving, safe
  download, metadata embedding, storing, logging);
* engine: the median wall time of ``Limner.run`` minus that of driving the provider's flow
  alone through ``FlowRunner`` against the same emulator: what limner adds around the
  protocol (validation, cost, metadata embedding, content-addressed storage, the SQLite log).

    .venv/bin/python benchmarks/providers.py --n 10 --latency 0.05

Prints a table and writes ``benchmarks/results/providers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent
POLL_NOW = {"poll_interval": 0.0}  # poll as fast as the provider allows: sleeps are not overhead


@dataclass
class Case:
    """One benchmark row: a provider, a model, and the protocol's minimum requests per image."""

    provider: str
    model: str
    minimum: dict[str, int]
    options: dict[str, Any] = field(default_factory=dict)
    op: str = "generate"
    note: str = ""
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.provider


CASES = [
    Case(
        "openai",
        "openai:gpt-image-2",
        {"submit": 1, "poll": 0, "download": 0},
        note="image inline (b64)",
    ),
    Case(
        "bfl",
        "bfl:flux-2-pro",
        {"submit": 1, "poll": 1, "download": 1},
        POLL_NOW,
        note="submit, poll polling_url, fetch sample",
    ),
    Case(
        "replicate",
        "replicate:black-forest-labs/flux-schnell",
        {"submit": 1, "poll": 0, "download": 1},
        POLL_NOW,
        note="Prefer: wait can finish in the create call",
    ),
    Case(
        "fal",
        "fal:fal-ai/flux/schnell",
        {"submit": 1, "poll": 2, "download": 1},
        POLL_NOW,
        note="submit, status, result, file",
    ),
    Case(
        "stability",
        "stability:sd3.5-large-turbo",
        {"submit": 1, "poll": 0, "download": 0},
        note="image bytes in the response",
    ),
    Case(
        "ideogram",
        "ideogram:ideogram-v3",
        {"submit": 1, "poll": 0, "download": 1},
        note="v1 multipart; temporary URL",
    ),
    Case(
        "ideogram",
        "ideogram:ideogram-4.5",
        {"submit": 1, "poll": 0, "download": 1},
        label="ideogram (4.5 + quote)",
        note="v2 API; limner asks a dry_run price quote first (recorded as the cost)",
    ),
    Case(
        "gemini",
        "gemini:gemini-3.1-flash-image",
        {"submit": 1, "poll": 0, "download": 0},
        note="image inline",
    ),
    Case(
        "recraft", "recraft:recraftv4_1", {"submit": 1, "poll": 0, "download": 1}, note="URL result"
    ),
    Case(
        "midjourney",
        "midjourney:v7",
        {"submit": 1, "poll": 1, "download": 1},
        POLL_NOW,
        note="emulated proxy answers NOT_START, SUBMITTED, IN_PROGRESS, SUCCESS: 4 fetches",
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmulatorProcess:
    """An emulator served by uvicorn in a child process."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = (
            "import uvicorn; from limner.emulators import create_app; "
            f"uvicorn.run(create_app({provider!r}), host='127.0.0.1', port={self.port}, log_level='warning', lifespan='off')"
        )
        self.process = subprocess.Popen([sys.executable, "-c", code])

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/_emulator/stats", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"the {self.provider} emulator did not start")

    def stats(self) -> Counter[str]:
        return Counter(httpx.get(self.url + "/_emulator/stats").json())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def available(provider: str) -> bool:
    from limner.emulators import EMULATORS
    from limner.providers import available_builtin

    if provider not in EMULATORS or not available_builtin(provider):
        return False
    import importlib.util

    return importlib.util.find_spec(EMULATORS[provider]) is not None


def classify(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    counts = {"submit": 0, "poll": 0, "download": 0}
    for key, value in after.items():
        delta = value - before.get(key, 0)
        if key == "total" or delta <= 0:
            continue
        method, _, path = key.partition(" ")
        kind = "download" if "/delivery/" in path else ("submit" if method == "POST" else "poll")
        counts[kind] += delta
    return counts


def run_case(case: Case, n: int, latency: float, home: Path) -> dict[str, Any]:
    import limner
    from limner.emulators import base_url
    from limner.types import ImageRequest, Operation

    emulator = EmulatorProcess(case.provider)
    try:
        emulator.wait_ready()
        httpx.post(
            emulator.url + "/_emulator/settings", json={"latency": latency}
        ).raise_for_status()
        keys = {case.provider: "bench-key"}
        urls = {case.provider: base_url(case.provider, emulator.url)}
        with limner.Limner(
            home=home / case.name.replace(" ", "_"), keys=keys, base_urls=urls
        ) as client:

            def once(i: int) -> limner.Result:
                request = ImageRequest(
                    prompt=f"benchmark image {i}",
                    model=case.model,
                    provider_options=dict(case.options),
                )
                return client.run(Operation(case.op), request, use_cache=False)

            once(-1)  # warm-up: imports, connection pool, SQLite schema
            before = emulator.stats()
            walls = []
            for i in range(n):
                started = time.perf_counter()
                result = once(i)
                walls.append(time.perf_counter() - started)
                assert result.images, "no image"
            counts = classify(before, emulator.stats())
            bare = [_bare_flow(client, case, i) for i in range(n)]
    finally:
        emulator.stop()
    per_image = {k: v / n for k, v in counts.items()}
    api_requests = per_image["submit"] + per_image["poll"]
    overheads = [(w - latency * api_requests) * 1000 for w in walls]
    return {
        "provider": case.provider,
        "label": case.name,
        "model": case.model,
        "images": n,
        "requests_per_image": per_image,
        "total_per_image": sum(per_image.values()),
        "protocol_minimum": case.minimum,
        "minimum_total": sum(case.minimum.values()),
        "wall_ms_median": round(statistics.median(walls) * 1000, 1),
        "overhead_ms_median": round(statistics.median(overheads), 1),
        "overhead_ms_p90": round(sorted(overheads)[max(int(len(overheads) * 0.9) - 1, 0)], 1),
        "bare_flow_ms_median": round(statistics.median(bare) * 1000, 1),
        "engine_ms_median": round((statistics.median(walls) - statistics.median(bare)) * 1000, 1),
        "note": case.note,
    }


def _bare_flow(client: Any, case: Case, i: int) -> float:
    """Seconds to drive the provider's flow alone (no validation, storage, metadata or log)."""
    from limner.http import FlowRunner
    from limner.types import ImageRequest, Operation

    request = ImageRequest(
        prompt=f"bare flow {i}", model=case.model, provider_options=dict(case.options)
    )
    plan = client.plan(Operation(case.op), request)
    started = time.perf_counter()
    runner = FlowRunner(client.http, plan.spec.provider, fetcher=client._fetcher(plan.provider))
    runner.run(plan.provider.flow(plan.op, plan.request, plan.spec))
    return time.perf_counter() - started


def print_table(rows: list[dict[str, Any]], latency: float) -> None:
    header = (
        f"{'provider':<24} {'submit':>6} {'poll':>5} {'dl':>4} {'total':>6} {'min':>4} {'wall ms':>8} "
        f"{'overhead ms':>12} {'engine ms':>10}  note"
    )
    print(f"latency per API request: {latency * 1000:.0f} ms")
    print(header)
    print("-" * len(header))
    for r in rows:
        q = r["requests_per_image"]
        print(
            f"{r['label']:<24} {q['submit']:>6.1f} {q['poll']:>5.1f} {q['download']:>4.1f} {r['total_per_image']:>6.1f} "
            f"{r['minimum_total']:>4d} {r['wall_ms_median']:>8.1f} {r['overhead_ms_median']:>12.1f} "
            f"{r['engine_ms_median']:>10.1f}  {r['note']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="images per provider")
    parser.add_argument(
        "--latency", type=float, default=0.05, help="emulator latency per API request, seconds"
    )
    parser.add_argument("--providers", default="", help="comma-separated subset")
    parser.add_argument("--out", default=str(ROOT / "results" / "providers.json"))
    args = parser.parse_args(argv)
    wanted = {p.strip() for p in args.providers.split(",") if p.strip()}
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LIMNER_HOME"] = tmp
        os.environ["LIMNER_LOAD_PLUGINS"] = ""
        for case in CASES:
            if wanted and case.provider not in wanted:
                continue
            if not available(case.provider):
                skipped.append(case.provider)
                continue
            try:
                rows.append(run_case(case, args.n, args.latency, Path(tmp)))
            except Exception as exc:  # one provider failing must not hide the others' figures
                print(f"{case.name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                skipped.append(f"{case.name} (failed: {type(exc).__name__})")
    print_table(rows, args.latency)
    if skipped:
        print(f"skipped: {', '.join(skipped)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "latency_s": args.latency,
        "images_per_provider": args.n,
        "python": sys.version.split()[0],
        "rows": rows,
        "skipped": skipped,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
