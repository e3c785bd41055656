"""``limner cost estimate|report|plan`` and ``limner budget show|set``."""

from __future__ import annotations

from typing import Any

import click

from limner.cli._common import emit_json, json_option


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@click.group()
def cost() -> None:
    """Estimate, report and plan what images cost."""


@cost.command()
@click.option("-m", "--model", required=True, help="provider:model or alias.")
@click.option("-n", "n", type=int, default=1, show_default=True, help="Number of images.")
@click.option("--size", help="WIDTHxHEIGHT.")
@click.option("--quality", help="Quality level the model offers.")
@json_option
def estimate(model: str, n: int, size: str | None, quality: str | None, as_json: bool) -> None:
    """What N images of MODEL would cost at list price."""
    from limner.catalog import get_catalog
    from limner.cost import estimate as estimate_cost

    catalog = get_catalog()
    result = estimate_cost(catalog.resolve(model), n, size, quality, catalog)
    if as_json:
        emit_json(result.to_dict())
        return
    detail = ", ".join(filter(None, [result.size, result.quality]))
    click.echo(
        f"{result.model}{f' ({detail})' if detail else ''}: {_money(result.per_image_usd)} per image"
    )
    click.secho(f"{result.n} images: {_money(result.total_usd)}", bold=True)
    for line in [result.note, *result.warnings]:
        if line:
            click.echo(line)


@cost.command()
@click.option(
    "--since", default="30d", show_default=True, help="How far back: 30d, 12h, 2w or a date."
)
@click.option(
    "--by",
    type=click.Choice(["model", "provider", "day", "tag"]),
    default="model",
    show_default=True,
)
@json_option
def report(since: str, by: str, as_json: bool) -> None:
    """Spend, images, average per image, cache hits and what they saved, from the log."""
    from limner.config import limner_home
    from limner.cost import parse_since, report_totals
    from limner.cost import report as build_report
    from limner.store import Store

    start = parse_since(since)
    store = Store(limner_home())
    try:
        rows = build_report(store, since=start, by=by)
    finally:
        store.close()
    total = report_totals(rows)
    if as_json:
        emit_json(
            {
                "since": start,
                "by": by,
                "rows": [r.to_dict() for r in rows],
                "total": total.to_dict(),
            }
        )
        return
    body = [
        [r.key, str(r.requests), str(r.images), _money(r.spend_usd), _money(r.average_usd),
         str(r.cache_hits), _money(r.saved_usd), str(r.failed + r.refused)]
        for r in [*rows, total]
    ]  # fmt: skip
    _table(
        [
            by.capitalize(),
            "Requests",
            "Images",
            "Spend",
            "Avg/image",
            "Cache hits",
            "Saved",
            "Failed/refused",
        ],
        body,
    )


def _echo_plan(plan: Any) -> None:
    guide = "; ".join(filter(None, [plan.seed_recommendation, plan.seed_estimate]))
    click.secho(
        f"{plan.label}: {plan.volume:,} images/month" + (f"  (guide: {guide})" if guide else ""),
        bold=True,
    )
    for line in plan.lines:
        click.echo(
            f"  {line.share:>4.0%}  {line.model:38} {line.images:>6,} images  {_money(line.monthly_usd):>10}  {line.note}"
        )
    if plan.self_hosted_images:
        label = "self-hosted GPU (hours used)"
        click.echo(
            f"  {1 - sum(x.share for x in plan.lines):>4.0%}  {label:38} {plan.self_hosted_images:>6,} images  {_money(plan.self_hosted_usd):>10}"
        )
    click.echo(f"        {'total':38} {plan.volume:>6,} images  {_money(plan.total_usd):>10}")
    click.echo(
        f"  All on a self-hosted GPU: {_money(plan.all_self_hosted_usd)} in GPU hours, "
        f"{_money(plan.gpu_always_on_usd)} for a GPU rented all month."
    )


@cost.command()
@click.option(
    "--scenario",
    type=click.Choice(["hobbyist", "creator", "agency", "enterprise", "all"]),
    default="all",
    show_default=True,
)
@click.option("--volume", help="Images per month (2000, 2000/month, 100/day).")
@click.option("--mix", help="MODEL=SHARE,... for a custom plan (shares are normalised).")
@click.option("--gpu-hourly", help="Price of a self-hosted GPU per hour, in USD.")
@click.option("--gpu-images-per-hour", type=float, help="Images the GPU makes per hour.")
@json_option
def plan(
    scenario: str,
    volume: str | None,
    mix: str | None,
    gpu_hourly: str | None,
    gpu_images_per_hour: float | None,
    as_json: bool,
) -> None:
    """Monthly cost of the guide's scenarios (or your own mix) against a self-hosted GPU."""
    from limner.budget import parse_amount
    from limner.cost import parse_mix, parse_volume, plan_scenario, plan_scenarios

    kwargs: dict[str, Any] = {
        "volume": parse_volume(volume) if volume else None,
        "gpu_hourly": parse_amount(gpu_hourly, "GPU hourly price") if gpu_hourly else None,
        "gpu_images_per_hour": gpu_images_per_hour,
    }
    if gpu_images_per_hour is not None and gpu_images_per_hour <= 0:
        from limner.errors import UserError

        raise UserError("--gpu-images-per-hour must be positive.")
    parsed_mix = parse_mix(mix)
    if parsed_mix:
        plans = [plan_scenario("custom", mix=parsed_mix, **kwargs)]
    elif scenario == "all":
        plans = plan_scenarios(**kwargs)
    else:
        plans = [plan_scenario(scenario, **kwargs)]
    if as_json:
        emit_json([p.to_dict() for p in plans])
        return
    for index, item in enumerate(plans):
        if index:
            click.echo()
        _echo_plan(item)


# -- budgets -----------------------------------------------------------------------------------
@click.group()
def budget() -> None:
    """Show or set daily and monthly spending caps."""


@budget.command("show")
@json_option
def budget_show(as_json: bool) -> None:
    """The caps, what was spent and reserved, and what remains."""
    from limner.budget import BudgetLedger, load_caps
    from limner.config import UserConfig, limner_home
    from limner.store import Store

    home = limner_home()
    caps = load_caps(UserConfig(home))
    store = Store(home)
    try:
        rows = [s.to_dict() for s in BudgetLedger(store.engine).status(caps)]
    finally:
        store.close()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("No budget set. Set one with `limner budget set --daily USD --monthly USD`.")
        return
    _table(
        ["Cap", "Limit", "Spent", "Reserved", "Remaining"],
        [[f"{r['scope']}{' tag ' + r['tag'] if r['tag'] else ''}", _money(r["limit_usd"]), _money(r["spent_usd"]),
          _money(r["reserved_usd"]), _money(r["remaining_usd"])] for r in rows],
    )  # fmt: skip


def _cap_value(value: str | None, what: str) -> float | str | None:
    from limner.budget import parse_amount

    if value is None:
        return "keep"
    if value.strip().lower() in ("off", "none"):
        return None
    return parse_amount(value, what)


@budget.command("set")
@click.option("--daily", help="Daily cap in USD, or 'off'.")
@click.option("--monthly", help="Monthly cap in USD, or 'off'.")
@click.option("--tag", help="Set the caps for requests with this tag only.")
def budget_set(daily: str | None, monthly: str | None, tag: str | None) -> None:
    """Set caps in config.json (LIMNER_BUDGET_DAILY_USD / _MONTHLY_USD override the global ones)."""
    from limner.config import UserConfig, limner_home
    from limner.errors import UserError

    if daily is None and monthly is None:
        raise UserError(
            "Nothing to set.", hint="Pass --daily USD and/or --monthly USD ('off' removes a cap)."
        )
    config = UserConfig(limner_home())
    section = dict(config.get("budget") or {})
    target = dict((section.get("tags") or {}).get(tag) or {}) if tag else section
    for scope, value in (("daily", daily), ("monthly", monthly)):
        parsed = _cap_value(value, f"{scope} budget")
        if parsed == "keep":
            continue
        if parsed is None:
            target.pop(f"{scope}_usd", None)
        else:
            target[f"{scope}_usd"] = parsed
    if tag:
        tags = dict(section.get("tags") or {})
        tags[tag] = target
        section["tags"] = {k: v for k, v in tags.items() if v}
    config.set("budget", section or None)
    click.echo("Budget saved. `limner budget show` lists it.")
