"""Core figures: CLI cold start, end-to-end generate overhead over the emulator, cache hits.

    python benchmarks/core.py [--runs 10]

Prints a table and writes benchmarks/results/core.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from limner.client import Limner
from limner.emulators import base_url, create_app
from limner.emulators.common import EmulatorServer
from limner.types import ImageRequest, Operation

RESULTS = Path(__file__).parent / "results"
LIMNER = (
    [str(Path(sys.executable).with_name("limner"))]
    if Path(sys.executable).with_name("limner").exists()
    else [sys.executable, "-m", "limner"]
)


def timed(fn: Any, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "median_ms": round(statistics.median(ms), 2),
        "min_ms": round(ms[0], 2),
        "max_ms": round(ms[-1], 2),
    }


def cli_cold_start(runs: int) -> dict[str, float]:
    return summary(
        timed(lambda: subprocess.run([*LIMNER, "--help"], capture_output=True, check=True), runs)
    )


def raw_emulator_call(url: str, body: dict[str, Any], runs: int) -> dict[str, float]:
    with httpx.Client() as client:
        headers = {"authorization": "Bearer sk-bench"}
        client.post(url + "/images/generations", json=body, headers=headers)  # warm
        return summary(
            timed(
                lambda: client.post(
                    url + "/images/generations", json=body, headers=headers
                ).raise_for_status(),
                runs,
            )
        )


def library_generate(
    client: Limner, body: dict[str, Any], runs: int, seed: bool
) -> dict[str, float]:
    counter = iter(range(10**9))

    def once() -> None:
        request = ImageRequest(prompt=f"{body['prompt']} {0 if seed else next(counter)}", model="openai:" + body["model"],
                               size=body["size"], quality=body["quality"], seed=1 if seed else None)  # fmt: skip
        client.run(Operation.GENERATE, request)

    once()  # warm the process and, for the seeded case, the cache
    return summary(timed(once, runs))


def cli_generate(env: dict[str, str], out: str, runs: int, extra: list[str]) -> dict[str, float]:
    counter = iter(range(10**9))

    def once() -> None:
        args = [*LIMNER, "generate", f"a red fox {next(counter) if not extra else 0}", "-m", "openai:gpt-image-2",
                "--size", "1024x1024", "--quality", "low", "-o", out, "--json", *extra]  # fmt: skip
        subprocess.run(args, env=env, capture_output=True, check=True)

    once()
    return summary(timed(once, runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="limner-bench-")
    os.environ["LIMNER_HOME"] = home
    body = {"model": "gpt-image-2", "prompt": "a red fox", "size": "1024x1024", "quality": "low"}
    rows: dict[str, dict[str, float]] = {}
    with EmulatorServer(create_app("openai")) as server:
        url = base_url("openai", server.url)
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "LIMNER_OPENAI_BASE_URL": url}
        rows["cli cold start (limner --help)"] = cli_cold_start(args.runs)
        rows["emulator alone (one HTTP call)"] = raw_emulator_call(url, body, args.runs)
        with Limner(keys={"openai": "sk-bench"}, base_urls={"openai": url}) as client:
            rows["library generate (end to end)"] = library_generate(
                client, body, args.runs, seed=False
            )
            rows["library cache hit"] = library_generate(client, body, args.runs, seed=True)
        rows["cli generate (end to end)"] = cli_generate(
            env, os.path.join(home, "out"), args.runs, []
        )
        rows["cli cache hit"] = cli_generate(
            env, os.path.join(home, "out"), args.runs, ["--seed", "5"]
        )
    emulator = rows["emulator alone (one HTTP call)"]["median_ms"]
    overhead = {
        "library overhead over emulator (median ms)": round(
            rows["library generate (end to end)"]["median_ms"] - emulator, 2
        ),
        "cli overhead over emulator (median ms)": round(
            rows["cli generate (end to end)"]["median_ms"] - emulator, 2
        ),
    }
    print(f"{'figure':<40} {'median ms':>10} {'min ms':>9} {'max ms':>9}")
    for name, row in rows.items():
        print(f"{name:<40} {row['median_ms']:>10.2f} {row['min_ms']:>9.2f} {row['max_ms']:>9.2f}")
    for name, value in overhead.items():
        print(f"{name:<50} {value:>10.2f}")
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "runs": args.runs,
        "python": sys.version.split()[0],
        "rows": rows,
        "overhead": overhead,
    }
    (RESULTS / "core.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
