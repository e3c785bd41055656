"""``limner export``: manifests of the log; other exports load lazily."""

from __future__ import annotations

import csv
import importlib
import io
import json
from pathlib import Path
from typing import Any

import click

SUBCOMMANDS: dict[str, str] = {
    "manifest": "limner.cli.export:manifest",
    "comfyui": "limner.cli.local:export_comfyui",
    "project": "limner.cli.batch:export_project",
}

MANIFEST_FIELDS = ["id", "created_at", "model", "prompt", "revised_prompt", "negative_prompt", "params",
                   "seed", "file", "sha256", "cost_usd", "project", "tags"]  # fmt: skip


class _LazyExport(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module, _, attr = SUBCOMMANDS[name].partition(":")
        try:
            command: click.Command = getattr(importlib.import_module(module), attr)
        except (ModuleNotFoundError, AttributeError):
            return None
        return command


@click.group(cls=_LazyExport)
def export() -> None:
    """Export manifests, workflows and projects."""


def manifest_rows(entries: list[Any]) -> list[dict[str, Any]]:
    """One row per image: the seed's manifest (model, prompt, revised prompt, params, file, cost, time)."""
    from datetime import UTC, datetime

    rows = []
    for e in entries:
        share = (e.cost_usd / len(e.images)) if e.cost_usd is not None and e.images else e.cost_usd
        for img in e.images or []:
            rows.append({
                "id": e.id,
                "created_at": datetime.fromtimestamp(e.created_at, UTC).isoformat(),
                "model": e.model,
                "prompt": e.prompt,
                "revised_prompt": img.revised_prompt,
                "negative_prompt": e.negative_prompt,
                "params": e.params,
                "seed": img.seed,
                "file": str(img.path),
                "sha256": img.sha256,
                "cost_usd": None if share is None else round(share, 6),
                "project": e.project,
                "tags": e.tags or [],
            })  # fmt: skip
    return rows


def write_manifest(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()}
        )
    return buf.getvalue()


@export.command()
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="File to write (default: stdout)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "csv"]),
    help="Default: from the file suffix, else json.",
)
@click.option("-q", "--query", help="Only entries matching these words.")
@click.option("--project", help="Only this project.")
@click.option("--since", help="Only since (30d, 12h, ISO date).")
def manifest(
    output: Path | None, fmt: str | None, query: str | None, project: str | None, since: str | None
) -> None:
    """Write a JSON or CSV manifest of the stored images."""
    from limner.cli.logs import parse_since
    from limner.store import Store

    fmt = fmt or ("csv" if output and output.suffix.lower() == ".csv" else "json")
    entries = Store().search(
        query, limit=None, project=project, status="ok", since=parse_since(since)
    )
    text = write_manifest(manifest_rows(entries), fmt)
    if output:
        from limner.config import atomic_write

        atomic_write(output, text.encode())
        click.echo(f"Wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
