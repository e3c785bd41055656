"""Budgets through the real client against the OpenAI emulator, and across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from limner import Limner
from limner.budget import BudgetLedger, Cap, load_caps, parse_amount
from limner.cli import cli
from limner.config import UserConfig
from limner.errors import BudgetExceededError, ProviderError, UserError
from limner.http import RetryPolicy
from limner.store import Store
from limner.types import ImageRequest

# dall-e-2 at 256x256 has a flat list price and no token usage, so actual == estimate.
PRICE = 0.016


def _request(**extra: object) -> ImageRequest:
    fields: dict = {"prompt": "a lighthouse", "model": "openai:dall-e-2", "size": "256x256"}
    return ImageRequest(**{**fields, **extra})


def _client(home: Path) -> Limner:
    return Limner(home=home)


def test_daily_cap_refuses_with_the_cap_the_spend_and_the_cost(openai_env, tmp_path, monkeypatch):
    server, _url = openai_env
    monkeypatch.setenv("LIMNER_BUDGET_DAILY_USD", "0.04")
    with _client(tmp_path) as client:
        client.run("generate", _request())
        client.run("generate", _request())
        with pytest.raises(BudgetExceededError) as info:
            client.run("generate", _request())
    message = str(info.value)
    assert "daily budget of $0.04" in message
    assert "$0.0320 spent" in message
    assert "would cost $0.0160" in message
    stats = httpx.get(server.url + "/_emulator/stats").json()
    assert stats["POST /v1/images/generations"] == 2  # the refused request was never sent
    assert sorted(e.status for e in _log(tmp_path)) == ["ok", "ok", "refused"]


def _log(home: Path) -> list:
    store = Store(home)
    try:
        return store.search(limit=None)
    finally:
        store.close()


def test_reservation_is_released_when_the_provider_fails(openai_env, tmp_path, monkeypatch):
    server, _ = openai_env
    monkeypatch.setenv("LIMNER_BUDGET_DAILY_USD", "0.02")
    httpx.post(
        server.url + "/_emulator/faults", json={"status": 500, "count": 10, "path": "/v1/images"}
    )
    with Limner(home=tmp_path, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(ProviderError):
            client.run("generate", _request())
        httpx.delete(server.url + "/_emulator/faults")
        ledger = BudgetLedger(client.store.engine)
        status = ledger.status(load_caps(client.config))[0]
        assert status.reserved_usd == 0 and status.spent_usd == 0
        result = client.run("generate", _request())  # the released reservation left room
        assert result.cost_usd == PRICE


def test_settled_spend_comes_from_the_log(openai_env, tmp_path, monkeypatch):
    monkeypatch.setenv("LIMNER_BUDGET_MONTHLY_USD", "1")
    with _client(tmp_path) as client:
        client.run("generate", _request(n=1))
        status = BudgetLedger(client.store.engine).status(load_caps(client.config))[0]
    assert status.cap == Cap("monthly", 1.0)
    assert status.spent_usd == pytest.approx(PRICE)
    assert status.reserved_usd == 0
    assert status.remaining_usd == pytest.approx(1 - PRICE)


def test_tag_caps_apply_only_to_tagged_requests(openai_env, tmp_path):
    UserConfig(tmp_path).set("budget", {"tags": {"client-a": {"daily_usd": 0.02}}})
    with _client(tmp_path) as client:
        client.run("generate", _request(tags=["client-a"]))
        with pytest.raises(BudgetExceededError, match="for tag 'client-a'"):
            client.run("generate", _request(tags=["client-a", "hero"]))
        client.run("generate", _request(tags=["client-b"]))  # another tag is not capped
        client.run("generate", _request())


def test_cache_hits_are_not_charged(openai_env, tmp_path, monkeypatch):
    monkeypatch.setenv("LIMNER_BUDGET_DAILY_USD", "0.02")
    with _client(tmp_path) as client:
        client.run("generate", _request(seed=7))
        again = client.run("generate", _request(seed=7))
    assert again.cache_hit and again.cost_usd == 0


def test_stale_reservations_expire(tmp_path):
    store = Store(tmp_path)
    try:
        ledger = BudgetLedger(store.engine, ttl_s=-1)  # every reservation is already expired
        caps = [Cap("daily", 0.05)]
        ledger.reserve(caps, 0.04, model="m", tags=[])
        ledger.reserve(caps, 0.04, model="m", tags=[])  # the first one no longer counts
        live = BudgetLedger(store.engine)
        live.reserve(caps, 0.04, model="m", tags=[])
        with pytest.raises(BudgetExceededError):
            live.reserve(caps, 0.04, model="m", tags=[])
    finally:
        store.close()


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "", "inf", "nan"])
def test_budget_must_be_a_positive_number(bad):
    with pytest.raises(UserError):
        parse_amount(bad)


def test_bad_env_budget_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LIMNER_BUDGET_DAILY_USD", "lots")
    with pytest.raises(UserError, match="LIMNER_BUDGET_DAILY_USD"):
        load_caps(UserConfig(tmp_path))


def test_budget_cli_set_show_and_bad_input(tmp_path, monkeypatch):
    runner = CliRunner()
    assert runner.invoke(cli, ["budget", "set", "--daily", "5", "--monthly", "50"]).exit_code == 0
    assert (
        runner.invoke(cli, ["budget", "set", "--tag", "client-a", "--monthly", "20"]).exit_code == 0
    )
    shown = runner.invoke(cli, ["budget", "show", "--json"])
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.output)
    assert {(r["scope"], r["tag"], r["limit_usd"]) for r in rows} == {
        ("daily", None, 5.0),
        ("monthly", None, 50.0),
        ("monthly", "client-a", 20.0),
    }
    bad = runner.invoke(cli, ["budget", "set", "--daily", "-2"])
    assert bad.exit_code == 2 and "positive number" in bad.output
    assert runner.invoke(cli, ["budget", "set", "--daily", "off"]).exit_code == 0
    rows = json.loads(runner.invoke(cli, ["budget", "show", "--json"]).output)
    assert ("daily", None) not in {(r["scope"], r["tag"]) for r in rows}


WORKER = textwrap.dedent(
    """
    import json, sys
    from concurrent.futures import ThreadPoolExecutor
    from limner import Limner
    from limner.errors import BudgetExceededError
    from limner.types import ImageRequest

    home, per_process = sys.argv[1], int(sys.argv[2])
    client = Limner(home=home)
    def one(i):
        request = ImageRequest(prompt=f"tower {i}", model="openai:dall-e-2", size="256x256")
        try:
            client.run("generate", request)
            return "ok"
        except BudgetExceededError:
            return "refused"
    with ThreadPoolExecutor(4) as pool:
        print(json.dumps(list(pool.map(one, range(per_process)))))
    """
)


@pytest.mark.slow  # three real processes: most of the time is their Python start-up
def test_concurrent_processes_never_exceed_the_cap(openai_env, tmp_path, monkeypatch):
    _, _url = openai_env
    admit = 4
    cap = PRICE * admit + 0.001
    Store(tmp_path).close()  # create the schema once, before the processes race to open it
    env = {**os.environ, "LIMNER_BUDGET_DAILY_USD": str(cap), "LIMNER_HOME": str(tmp_path)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path), "3"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [o for w in workers for o in json.loads(w.communicate(timeout=120)[0])]
    assert all(w.returncode == 0 for w in workers)
    assert outcomes.count("ok") == admit
    assert outcomes.count("refused") == 9 - admit
    assert sum(e.cost_usd or 0 for e in _log(tmp_path)) <= cap


async def test_concurrent_async_requests_in_one_process_respect_the_cap(
    openai_env, tmp_path, monkeypatch
):
    import asyncio

    monkeypatch.setenv("LIMNER_BUDGET_DAILY_USD", str(PRICE * 3 + 0.001))
    with _client(tmp_path) as client:
        assert client.store  # open it first: Limner.store is created lazily, not under a lock
        outcomes = await asyncio.gather(
            *(client.arun("generate", _request(prompt=f"boat {i}")) for i in range(8)),
            return_exceptions=True,
        )
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 3
    assert all(isinstance(o, BudgetExceededError) for o in outcomes if isinstance(o, BaseException))


def test_metered_models_reserve_a_margin(openai_env, tmp_path, monkeypatch):
    # gpt-image-1-mini low lists at $0.002 but is billed by tokens; 25% margin -> $0.0025 reserved.
    monkeypatch.setenv("LIMNER_BUDGET_DAILY_USD", "0.0024")
    request = ImageRequest(
        prompt="a moth", model="openai:gpt-image-1-mini", quality="low", size="1024x1024"
    )
    with _client(tmp_path) as client:
        with pytest.raises(BudgetExceededError, match=r"would cost \$0\.0025"):
            client.run("generate", request)
        UserConfig(tmp_path).set("budget", {"metered_margin": 0})
        assert client.run("generate", request).cost_usd is not None
