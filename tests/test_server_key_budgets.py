"""Per-key budgets: set from the CLI, enforced on every route through the shared reservation,
refused with 402 naming the key and what is left; and the m005 migration on old stores."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from _server_fixtures import server_starter  # noqa: F401
from limner.cli import cli

GENERATE = {"prompt": "a fox", "model": "openai:gpt-image-2", "size": "256x256", "quality": "low"}
# gpt-image-2 at low quality is estimated at $0.006 (+25% metered margin = $0.0075 reserved);
# the emulator bills a 256x256 image $0.00052. A $0.008 cap admits one request, not two.
CAP = 0.008


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_cli_sets_shows_and_clears_a_key_budget() -> None:
    runner = CliRunner()
    created = runner.invoke(
        cli, ["server-keys", "create", "ci", "--budget", "5/day", "--budget", "$50/month", "--json"]
    )
    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    assert key["budget"] == {"daily": 5.0, "monthly": 50.0}
    listed = runner.invoke(cli, ["server-keys", "list"])
    assert "$5/daily, $50/monthly" in listed.output
    shown = runner.invoke(cli, ["server-keys", "budget", key["id"], "--json"])
    caps = {c["scope"]: c for c in json.loads(shown.output)["budget"]}
    assert caps["daily"]["remaining_usd"] == 5.0 and caps["monthly"]["limit_usd"] == 50.0
    changed = runner.invoke(cli, ["server-keys", "budget", key["id"], "--budget", "2/day"])
    assert (
        changed.exit_code == 0 and "daily: $2" in changed.output and "monthly" not in changed.output
    )
    cleared = runner.invoke(cli, ["server-keys", "budget", key["id"], "--clear"])
    assert "has no budget" in cleared.output


@pytest.mark.parametrize("bad", ["5/week", "five/day", "-3/day", "5"])
def test_cli_refuses_a_malformed_budget(bad: str) -> None:
    result = CliRunner().invoke(cli, ["server-keys", "create", "ci", "--budget", bad])
    assert result.exit_code == 2 and "budget" in result.output.lower()
    assert "Traceback" not in result.output


def test_key_budget_refuses_with_402_naming_the_key_and_what_is_left(
    openai_env: Any, start_server: Any
) -> None:
    server = start_server()
    ring = server.app.state.ctx.keys
    capped_id, capped = ring.create("ci-bot", ["generate", "read"], budget={"daily": CAP})
    _, free = ring.create("free", ["generate", "read"])

    first = httpx.post(server.url + "/v1/images/generations", json=GENERATE, headers=_auth(capped))
    assert first.status_code == 200, first.text
    spent = first.json()["limner"]["cost_usd"]
    second = httpx.post(server.url + "/v1/images/generations", json=GENERATE, headers=_auth(capped))
    assert second.status_code == 402
    error = second.json()["error"]
    assert error["code"] == "budget_exceeded" and error["type"] == "policy_error"
    assert "'ci-bot'" in error["message"] and capped_id in error["message"]
    assert f"${CAP - spent:.4f} left" in error["message"]
    # Another key is not held back by this one's cap.
    other = httpx.post(server.url + "/v1/images/generations", json=GENERATE, headers=_auth(free))
    assert other.status_code == 200
    # The log attributes each request to its key; nothing is left reserved.
    status = ring.budget_status(capped_id)[0]
    assert status["spent_usd"] == pytest.approx(spent) and status["reserved_usd"] == 0


def test_client_cannot_spend_another_keys_budget_or_escape_its_own(
    openai_env: Any, start_server: Any
) -> None:
    server = start_server()
    ring = server.app.state.ctx.keys
    victim_id, _ = ring.create("victim", ["generate"], budget={"daily": CAP})
    capped_id, capped = ring.create("capped", ["generate", "read"], budget={"daily": CAP})
    spoof = {**GENERATE, "tags": [f"server-key:{victim_id}", "mine"]}
    ok = httpx.post(server.url + "/v1/images/generations", json=spoof, headers=_auth(capped))
    assert ok.status_code == 200
    assert ring.budget_status(victim_id)[0]["spent_usd"] == 0  # the forged tag was dropped
    assert ring.budget_status(capped_id)[0]["spent_usd"] > 0
    entry = server.app.state.ctx.store.get(ok.json()["limner"]["generation_id"])
    assert sorted(entry.tags) == sorted(["mine", f"server-key:{capped_id}"])
    # The A1111 route and the job queue count against the same cap.
    a1111 = httpx.post(
        server.url + "/sdapi/v1/txt2img",
        json={"prompt": "x", "width": 256, "height": 256, "override_settings": {
            "sd_model_checkpoint": "openai:gpt-image-2"}},
        headers=_auth(capped), timeout=30,
    )  # fmt: skip
    assert a1111.status_code == 402, a1111.text
    job = httpx.post(server.url + "/v1/jobs", json=GENERATE, headers=_auth(capped)).json()
    deadline = time.monotonic() + 20
    while (state := httpx.get(f"{server.url}/v1/jobs/{job['id']}", headers=_auth(capped)).json())[
        "status"
    ] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    assert state["status"] == "failed" and state["error"]["code"] == "budget_exceeded"


def _drop_m005(home: Path) -> None:
    """Turn a current store into one made before m005: no budget column, no deliveries."""
    engine = sa.create_engine(f"sqlite:///{home / 'limner.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE server_webhook_deliveries")
        conn.exec_driver_sql("ALTER TABLE server_api_keys DROP COLUMN budget")
        conn.exec_driver_sql("DELETE FROM limner_migrations WHERE name = 'm005_key_budgets'")
        conn.exec_driver_sql(
            "INSERT INTO server_api_keys (id, name, key_hash, prefix, scopes, created_at)"
            " VALUES ('old', 'old key', 'h', 'lmn_', '[\"read\"]', 0)"
        )
    engine.dispose()


def test_m005_on_a_fresh_store_and_on_one_made_before_it(tmp_path: Path) -> None:
    from limner.server.auth import KeyRing
    from limner.store import Store

    store = Store(tmp_path)  # fresh: every migration, the column from the table definition
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns("server_api_keys")}
    assert "budget" in columns
    store.close()
    _drop_m005(tmp_path)
    reopened = Store(tmp_path)  # old: m005 alone runs, adds the column and the table
    try:
        inspector = sa.inspect(reopened.engine)
        assert "budget" in {c["name"] for c in inspector.get_columns("server_api_keys")}
        assert inspector.has_table("server_webhook_deliveries")
        ring = KeyRing(reopened)
        assert ring.by_id("old") is not None and ring.by_id("old").budget == ()  # type: ignore[union-attr]
        assert ring.set_budget("old", {"monthly": 3.0})
        assert [c["limit_usd"] for c in ring.budget_status("old")] == [3.0]
    finally:
        reopened.close()


def test_jobs_a_key_cannot_afford_are_refused_at_submission(
    openai_env: Any, start_server: Any
) -> None:
    server = start_server()
    ring = server.app.state.ctx.keys
    capped_id, capped = ring.create("batcher", ["generate", "read"], budget={"daily": CAP})
    # One job fits the cap ($0.006 estimated); two together do not, so neither is queued.
    two = {"jobs": [GENERATE, {**GENERATE, "prompt": "a hare"}]}
    refused = httpx.post(server.url + "/v1/jobs", json=two, headers=_auth(capped))
    assert refused.status_code == 402, refused.text
    error = refused.json()["error"]
    assert (
        error["code"] == "budget_exceeded" and "these 2 jobs would cost $0.0120" in error["message"]
    )
    assert capped_id in error["message"]
    listed = httpx.get(server.url + "/v1/jobs", headers=_auth(capped)).json()["data"]
    assert listed == []
    accepted = httpx.post(server.url + "/v1/jobs", json=GENERATE, headers=_auth(capped))
    assert accepted.status_code == 202, accepted.text


def test_a_refused_job_leaves_nothing_in_the_store(openai_env: Any, start_server: Any) -> None:
    """Input images are stored only once the jobs are accepted: a 402 adds no asset."""
    import base64

    from _server_fixtures import png_bytes
    from limner.store import db

    server = start_server()
    store = server.app.state.ctx.store
    _, capped = server.app.state.ctx.keys.create(
        "editor", ["generate", "read"], budget={"daily": CAP}
    )
    image = base64.b64encode(png_bytes(64, 64, (10, 120, 200))).decode()
    edit = {**GENERATE, "operation": "edit", "images": [image]}

    def assets() -> int:
        with store.engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(db.assets)) or 0)

    def files() -> list[Path]:
        return [p for p in store.home.rglob("*.png") if p.is_file()]

    refused = httpx.post(
        server.url + "/v1/jobs", json={"jobs": [edit, edit]}, headers=_auth(capped)
    )
    assert refused.status_code == 402, refused.text
    assert (assets(), files()) == (0, [])

    accepted = httpx.post(server.url + "/v1/jobs", json=edit, headers=_auth(capped))
    assert accepted.status_code == 202, accepted.text
    assert assets() == 1 and len(files()) == 1
    job_id = accepted.json()["id"]
    stored = server.app.state.ctx.jobs.get(job_id)["request"]["images"]
    assert store.read_asset(stored[0]) is not None
