"""The quality gate: retries with a new seed or the next model, links attempts in the log,
and fails with the reasons when no attempt passes (emulated providers on loopback)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from limner.client import Limner
from limner.ops.checks import Checks
from limner.ops.gate import QualityGateError, run_with_gate
from limner.types import ImageRequest, Operation

PIXELS_OFF = {"min_sharpness": None, "max_clipped": None, "duplicate_distance": None}
FAST = {"poll_interval": 0.01, "poll_max_interval": 0.02}


def test_a_passing_first_attempt_is_returned(openai_env: Any) -> None:
    with Limner() as client:
        gated = run_with_gate(
            client, Operation.GENERATE, ImageRequest(prompt="a lighthouse", model="openai:gpt-image-2", size="1024x1024"),
            Checks(min_size=(1024, 1024), **PIXELS_OFF), max_attempts=3,
        )  # fmt: skip
    assert len(gated.attempts) == 1 and gated.attempts[0].passed
    assert gated.result.generation_id == gated.attempts[0].generation_id


def test_failed_attempts_move_to_other_models_and_are_linked(openai_env: Any) -> None:
    request = ImageRequest(prompt="a lighthouse", model="openai:gpt-image-2", size="1024x1024")
    with Limner() as client:
        with pytest.raises(QualityGateError) as info:
            run_with_gate(
                client,
                Operation.GENERATE,
                request,
                Checks(min_size=(2048, 2048), **PIXELS_OFF),
                max_attempts=3,
            )
        attempts = info.value.attempts
        entries = [client.store.get(a.generation_id or "") for a in attempts]
    assert len(attempts) == 3 and not any(a.passed for a in attempts)
    assert (
        len({a.model for a in attempts}) == 3
    )  # gpt-image-2 takes no seed: the next models were tried
    assert all(e is not None for e in entries)
    first = entries[0]
    assert first is not None and first.parent_id is None
    assert [e.parent_id for e in entries[1:] if e] == [first.id, first.id]
    assert "1024x1024 is below 2048x2048" in str(info.value) and info.value.exit_code == 1


def test_a_seeded_model_retries_with_new_seeds(emulator: Callable[[str], Any]) -> None:
    _, url = emulator("bfl")
    request = ImageRequest(
        prompt="a fox", model="bfl:flux-2-pro", size="256x256", seed=7, provider_options=FAST
    )
    with (
        Limner(keys={"bfl": "bfl-test-key"}, base_urls={"bfl": url}) as client,
        pytest.raises(QualityGateError) as info,
    ):
        run_with_gate(
            client,
            Operation.GENERATE,
            request,
            Checks(min_size=(512, 512), **PIXELS_OFF),
            max_attempts=2,
            seed=1,
        )
    attempts = info.value.attempts
    assert [a.model for a in attempts] == ["bfl:flux-2-pro"] * 2
    assert attempts[0].seed == 7 and attempts[1].seed not in (None, 7)


def test_generate_command_runs_the_gate(openai_env: Any, tmp_path: Any) -> None:
    from click.testing import CliRunner

    from limner.cli import cli

    base = [
        "generate",
        "a lighthouse",
        "-m",
        "openai:gpt-image-2",
        "--size",
        "1024x1024",
        "-o",
        str(tmp_path),
    ]
    runner = CliRunner()
    ok = runner.invoke(cli, [*base, "--min-size", "1024x1024"])
    assert ok.exit_code == 0, ok.output
    failed = runner.invoke(cli, [*base, "--min-size", "2048x2048", "--max-attempts", "2"])
    assert (
        failed.exit_code == 1
        and "in 2 attempt(s)" in failed.output
        and "below 2048x2048" in failed.output
    )
    bad = runner.invoke(cli, [*base, "--min-size", "huge"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output
