"""Server figures: overhead, throughput, memory and CPU per request under concurrent load, and
jobs lost or sent twice across kill -9 restarts.

    python benchmarks/server.py [--requests 200] [--latency 2] [--size 256x256] [--kills 3]

The OpenAI emulator (its own process, ``--latency`` seconds per call) is called twice with the
same load: directly, and through a ``limner serve`` process. A request's server overhead is its
latency through the server minus the median direct latency. CPU per request is the server
process's user+system CPU time over the run divided by the requests. Then a batch of jobs is
submitted and the server is SIGKILLed ``--kills`` times mid-batch and restarted.

Prints a table and writes benchmarks/results/server.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

RESULTS = Path(__file__).parent / "results"
LIMNER = [sys.executable, "-c", "import sys; from limner.cli import main; main(sys.argv[1:])"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], path: str = "/healthz") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the server and its worker processes."""
    total = 0.0
    for proc in _tree(pid):
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) summed over the server's processes."""
    total = 0
    for proc in _tree(pid):
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


async def load(
    url: str, body: dict[str, Any], count: int, headers: dict[str, str]
) -> tuple[list[float], float, int, int]:
    """Send ``count`` requests at once; return latencies, wall time, errors and response bytes."""
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one() -> tuple[float, bool, int]:
            start = time.perf_counter()
            response = await client.post(url, json=body, headers=headers)
            return time.perf_counter() - start, response.status_code == 200, len(response.content)

        started = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(count)))
        wall = time.perf_counter() - started
    return [r[0] for r in results], wall, sum(1 for r in results if not r[1]), results[0][2]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def start_emulator(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [*LIMNER, "emulate", "openai", "--port", str(port), "--latency", str(latency)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, "/_emulator/stats")
    return proc, url


def start_server(
    home: Path, emulator: str, port: int, extra: dict[str, str] | None = None, processes: int = 1
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "LIMNER_HOME": str(home), "OPENAI_API_KEY": "sk-bench",
        "LIMNER_OPENAI_BASE_URL": emulator + "/v1", **(extra or {}),
    }  # fmt: skip
    proc = subprocess.Popen(
        [*LIMNER, "serve", "--port", str(port), "--log-level", "warning", "--processes", str(processes)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_healthy(f"http://127.0.0.1:{port}", proc)
    return proc


def overhead_run(args: argparse.Namespace, emulator: str, home: Path) -> dict[str, Any]:
    body = {"model": "gpt-image-2", "prompt": "a lighthouse at dawn", "size": args.size}
    direct, direct_wall, direct_errors, direct_bytes = asyncio.run(
        load(
            emulator + "/v1/images/generations",
            body,
            args.requests,
            {"authorization": "Bearer sk-bench"},
        )
    )
    port = free_port()
    server = start_server(home, emulator, port, processes=args.processes)
    try:
        url = f"http://127.0.0.1:{port}/v1/images/generations"
        asyncio.run(load(url, {**body, "model": "openai:gpt-image-2"}, 5, {}))  # warm up
        cpu_before = cpu_seconds(server.pid)
        routed, wall, errors, routed_bytes = asyncio.run(
            load(url, {**body, "model": "openai:gpt-image-2"}, args.requests, {})
        )
        cpu = cpu_seconds(server.pid) - cpu_before
        rss = peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=20)
    base = statistics.median(direct)
    overhead = [(lat - base) * 1000 for lat in routed]
    return {
        "requests": args.requests, "latency_s": args.latency, "size": args.size,
        "server_processes": args.processes,
        "response_bytes_direct": direct_bytes, "response_bytes_server": routed_bytes,
        "direct": {"p50_ms": round(pct(direct, 0.5) * 1000, 1), "p99_ms": round(pct(direct, 0.99) * 1000, 1),
                   "throughput_rps": round(args.requests / direct_wall, 2), "errors": direct_errors},
        "server": {"p50_ms": round(pct(routed, 0.5) * 1000, 1), "p99_ms": round(pct(routed, 0.99) * 1000, 1),
                   "throughput_rps": round(args.requests / wall, 2), "errors": errors},
        "overhead_p50_ms": round(pct(overhead, 0.5), 1), "overhead_p99_ms": round(pct(overhead, 0.99), 1),
        "throughput_ratio": round(direct_wall / wall, 3),
        "cpu_ms_per_request": round(cpu * 1000 / args.requests, 2),
        "server_peak_rss_mib": round(rss, 1),
    }  # fmt: skip


def kill_run(args: argparse.Namespace, emulator: str, home: Path) -> dict[str, Any]:
    """Submit a batch of jobs, SIGKILL the server ``--kills`` times mid-batch, count the damage."""
    httpx.post(emulator + "/_emulator/settings", json={"latency": 0.5})
    before = httpx.get(emulator + "/_emulator/stats").json().get("POST /v1/images/generations", 0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = {"LIMNER_SERVER_LEASE_S": "1.5", "LIMNER_SERVER_WORKERS": "4"}
    server = start_server(home, emulator, port, extra)
    jobs = [
        {"prompt": f"kill test {i}", "model": "openai:gpt-image-2", "size": "256x256"}
        for i in range(args.jobs)
    ]
    batch = httpx.post(url + "/v1/jobs", json={"jobs": jobs}).json()
    ids = [job["id"] for job in batch["jobs"]]
    for _ in range(args.kills):
        time.sleep(1.2)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        server = start_server(home, emulator, port, extra)
    try:
        deadline = time.monotonic() + 300
        while True:
            final = [httpx.get(f"{url}/v1/jobs/{job_id}").json() for job_id in ids]
            if all(j["status"] in ("succeeded", "failed", "cancelled", "uncertain") for j in final):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("jobs did not finish")
            time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=20)
    sent = (
        httpx.get(emulator + "/_emulator/stats").json().get("POST /v1/images/generations", 0)
        - before
    )
    statuses = [j["status"] for j in final]
    return {
        "jobs": args.jobs, "kills": args.kills, "jobs_found": len(final),
        "jobs_lost": args.jobs - sum(1 for j in final if j["status"] in ("succeeded", "uncertain")),
        "succeeded": statuses.count("succeeded"), "parked_uncertain": statuses.count("uncertain"),
        "provider_submissions": sent,
        "jobs_submitted_more_than_once": sum(1 for j in final if j["submit_count"] > 1),
        "duplicate_provider_submissions": max(sent - sum(1 for j in final if j["submit_count"] >= 1), 0),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1, help="limner serve --processes")
    args = parser.parse_args()
    emulator, emulator_url = start_emulator(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            load_figures = overhead_run(args, emulator_url, Path(tmp) / "load")
            kill_figures = kill_run(args, emulator_url, Path(tmp) / "kill") if args.kills else None
    finally:
        emulator.terminate()
        emulator.wait(timeout=20)
    out = {
        "load": load_figures,
        "kill9": kill_figures,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "server.json").write_text(json.dumps(out, indent=2) + "\n")
    lf = load_figures
    print(f"{'figure':<34}{'direct':>12}{'via limner':>14}")
    print(f"{'latency p50 (ms)':<34}{lf['direct']['p50_ms']:>12}{lf['server']['p50_ms']:>14}")
    print(f"{'latency p99 (ms)':<34}{lf['direct']['p99_ms']:>12}{lf['server']['p99_ms']:>14}")
    print(
        f"{'throughput (req/s)':<34}{lf['direct']['throughput_rps']:>12}{lf['server']['throughput_rps']:>14}"
    )
    print(f"{'errors':<34}{lf['direct']['errors']:>12}{lf['server']['errors']:>14}")
    print(f"server overhead p50 / p99: {lf['overhead_p50_ms']} / {lf['overhead_p99_ms']} ms")
    print(
        f"CPU per request: {lf['cpu_ms_per_request']} ms; peak RSS {lf['server_peak_rss_mib']} MiB"
    )
    print(f"throughput ratio (server / direct): {lf['throughput_ratio']}")
    if kill_figures:
        print("kill -9:", json.dumps(kill_figures))


if __name__ == "__main__":
    main()
