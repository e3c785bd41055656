"""``limner models``: list and inspect the catalog; subcommands load lazily."""

from __future__ import annotations

import importlib
from typing import Any

import click

from limner.cli._common import emit_json, json_option

# Subcommands that live in other modules: name -> (module:attribute, help).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "show": ("limner.cli.models:show", "Everything the catalog knows about one model."),
    "default": ("limner.cli.models:default", "Show or set the default model."),
    "compare": ("limner.cli.recommend:compare", "Compare models feature by feature."),
    "add": (
        "limner.cli.local:models_add",
        "Register a local model (folder, repo id or .safetensors).",
    ),
}


class _LazyModels(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module, _, attr = SUBCOMMANDS[name][0].partition(":")
        try:
            command: click.Command = getattr(importlib.import_module(module), attr)
        except (ModuleNotFoundError, AttributeError):
            return None
        return command


def _price_text(spec: Any) -> str:
    price = spec.price
    if price is None:
        return "-"
    if price.kind == "free":
        return "free (your hardware)"
    if price.kind == "subscription":
        return f"subscription ${price.monthly_usd:g}/mo" if price.monthly_usd else "subscription"
    one = price.image_price(None, None)
    prefix = "~" if price.kind in ("per_token", "per_megapixel") else ""
    return f"{prefix}${one:.3f}/image" if one is not None else price.kind


def _row(spec: Any) -> dict[str, Any]:
    return {
        "model": spec.ref,
        "name": spec.name,
        "operations": [op.value for op in spec.operations],
        "price": _price_text(spec),
        "licence": spec.licence,
        "commercial_use": spec.commercial_use,
        "status": spec.status(),
        "successor": spec.successor,
    }


@click.group(cls=_LazyModels, invoke_without_command=True)
@click.option("--provider", help="Only this provider's models.")
@click.option(
    "--capability", "--op", "capability", help="Only models that can do this (e.g. inpaint)."
)
@click.option("--active", is_flag=True, help="Hide retired models.")
@json_option
@click.pass_context
def models(
    ctx: click.Context, provider: str | None, capability: str | None, active: bool, as_json: bool
) -> None:
    """List models with provider, operations, price, licence and status."""
    if ctx.invoked_subcommand:
        return
    from limner.catalog import get_catalog
    from limner.errors import InvalidRequestError
    from limner.types import Operation

    if capability and capability not in {op.value for op in Operation}:
        raise InvalidRequestError(
            f"Unknown capability {capability!r}.",
            hint=f"Capabilities: {', '.join(op.value for op in Operation)}.",
        )
    specs = get_catalog().filter(
        provider=provider, capability=capability, include_retired=not active
    )
    rows = [_row(s) for s in specs]
    if as_json:
        emit_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "operations", "price", "licence", "status")
    for row in rows:
        status = row["status"] + (
            f" -> {row['successor']}" if row["status"] == "retired" and row["successor"] else ""
        )
        table.add_row(
            row["model"], ", ".join(row["operations"]), row["price"], row["licence"], status
        )
    Console().print(table)


@click.command()
@click.argument("name")
@json_option
def show(name: str, as_json: bool) -> None:
    """Everything the catalog knows about NAME."""
    from limner.client import Limner

    spec = Limner().resolve(name)
    data = spec.model_dump(mode="json", exclude_defaults=False)
    data["status"] = spec.status()
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        if value not in (None, [], {}, ""):
            click.echo(f"{key:>20}: {value}")


@click.command()
@click.argument("name", required=False)
@click.option("--unset", is_flag=True, help="Forget the configured default.")
def default(name: str | None, unset: bool) -> None:
    """Show the default model, or set it to NAME."""
    from limner.catalog import get_catalog
    from limner.config import UserConfig

    config = UserConfig()
    if unset:
        config.set("default_model", None)
        click.echo("Default model unset.")
        return
    if name:
        spec = get_catalog().resolve(name)
        config.set("default_model", spec.ref)
        click.echo(f"Default model: {spec.ref}")
        return
    from limner.client import Limner

    click.echo(Limner().default_model())
