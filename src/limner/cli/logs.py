"""``limner logs``: the generation log, newest first."""

from __future__ import annotations

import time
from typing import Any

import click

from limner.cli._common import emit_json, json_option


def parse_since(text: str | None) -> float | None:
    """``30d``, ``12h``, ``45m`` or an ISO date, as a Unix time."""
    if not text:
        return None
    from datetime import datetime

    from limner.errors import InvalidRequestError

    units = {"d": 86400, "h": 3600, "m": 60, "w": 604800}
    if text[-1:] in units and text[:-1].isdigit():
        return time.time() - int(text[:-1]) * units[text[-1]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise InvalidRequestError(
            f"--since {text!r} is not a duration (30d, 12h) or an ISO date."
        ) from None


@click.command()
@click.option(
    "-n", "--count", "count", type=int, default=20, show_default=True, help="How many entries."
)
@click.option("-q", "--query", help="Words that must appear in the prompt, model or tags.")
@click.option("-m", "--model", help="Only this model (provider:model).")
@click.option("--provider", help="Only this provider.")
@click.option("--project", help="Only this project.")
@click.option("--status", type=click.Choice(["ok", "error", "refused"]))
@click.option("--since", help="Only since this long ago (30d, 12h) or this date.")
@click.option("--id", "entry_id", help="Show one entry in full.")
@json_option
def logs(count: int, query: str | None, model: str | None, provider: str | None, project: str | None,
         status: str | None, since: str | None, entry_id: str | None, as_json: bool) -> None:  # fmt: skip
    """List and search generations: prompt, model, cost, files."""
    from limner.errors import InvalidRequestError
    from limner.store import Store

    if count < 1:
        raise InvalidRequestError("-n must be at least 1.")
    store = Store()
    if entry_id:
        entry = store.get(entry_id)
        if entry is None:
            raise InvalidRequestError(f"No log entry {entry_id!r}.", hint="See `limner logs`.")
        entries = [entry]
    else:
        entries = store.search(query, limit=count, model=model, provider=provider, project=project,
                               status=status, since=parse_since(since))  # fmt: skip
    if as_json:
        emit_json([e.to_dict() for e in entries])
        return
    _print(entries)


def _print(entries: list[Any]) -> None:
    from datetime import datetime

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("id", "when", "model", "prompt", "images", "cost", "status")
    for e in entries:
        cost = "-" if e.cost_usd is None else f"${e.cost_usd:.4f}"
        status = "cache" if e.cache_hit else e.status
        prompt = e.prompt if len(e.prompt) < 60 else e.prompt[:57] + "..."
        when = datetime.fromtimestamp(e.created_at).strftime("%Y-%m-%d %H:%M")
        table.add_row(
            *(escape(c) for c in (e.id, when, e.model, prompt, str(len(e.images)), cost, status))
        )
    Console().print(table)
