"""Cost estimates, the ledger from the log, and monthly plans."""

from __future__ import annotations

import json
import time
from datetime import date

import pytest
from click.testing import CliRunner

from limner import Limner
from limner.catalog import Catalog, ModelSpec, get_catalog
from limner.cli import cli
from limner.cost import (
    estimate,
    parse_mix,
    parse_since,
    parse_volume,
    plan_scenario,
    plan_scenarios,
    report,
    report_totals,
)
from limner.errors import InvalidRequestError, UnknownModelError, UserError
from limner.store import Store
from limner.types import ImageRequest


def test_estimate_uses_the_catalog_price_table():
    spec = get_catalog().resolve("openai:gpt-image-2")
    result = estimate(spec, 100, "1536x1024", "high")
    assert result.per_image_usd == 0.165 and result.total_usd == pytest.approx(16.5)
    assert result.price_kind == "per_token" and "tokens" in result.note
    dalle = estimate(get_catalog().resolve("openai:dall-e-3"), 3, "1792x1024", "hd")
    assert dalle.total_usd == pytest.approx(0.36)
    with pytest.raises(InvalidRequestError, match="quality"):
        estimate(spec, 1, None, "ultra")
    with pytest.raises(UserError):
        estimate(spec, 0)


def _generate(client: Limner, **fields: object) -> None:
    client.run(
        "generate",
        ImageRequest(
            **{"prompt": "a kite", "model": "openai:dall-e-2", "size": "256x256", **fields}
        ),
    )


def test_report_from_the_log_with_cache_savings(openai_env, tmp_path):
    with Limner(home=tmp_path) as client:
        _generate(client, n=2, tags=["ads"])
        _generate(client, seed=5)
        _generate(client, seed=5)  # a cache hit: free, and it saved the list price of one image
        _generate(client, size="512x512", tags=["ads", "hero"])
        store = client.store
        by_model = report(store, by="model")
        by_tag = {r.key: r for r in report(store, by="tag")}
        by_day = report(store, by="day", since=parse_since("1d"))
    [row] = by_model
    assert row.key == "openai:dall-e-2"
    assert (row.requests, row.images, row.cache_hits) == (4, 5, 1)
    assert row.spend_usd == pytest.approx(0.016 * 2 + 0.016 + 0.018)
    assert row.saved_usd == pytest.approx(0.016)
    assert row.average_usd == pytest.approx((0.016 * 3 + 0.018) / 4)
    assert by_tag["ads"].spend_usd == pytest.approx(0.032 + 0.018)
    assert by_tag["hero"].images == 1 and by_tag["(untagged)"].cache_hits == 1
    assert [r.key for r in by_day] == [date.today().isoformat()]
    assert report_totals(by_model).spend_usd == pytest.approx(row.spend_usd)


def test_report_since_excludes_older_entries(openai_env, tmp_path):
    with Limner(home=tmp_path) as client:
        _generate(client)
        assert report(client.store, since=time.time() + 60) == []
    with pytest.raises(UserError, match="--since"):
        parse_since("last tuesday")
    assert parse_since("2026-11-01") is not None


def test_report_by_bad_grouping(tmp_path):
    store = Store(tmp_path)
    try:
        with pytest.raises(UserError):
            report(store, by="colour")
    finally:
        store.close()


def _priced(ref: str, price: float | dict) -> ModelSpec:
    provider, _, ident = ref.partition(":")
    table = price if isinstance(price, dict) else {"kind": "per_image", "per_image": price}
    return ModelSpec.model_validate(
        {"id": ident, "provider": provider, "operations": ["generate"], "price": table}
    )


def test_scenarios_are_priced_from_the_catalog():
    catalog = Catalog([
        _priced("fal:fal-ai/flux/schnell", 0.003),
        _priced("bfl:flux-2-pro", 0.03),
        _priced("midjourney:v7", {"kind": "subscription", "monthly_usd": 30}),
        _priced("ideogram:ideogram-v3", 0.06),
        _priced("openai:gpt-image-2", 0.006),
    ])  # fmt: skip
    plans = {
        p.name: p for p in plan_scenarios(catalog=catalog, gpu_hourly=0.5, gpu_images_per_hour=250)
    }
    assert set(plans) == {"hobbyist", "creator", "agency", "enterprise"}
    assert plans["hobbyist"].api_usd == pytest.approx(0.3)  # 100 x FLUX Schnell
    assert plans["creator"].api_usd == pytest.approx(30 + 250 * 0.03)  # Midjourney Standard + FLUX
    enterprise = plans["enterprise"]
    assert enterprise.self_hosted_images == 8000
    assert enterprise.self_hosted_usd == pytest.approx(8000 / 250 * 0.5)
    assert enterprise.gpu_always_on_usd == pytest.approx(0.5 * 720)
    assert enterprise.seed_estimate == "$200-500"


def test_custom_mix_and_volume():
    mix = parse_mix("openai:gpt-image-2=3,openai:dall-e-3=1")
    assert mix == [("openai:gpt-image-2", 0.75), ("openai:dall-e-3", 0.25)]
    catalog = Catalog([_priced("openai:gpt-image-2", 0.01), _priced("openai:dall-e-3", 0.04)])
    plan = plan_scenario("custom", volume=parse_volume("100/day"), mix=mix, catalog=catalog)
    assert plan.volume == 3000
    assert plan.api_usd == pytest.approx(2250 * 0.01 + 750 * 0.04)
    with pytest.raises(UnknownModelError):
        plan_scenario("custom", volume=10, mix=[("nobody:nothing", 1.0)], catalog=catalog)
    for bad in ("lots", "0", "-5/month"):
        with pytest.raises(UserError):
            parse_volume(bad)
    with pytest.raises(UserError):
        parse_mix("gpt-image-2")


def test_cli_cost_commands(openai_env, tmp_path, monkeypatch):
    runner = CliRunner()
    out = runner.invoke(
        cli,
        [
            "cost",
            "estimate",
            "-m",
            "gpt-image-2",
            "-n",
            "100",
            "--size",
            "1024x1024",
            "--quality",
            "medium",
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["total_usd"] == pytest.approx(5.3)
    assert (
        runner.invoke(
            cli, ["cost", "estimate", "-m", "gpt-image-2", "--quality", "ultra"]
        ).exit_code
        == 2
    )
    with Limner() as client:
        _generate(client)
    out = runner.invoke(cli, ["cost", "report", "--by", "provider", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["rows"][0]["key"] == "openai"
    out = runner.invoke(cli, ["cost", "plan", "--scenario", "agency", "--json"])
    assert out.exit_code == 0 and json.loads(out.output)[0]["volume"] == 2000
    for args in (["cost", "plan", "--gpu-hourly", "free"], ["cost", "plan", "--volume", "many"],
                 ["cost", "report", "--since", "yesterday-ish"]):  # fmt: skip
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, result.output
