"""Batches against the OpenAI emulator: input formats, bad input, failures, resume, rate limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from limner import errors
from limner.batch import BatchOptions, BatchRunner, batch_id_for, parse_batch_file
from limner.batch.inputs import BatchInputError, expand_template
from limner.batch.ratelimit import RateLimiter, TokenBucket, parse_reset
from limner.cli import cli
from limner.emulators.common import BLOCKED_WORD

MODEL = "openai:gpt-image-2"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _stats(url: str) -> dict[str, int]:
    root = url.rsplit("/v1", 1)[0]
    return dict(httpx.get(f"{root}/_emulator/stats").json())


def _generations(url: str) -> int:
    return _stats(url).get("POST /v1/images/generations", 0)


def _batch(args: list[str]) -> Any:
    return CliRunner().invoke(cli, ["batch", *args], catch_exceptions=False)


# -- reading files ---------------------------------------------------------------------------
def test_jsonl_reports_malformed_lines_with_numbers(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "b.jsonl",
        '{"prompt": "a"}\n{oops\n\n{"prompt": "b", "sizee": "1x1"}\n["x"]\n"just a prompt"\n',
    )
    parsed = parse_batch_file(path, {"model": MODEL})
    assert [line.request.prompt for line in parsed.lines] == ["a", "just a prompt"]
    assert all(line.request.model == MODEL for line in parsed.lines)
    assert [(p.line, p.message.split(" (")[0]) for p in parsed.problems] == [
        (2, "not valid JSON"),
        (4, "unknown field 'sizee'"),
        (5, "expected a JSON object with request fields"),
    ]


def test_csv_columns_are_parameters_and_unknown_column_is_named(tmp_path: Path) -> None:
    good = _write(tmp_path / "b.csv", "prompt,seed,tags\nfox,3,a;b\nowl,,\n,,\n")
    parsed = parse_batch_file(good)
    assert [(x.request.prompt, x.request.seed, x.request.tags) for x in parsed.lines] == [
        ("fox", 3, ["a", "b"]),
        ("owl", None, []),
    ]
    bad = _write(tmp_path / "bad.csv", "prompt,colour\nfox,red\n")
    with pytest.raises(BatchInputError, match="Unknown CSV column 'colour'"):
        parse_batch_file(bad)
    typo = _write(tmp_path / "typo.csv", "prompt,seed\nfox,three\n")
    assert parse_batch_file(typo).problems[0].line == 2


def test_text_templates_expand_and_bad_templates_are_reported(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "p.txt",
        "# comment\na {red|blue} {fox|owl}\nplain prompt\n{|}\n" + "x {a|b|c|d} {a|b|c|d}\n",
    )
    parsed = parse_batch_file(path, max_expansions=10)
    prompts = [x.request.prompt for x in parsed.lines]
    assert prompts[:5] == ["a red fox", "a red owl", "a blue fox", "a blue owl", "plain prompt"]
    assert parsed.lines[0].labels == {"template": "a {red|blue} {fox|owl}"}
    messages = {p.line: p.message for p in parsed.problems}
    assert "no prompt" in messages[4]
    assert "maximum" in messages[5] or "more than" in messages[5]
    assert expand_template("{a|b}") == ["a", "b"]


def test_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BatchInputError, match="empty"):
        parse_batch_file(_write(tmp_path / "e.txt", "\n  \n"))


# -- the CLI ---------------------------------------------------------------------------------
def test_batch_runs_writes_manifest_and_resumes(openai_env: Any, tmp_path: Path) -> None:
    _, url = openai_env
    path = _write(tmp_path / "p.txt", "a fox\na {red|blue} owl\na fox\n")
    out = tmp_path / "out"
    result = _batch(
        [
            str(path),
            "-m",
            MODEL,
            "--size",
            "256x256",
            "--project",
            "zoo",
            "--tag",
            "t1",
            "-o",
            str(out),
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["total"], summary["done"], summary["sent"]) == (4, 4, 4)
    assert _generations(url) == 4  # "a fox" twice unseeded means two images
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest) == 4
    for row in manifest:
        assert (out / row["file"]).is_file()
        assert row["model"] == MODEL and row["project"] == "zoo" and row["tags"] == ["t1"]
        assert row["cost_usd"] > 0 and row["time"]
    assert (
        (out / "manifest.csv")
        .read_text()
        .splitlines()[0]
        .startswith("index,status,model,prompt,revised_prompt,file")
    )
    again = json.loads(
        _batch([str(path), "-m", MODEL, "--size", "256x256", "-o", str(out), "--json"]).stdout
    )
    assert (again["done"], again["sent"], again["skipped_done"]) == (4, 0, 4)
    assert _generations(url) == 4


def test_failures_are_reported_with_reasons_and_retried_on_rerun(
    openai_env: Any, tmp_path: Path
) -> None:
    _, url = openai_env
    path = _write(
        tmp_path / "p.jsonl",
        f'{{"prompt": "ok one"}}\n{{"prompt": "a {BLOCKED_WORD} scene"}}\n{{"prompt": "bad size", "size": "7x7"}}\n',
    )
    result = _batch(
        [str(path), "-m", MODEL, "--size", "256x256", "-o", str(tmp_path / "o"), "--json"]
    )
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["failed"]) == (1, 2)
    reasons = {p["line"]: p["error"] for p in summary["problems"]}
    assert "ContentPolicyError" in reasons[2]
    assert "size" in reasons[3].lower()
    rows = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert {r["line"]: r["status"] for r in rows} == {1: "done", 2: "failed", 3: "failed"}
    before = _generations(url)
    rerun = json.loads(
        _batch(
            [str(path), "-m", MODEL, "--size", "256x256", "-o", str(tmp_path / "o"), "--json"]
        ).stdout
    )
    assert rerun["sent"] == 1  # only the refused prompt is resent; the invalid one never leaves
    assert _generations(url) == before + 1


def test_nothing_runnable_exits_2_and_strict_stops(openai_env: Any, tmp_path: Path) -> None:
    bad = _write(tmp_path / "b.jsonl", "{nope\n[1]\n")
    result = CliRunner().invoke(cli, ["batch", str(bad), "-m", MODEL])
    assert result.exit_code == 2 and "No usable request" in result.output
    mixed = _write(tmp_path / "m.jsonl", '{"prompt": "x"}\n{nope\n')
    strict = CliRunner().invoke(cli, ["batch", str(mixed), "-m", MODEL, "--strict"])
    assert strict.exit_code == 2 and "line 2" in strict.output
    lenient = CliRunner().invoke(
        cli, ["batch", str(mixed), "-m", MODEL, "--size", "256x256", "--json"]
    )
    assert lenient.exit_code == 1  # the good line ran; the skipped one still counts
    summary = json.loads(lenient.stdout)
    assert summary["done"] == 1 and summary["malformed"] == 1
    assert [p["line"] for p in summary["problems"] if p["status"] == "malformed"] == [2]
    unknown = CliRunner().invoke(
        cli, ["batch", str(_write(tmp_path / "u.txt", "fox\n")), "-m", "openai:no-such-model"]
    )
    assert unknown.exit_code == 2 and "Nothing" in unknown.output
    assert CliRunner().invoke(cli, ["batch", str(_write(tmp_path / "e.csv", ""))]).exit_code == 2


def test_provider_429_is_followed_and_counted(openai_env: Any, tmp_path: Path) -> None:
    _, url = openai_env
    root = url.rsplit("/v1", 1)[0]
    httpx.post(
        f"{root}/_emulator/faults",
        json={"status": 429, "retry_after": 0.2, "count": 1, "path": "/v1/images"},
    )
    path = _write(tmp_path / "p.txt", "one\ntwo\n")
    result = _batch(
        [
            str(path),
            "-m",
            MODEL,
            "--size",
            "256x256",
            "--concurrency",
            "1",
            "-o",
            str(tmp_path / "o"),
            "--json",
        ]
    )
    summary = json.loads(result.stdout)
    assert summary["done"] == 2 and summary["rate_limited"] == 1


def test_emulator_rpm_limit_and_headers_are_followed(openai_env: Any, tmp_path: Path) -> None:
    _, url = openai_env
    root = url.rsplit("/v1", 1)[0]
    httpx.post(f"{root}/_emulator/settings", json={"rpm": 3})
    headers = httpx.post(
        f"{url}/images/generations",
        json={"model": "gpt-image-2", "prompt": "x", "size": "256x256"},
        headers={"authorization": "Bearer k"},
    ).headers
    assert (
        headers["x-ratelimit-limit-requests"] == "3"
        and headers["x-ratelimit-remaining-requests"] == "2"
    )
    limiter = RateLimiter()
    bucket = limiter.add("openai", url, rpm=None)
    response = httpx.post(
        f"{url}/images/generations",
        json={"model": "gpt-image-2", "prompt": "y", "size": "256x256"},
        headers={"authorization": "Bearer k"},
    )
    limiter.observe(f"{url}/images/generations", response)
    assert bucket.rpm == 3  # learned from the provider's header
    httpx.post(
        f"{url}/images/generations",
        json={"model": "gpt-image-2", "prompt": "z", "size": "256x256"},
        headers={"authorization": "Bearer k"},
    )
    refused = httpx.post(
        f"{url}/images/generations",
        json={"model": "gpt-image-2", "prompt": "w", "size": "256x256"},
        headers={"authorization": "Bearer k"},
    )
    assert refused.status_code == 429 and float(refused.headers["retry-after"]) > 50
    assert _stats(url)["rate_limited"] == 1


def test_token_bucket_paces_and_pauses() -> None:
    bucket = TokenBucket(rpm=60)
    waits = [bucket.reserve(now=100.0) for _ in range(3)]
    assert waits[0] == 0 and 1.0 < waits[1] < 1.02 and 2.0 < waits[2] < 2.04
    burst = TokenBucket(rpm=60, burst=3)
    assert [round(burst.reserve(now=0.0), 2) for _ in range(4)] == [0, 0, 0, 1.01]
    free = TokenBucket()
    free.pause(5)
    assert 4.9 < free.reserve() <= 5
    free.lower_limit(30)
    assert free.rpm == 30
    assert parse_reset("6m0s") == 360 and parse_reset("20ms") == 0.02 and parse_reset("1.5") == 1.5
    assert parse_reset("soon") is None


class _CapGuard:
    """A spending cap of ``limit`` requests: refuses the rest with BudgetExceededError."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def before_send(self, plan: Any) -> Any:
        if self.left <= 0:
            raise errors.BudgetExceededError("batch cap reached")
        self.left -= 1
        return 1

    def settle(self, plan: Any, token: Any, cost: float | None) -> None:
        pass

    def release(self, plan: Any, token: Any) -> None:
        self.left += 1


def test_guards_run_for_each_item(openai_env: Any, tmp_path: Path) -> None:
    parsed = parse_batch_file(
        _write(tmp_path / "p.txt", "one\ntwo\nthree\n"), {"model": MODEL, "size": "256x256"}
    )
    with BatchRunner(
        BatchOptions(concurrency=1), client_kwargs={"guards": [_CapGuard(2)]}
    ) as runner:
        rows = runner.plan_items(parsed.lines)
        summary = runner.run(batch_id_for("batch", "cap"), rows)
    assert (summary.done, summary.failed) == (2, 1)
    assert "BudgetExceededError" in summary.problems[0]["error"]


def test_dry_run_estimates_and_sends_nothing(openai_env: Any, tmp_path: Path) -> None:
    _, url = openai_env
    rows = "\n".join(
        json.dumps(
            {"prompt": f"p{i}", "model": "openai:dall-e-3", "quality": "hd", "size": "1792x1024"}
        )
        for i in range(3)
    )
    source = _write(tmp_path / "jobs.jsonl", rows + "\n")
    result = _batch([str(source), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["would_send"] == 3 and data["by_model"] == {"openai:dall-e-3": 3}
    assert data["estimated_cost_usd"] == pytest.approx(0.36)
    assert _stats(url).get("total", 0) == 0
