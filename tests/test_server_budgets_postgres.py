"""Key budgets and durable webhooks on a real PostgreSQL server (skipped where it is absent):
the m005 migration on fresh and older databases, and two servers sharing one outbox."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from _server_fixtures import server_starter  # noqa: F401
from test_server_postgres import postgres_url  # noqa: F401
from test_server_webhooks import SECRET, Receiver, receiver  # noqa: F401

pytest.importorskip("psycopg")


def _reset(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


@pytest.mark.slow
def test_m005_on_postgresql_fresh_and_older(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    from limner.server.auth import KeyRing
    from limner.store import Store

    _reset(postgres_url)
    store = Store(tmp_path, url=postgres_url)
    assert "budget" in {c["name"] for c in sa.inspect(store.engine).get_columns("server_api_keys")}
    key_id, _ = KeyRing(store).create("k", ["read"], budget={"daily": 1.0})
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE server_webhook_deliveries")
        conn.exec_driver_sql("ALTER TABLE server_api_keys DROP COLUMN budget")
        conn.exec_driver_sql("DELETE FROM limner_migrations WHERE name = 'm005_key_budgets'")
    store.close()
    reopened = Store(tmp_path, url=postgres_url)
    try:
        inspector = sa.inspect(reopened.engine)
        assert inspector.has_table("server_webhook_deliveries")
        ring = KeyRing(reopened)
        assert ring.budget_status(key_id) == []  # the old key kept, its budget column new
        assert ring.set_budget(key_id, {"daily": 2.0})
        assert ring.budget_status(key_id)[0]["remaining_usd"] == 2.0
    finally:
        reopened.close()


@pytest.mark.slow
def test_two_servers_share_the_outbox_and_the_key_budget(
    openai_env: Any,
    start_server: Any,
    postgres_url: str,  # noqa: F811
    receiver: tuple[Receiver, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _reset(postgres_url)
    monkeypatch.setenv("LIMNER_DATABASE_URL", postgres_url)
    hook, hook_url = receiver
    hook.failures = 1
    settings = {"webhook_secret": SECRET, "webhook_allow_private": True, "webhook_backoff_s": 0.05}
    first = start_server(workers=2, **settings)
    second = start_server(workers=2, **settings)
    key_id, secret = first.app.state.ctx.keys.create("pg", ["generate", "read"],
                                                     budget={"daily": 1.0})  # fmt: skip
    headers = {"Authorization": f"Bearer {secret}"}
    specs = [
        {"prompt": f"hook {i}", "model": "openai:gpt-image-2", "size": "256x256",
         "webhook_url": hook_url}
        for i in range(4)
    ]  # fmt: skip
    batch = httpx.post(first.url + "/v1/jobs", json={"jobs": specs}, headers=headers).json()
    ids = [job["id"] for job in batch["jobs"]]
    deadline = time.monotonic() + 30
    while True:
        jobs = [httpx.get(f"{second.url}/v1/jobs/{i}", headers=headers).json() for i in ids]
        if all(j["webhook_status"] for j in jobs):
            break
        assert time.monotonic() < deadline, [(j["status"], j["webhook_status"]) for j in jobs]
        time.sleep(0.1)
    time.sleep(0.5)  # room for a duplicate, were there one
    assert {j["webhook_status"] for j in jobs} == {"delivered"}
    delivered = [h["limner-job"] for h, _, status in hook.calls if status == 204]
    assert sorted(delivered) == sorted(ids)  # each job's webhook arrived once
    spent = first.app.state.ctx.keys.budget_status(key_id)[0]["spent_usd"]
    assert spent == pytest.approx(sum(j["result"]["cost_usd"] for j in jobs))
