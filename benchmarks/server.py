"""Server figures: latency, throughput, CPU per request and memory under concurrent load, for
limner serve and for the LiteLLM proxy in front of the same provider; and jobs lost or sent twice
across kill -9 restarts.

    python benchmarks/server.py [--requests 200] [--latency 2] [--rounds 3]
                                [--only small|large|kill] [--no-litellm] [--kills 3]

The OpenAI emulator (its own process, ``--latency`` seconds per call) gets the same load three
ways: called directly, through a ``limner serve`` process, and through a ``litellm --config``
proxy process (from ``.cache/litellm-venv``, built by ``scripts/litellm-venv``) whose one model
entry points at the emulator. Two body sizes: small (``--size``, 256x256: a few KiB) and large
(``--large-size`` 1024x1024 with the emulator's ``noise`` setting, so each image is a
photo-sized ~1.4 MiB PNG, ~1.9 MiB as base64). Clients send ``Accept-Encoding: gzip, deflate``
as httpx does by default, so a server that compresses does it here too.

Each target is first warmed up with one round of the same load (pooled connections, as in a
long-running process), then measured over ``--rounds`` rounds: throughput is the median round's
(one burst varies by about 10% on a small shared machine), and every round's is in the JSON. The
load comes from one httpx client (one connection pool) by default; ``--clients N`` spreads it over
N, since one pool's bookkeeping grows with its connections and can make the load generator, not the
server, the bottleneck. CPU per request is the user+system CPU of the server's process tree over
the measured rounds divided by their requests; peak RSS is VmHWM summed over that tree. A request's
server overhead is its latency through the server minus the median direct latency. Then a batch of
jobs is submitted and the limner server is SIGKILLed ``--kills`` times mid-batch and restarted,
once against OpenAI (one request per image: a job caught in flight is parked ``uncertain``) and
once against BFL (submit, then poll: a job caught in flight is resumed from its recorded handle).

The server under test gets a CPU of its own (``--pin``, the default where there are two or more):
the proxy (limner or LiteLLM) runs on the last CPU, while the emulator and this load generator
share the others in every run, direct included. A provider and its clients are not on the
proxy's machine in production; sharing two cores with them would measure their CPU, not the
proxy's. limner's per-provider concurrency cap (64 by default) is raised to the load, as LiteLLM
has none.

Prints a table and writes benchmarks/results/server.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
LITELLM_VENV = REPO / ".cache" / "litellm-venv"
LIMNER = [sys.executable, "-c", "import sys; from limner.cli import main; main(sys.argv[1:])"]
# What httpx sends unless told otherwise (without the optional brotli/zstd packages).
CLIENT_HEADERS = {"accept-encoding": "gzip, deflate"}
GENERATIONS = "/v1/images/generations"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], path: str = "/healthz", timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a server and its worker processes."""
    total = 0.0
    for proc in _tree(pid):
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def own_cpu_seconds() -> float:
    """This process's CPU (the load client: it shares the machine with the servers)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) summed over a server's processes."""
    total = 0
    for proc in _tree(pid):
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


@dataclass
class LoadResult:
    latencies: list[float]
    wall_s: float
    errors: int
    body_bytes: int  # one response, decoded
    wire_bytes: int  # one response, as sent (compressed when the server compressed)
    content_encoding: str
    first_error: str = ""


async def load(
    url: str, body: dict[str, Any], count: int, headers: dict[str, str], clients: int = 1
) -> LoadResult:
    """Send ``count`` requests at once, spread round robin over ``clients`` httpx clients (each
    with its own connection pool), and wait for all of them."""
    per_client = -(-count // clients) + 10
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    async with contextlib.AsyncExitStack() as stack:
        pool = [
            await stack.enter_async_context(httpx.AsyncClient(timeout=600, limits=limits))
            for _ in range(clients)
        ]

        async def one(client: httpx.AsyncClient) -> tuple[float, int, int, int, str, str]:
            start = time.perf_counter()
            response = await client.post(url, json=body, headers={**CLIENT_HEADERS, **headers})
            elapsed = time.perf_counter() - start
            error = "" if response.status_code == 200 else response.text[:300]
            encoding = response.headers.get("content-encoding", "identity")
            wire = response.num_bytes_downloaded
            return elapsed, response.status_code, len(response.content), wire, encoding, error

        started = time.perf_counter()
        results = await asyncio.gather(*(one(pool[i % clients]) for i in range(count)))
        wall = time.perf_counter() - started
    failed = [r for r in results if r[1] != 200]
    return LoadResult(
        latencies=[r[0] for r in results], wall_s=wall, errors=len(failed),
        body_bytes=results[0][2], wire_bytes=results[0][3], content_encoding=results[0][4],
        first_error=failed[0][5] if failed else "",
    )  # fmt: skip


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


# CPUs for the proxy under test (set by --pin); None leaves scheduling to the kernel.
PROXY_CPUS: set[int] | None = None


def _on_proxy_cpus() -> None:
    """Popen preexec_fn: the proxy and every process it starts run on PROXY_CPUS."""
    if PROXY_CPUS:
        os.sched_setaffinity(0, PROXY_CPUS)


def pin_cpus() -> dict[str, list[int]]:
    """Give the proxies the last CPU and this process (and the emulator it starts) the rest."""
    global PROXY_CPUS
    cpus = sorted(os.sched_getaffinity(0))
    PROXY_CPUS = {cpus[-1]}
    os.sched_setaffinity(0, set(cpus[:-1]))
    return {"proxy": sorted(PROXY_CPUS), "emulator_and_client": cpus[:-1]}


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
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_on_proxy_cpus,
    )  # fmt: skip
    wait_healthy(f"http://127.0.0.1:{port}", proc)
    return proc


@contextlib.contextmanager
def litellm_proxy(emulator: str, workdir: Path) -> Iterator[tuple[int, str, str]]:
    """``litellm --config`` on loopback with one model entry that points at the emulator;
    yields its pid, URL and authorization header.

    A master key is set (LiteLLM refuses to start without one); no database, so checking it is a
    string comparison. The price map is read from the package, not fetched."""
    master_key = "sk-" + secrets.token_hex(16)
    config = {
        "model_list": [{
            "model_name": "gpt-image-2",
            "litellm_params": {
                "model": "openai/gpt-image-2", "api_base": emulator + "/v1", "api_key": "sk-bench",
            },
        }],
    }  # fmt: skip
    config_path = workdir / "litellm.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    env = {
        **os.environ, "LITELLM_MASTER_KEY": master_key, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
    }  # fmt: skip
    port = free_port()
    log_path = workdir / "litellm.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config_path),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_on_proxy_cpus,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, "/health/liveliness", timeout=180)
    except RuntimeError:
        stop(proc)
        sys.stderr.write(log_path.read_text(errors="replace")[-3000:])
        raise
    try:
        yield proc.pid, url, f"Bearer {master_key}"
    finally:
        stop(proc)


@dataclass
class Target:
    """One way to reach the emulator: its URL, request and the process whose CPU is counted."""

    name: str
    url: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    pid: int | None = None


def measure(target: Target, args: argparse.Namespace, emulator_pid: int) -> dict[str, Any]:
    """Warm up, then ``args.rounds`` measured bursts: the median burst's throughput, and CPU
    per request over all of them."""
    # Warm up at full concurrency, so every run measures pooled connections (steady state).
    asyncio.run(load(target.url, target.body, args.requests, target.headers, args.clients))
    cpu_before = cpu_seconds(target.pid) if target.pid else 0.0
    emulator_before = cpu_seconds(emulator_pid)
    client_before = own_cpu_seconds()
    results = [
        asyncio.run(load(target.url, target.body, args.requests, target.headers, args.clients))
        for _ in range(args.rounds)
    ]
    requests = args.requests * args.rounds
    client_cpu = own_cpu_seconds() - client_before
    emulator_cpu = cpu_seconds(emulator_pid) - emulator_before
    latencies = [lat for result in results for lat in result.latencies]
    per_round = [round(args.requests / result.wall_s, 2) for result in results]
    first = results[0]
    errors = [result for result in results if result.first_error]
    figures: dict[str, Any] = {
        "p50_ms": round(pct(latencies, 0.5) * 1000, 1),
        "p99_ms": round(pct(latencies, 0.99) * 1000, 1),
        "throughput_rps": statistics.median(per_round),
        "throughput_rps_per_round": per_round,
        "errors": sum(result.errors for result in results),
        "response_bytes": first.body_bytes,
        "wire_bytes": first.wire_bytes,
        "content_encoding": first.content_encoding,
        "emulator_cpu_ms_per_request": round(emulator_cpu * 1000 / requests, 2),
        "client_cpu_ms_per_request": round(client_cpu * 1000 / requests, 2),
    }
    if target.pid:
        cpu = cpu_seconds(target.pid) - cpu_before
        figures["cpu_ms_per_request"] = round(cpu * 1000 / requests, 2)
        figures["peak_rss_mib"] = round(peak_rss_mib(target.pid), 1)
    if errors:
        figures["first_error"] = errors[0].first_error
    figures["_latencies"] = latencies
    return figures


def size_run(
    args: argparse.Namespace, emulator: subprocess.Popen[bytes], emulator_url: str,
    size: str, noise: int, workdir: Path,
) -> dict[str, Any]:  # fmt: skip
    """The same load directly, through limner serve, and through the LiteLLM proxy."""
    httpx.post(emulator_url + "/_emulator/settings", json={"noise": noise}).raise_for_status()
    body = {"model": "gpt-image-2", "prompt": "a lighthouse at dawn", "size": size}
    direct = Target(
        "direct", emulator_url + GENERATIONS, body, {"authorization": "Bearer sk-bench"}
    )
    runs: dict[str, dict[str, Any]] = {"direct": measure(direct, args, emulator.pid)}
    port = free_port()
    cap = {"LIMNER_SERVER_PROVIDER_CONCURRENCY": str(args.requests + 10)}
    server = start_server(workdir / "home", emulator_url, port, cap, processes=args.processes)
    try:
        routed = {**body, "model": "openai:gpt-image-2"}
        limner = Target("limner", f"http://127.0.0.1:{port}{GENERATIONS}", routed, pid=server.pid)
        runs["limner"] = measure(limner, args, emulator.pid)
    finally:
        stop(server)
    if args.litellm:
        with litellm_proxy(emulator_url, workdir) as (pid, url, auth):
            lite = Target("litellm", url + GENERATIONS, body, {"authorization": auth}, pid)
            runs["litellm"] = measure(lite, args, emulator.pid)
    return summarise(args, size, noise, runs)


def summarise(
    args: argparse.Namespace, size: str, noise: int, runs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    base = statistics.median(runs["direct"].pop("_latencies"))
    for name in ("limner", "litellm"):
        if name in runs:
            overhead = [(lat - base) * 1000 for lat in runs[name].pop("_latencies")]
            runs[name]["overhead_p50_ms"] = round(pct(overhead, 0.5), 1)
            runs[name]["overhead_p99_ms"] = round(pct(overhead, 0.99), 1)
    direct_rps = runs["direct"]["throughput_rps"]
    out: dict[str, Any] = {
        "requests": args.requests, "latency_s": args.latency, "size": size, "emulator_noise": noise,
        "server_processes": args.processes, **runs,
        "throughput_ratio_limner_over_direct": round(runs["limner"]["throughput_rps"] / direct_rps, 3),
    }  # fmt: skip
    if "litellm" in runs:
        lite = runs["litellm"]
        out["throughput_ratio_litellm_over_direct"] = round(lite["throughput_rps"] / direct_rps, 3)
        out["cpu_ratio_limner_over_litellm"] = round(
            runs["limner"]["cpu_ms_per_request"] / max(lite["cpu_ms_per_request"], 1e-9), 3
        )
    return out


# The kill -9 run per provider: model, submit path in the emulator's stats, environment.
KILL_PROVIDERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "openai": ("openai:gpt-image-2", "POST /v1/images/generations", {}),
    "bfl": ("bfl:flux-2-pro", "POST /v1/flux-2-pro", {"BFL_API_KEY": "bfl-bench"}),
}


def start_kill_emulator(provider: str) -> tuple[subprocess.Popen[bytes], str]:
    """A fresh emulator for the kill run: 0.5 s per OpenAI call; BFL jobs that take 1.5 s."""
    port = free_port()
    latency = ["--latency", "0.5"] if provider == "openai" else []
    proc = subprocess.Popen(
        [*LIMNER, "emulate", provider, "--port", str(port), *latency],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, "/_emulator/stats")
    if provider == "bfl":
        httpx.post(url + "/_emulator/jobs", json={"generation_s": 1.5}).raise_for_status()
    return proc, url


def kill_run(args: argparse.Namespace, provider: str, home: Path) -> dict[str, Any]:
    """Submit a batch of jobs, SIGKILL the server ``--kills`` times mid-batch, count the damage."""
    model, submit_path, env = KILL_PROVIDERS[provider]
    emulator, emulator_url = start_kill_emulator(provider)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = {
        "LIMNER_SERVER_LEASE_S": "1.5", "LIMNER_SERVER_WORKERS": "4",
        f"LIMNER_{provider.upper()}_BASE_URL": emulator_url + "/v1", **env,
    }  # fmt: skip
    try:
        server = start_server(home, emulator_url, port, extra)
        jobs = [
            {"prompt": f"kill test {i}", "model": model, "size": "256x256"}
            for i in range(args.jobs)
        ]
        ids = [
            job["id"] for job in httpx.post(url + "/v1/jobs", json={"jobs": jobs}).json()["jobs"]
        ]
        for _ in range(args.kills):
            time.sleep(1.2)
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=10)
            server = start_server(home, emulator_url, port, extra)
        try:
            final = wait_for_jobs(url, ids)
        finally:
            stop(server)
        sent = httpx.get(emulator_url + "/_emulator/stats").json().get(submit_path, 0)
    finally:
        stop(emulator)
    statuses = [j["status"] for j in final]
    submitted = sum(1 for j in final if j["submit_count"] >= 1)
    return {
        "provider": provider, "jobs": args.jobs, "kills": args.kills, "jobs_found": len(final),
        "jobs_lost": args.jobs - sum(1 for j in final if j["status"] in ("succeeded", "uncertain")),
        "succeeded": statuses.count("succeeded"), "parked_uncertain": statuses.count("uncertain"),
        "provider_submissions": sent,
        "jobs_submitted_more_than_once": sum(1 for j in final if j["submit_count"] > 1),
        "duplicate_provider_submissions": max(sent - submitted, 0),
    }  # fmt: skip


def wait_for_jobs(url: str, ids: list[str], timeout: float = 300) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        final = [httpx.get(f"{url}/v1/jobs/{job_id}").json() for job_id in ids]
        if all(j["status"] in ("succeeded", "failed", "cancelled", "uncertain") for j in final):
            return final
        if time.monotonic() > deadline:
            raise RuntimeError("jobs did not finish")
        time.sleep(0.5)


def print_size(label: str, figures: dict[str, Any]) -> None:
    names = [n for n in ("direct", "limner", "litellm") if n in figures]
    kib = figures[names[0]]["response_bytes"] / 1024
    print(f"\n{label}: {figures['size']}, {kib:,.0f} KiB response, {figures['requests']} at once")
    print(f"{'figure':<30}" + "".join(f"{n:>12}" for n in names))
    rows = [
        ("latency p50 (ms)", "p50_ms"), ("latency p99 (ms)", "p99_ms"),
        ("throughput (req/s)", "throughput_rps"), ("CPU per request (ms)", "cpu_ms_per_request"),
        ("peak RSS (MiB)", "peak_rss_mib"), ("overhead p50 (ms)", "overhead_p50_ms"),
        ("overhead p99 (ms)", "overhead_p99_ms"), ("errors", "errors"),
        ("emulator CPU / request (ms)", "emulator_cpu_ms_per_request"),
        ("client CPU / request (ms)", "client_cpu_ms_per_request"),
        ("response encoding", "content_encoding"), ("wire bytes / response", "wire_bytes"),
    ]  # fmt: skip
    for title, key in rows:
        print(f"{title:<30}" + "".join(f"{figures[n].get(key, '-')!s:>12}" for n in names))
    for name in names:
        rounds = ", ".join(str(rps) for rps in figures[name]["throughput_rps_per_round"])
        print(f"{name} req/s per round: {rounds}")
    print(f"throughput limner / direct: {figures['throughput_ratio_limner_over_direct']}")
    if "cpu_ratio_limner_over_litellm" in figures:
        print(f"throughput LiteLLM / direct: {figures['throughput_ratio_litellm_over_direct']}")
        print(f"CPU per request limner / LiteLLM: {figures['cpu_ratio_limner_over_litellm']}")
    for name in names:
        if "first_error" in figures[name]:
            print(f"first {name} error: {figures[name]['first_error']}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--clients", type=int, default=1,
        help="httpx clients (connection pools) the load is spread over; one pool's bookkeeping "
        "grows with its connections and can make the load generator the bottleneck",
    )  # fmt: skip
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="measured bursts per target after the warm-up; throughput is their median",
    )  # fmt: skip
    parser.add_argument("--size", default="256x256", help="image size of the small-body run")
    parser.add_argument("--large-size", default="1024x1024", help="image size of the large run")
    parser.add_argument("--noise", type=int, default=3, help="emulator noise bits (large run)")
    parser.add_argument("--only", choices=("small", "large", "kill"), help="run one part")
    parser.add_argument("--no-litellm", dest="litellm", action="store_false")
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--kills", type=int, default=3, help="0 skips the kill -9 part")
    parser.add_argument("--processes", type=int, default=1, help="limner serve --processes")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=(os.cpu_count() or 1) >= 2,
        help="run the proxy under test on a CPU of its own (default where there are 2 or more)",
    )
    args = parser.parse_args()
    if args.litellm and not (LITELLM_VENV / "bin" / "litellm").exists():
        print(f"LiteLLM venv absent ({LITELLM_VENV}): run scripts/litellm-venv; skipping it")
        args.litellm = False
    return args


def main() -> None:
    args = parse_args()
    parts = [args.only] if args.only else ["small", "large", *(["kill"] if args.kills else [])]
    out: dict[str, Any] = {"load": {}, "kill9": None, "cpus": os.cpu_count()}
    out["loadavg_before"] = [round(v, 2) for v in os.getloadavg()]
    out["cpu_pinning"] = pin_cpus() if args.pin else None
    out["load_clients"] = args.clients
    emulator, emulator_url = start_emulator(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for part, size, noise in (
                ("small", args.size, 0),
                ("large", args.large_size, args.noise),
            ):
                if part in parts:
                    workdir = Path(tmp) / part
                    workdir.mkdir()
                    out["load"][part] = size_run(args, emulator, emulator_url, size, noise, workdir)
            if "kill" in parts:
                out["kill9"] = [
                    kill_run(args, provider, Path(tmp) / f"kill-{provider}")
                    for provider in KILL_PROVIDERS
                ]
    finally:
        stop(emulator)
    out["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    out["python"] = sys.version.split()[0]
    if args.litellm:
        pin = (LITELLM_VENV / ".limner-pin").read_text().strip()
        out["litellm"] = f"{pin}: litellm --config, default workers"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "server.json").write_text(json.dumps(out, indent=2) + "\n")
    for part, figures in out["load"].items():
        print_size(part, figures)
    for kill in out["kill9"] or []:
        print("\nkill -9:", json.dumps(kill))
    print(f"\nload average before / after: {out['loadavg_before']} / {out['loadavg_after']}")


if __name__ == "__main__":
    main()
