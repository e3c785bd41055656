"""A/B tests, X/Y/Z grids and project exports, built on the batch runner.

An axis is a list of labelled assignments (``model=a`` or, for A/B rows, ``model=a, seed=2``);
each cell of the grid is one request, run as a resumable batch. The results are a contact sheet
per Z value with labelled axes, an HTML report (every image, its parameters, cost and quality
scores) and a manifest.
"""

from __future__ import annotations

import html
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from limner import errors
from limner.batch.inputs import BatchLine
from limner.batch.manifest import (
    DEFAULT_NAMING,
    GridCell,
    contact_sheet,
    export_entries,
    manifest_rows,
    simple_sheet,
    write_manifest,
)
from limner.batch.runner import BatchOptions, BatchRunner, BatchSummary, batch_id_for
from limner.batch.state import BatchStore
from limner.store import LogEntry
from limner.types import ImageRequest

__all__ = ["Axis", "GridResult", "ab_axes", "export_project_files", "grid_axes", "run_grid"]

MAX_GRID_CELLS = 400
GRID_PARAMS = frozenset(ImageRequest.model_fields) - {
    "images",
    "mask",
    "references",
    "provider_options",
    "tags",
    "project",
    "n",
}
NUMERIC = {"seed": int, "steps": int, "guidance": float, "strength": float}


@dataclass
class Axis:
    name: str
    entries: list[tuple[str, dict[str, Any]]]  # (label, request fields it sets)


@dataclass
class GridResult:
    batch_id: str
    summary: BatchSummary
    out_dir: Path
    sheets: list[Path]
    report: Path
    cells: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id, "summary": self.summary.to_dict(), "out_dir": str(self.out_dir),
            "sheets": [str(p) for p in self.sheets], "report": str(self.report), "cells": self.cells,
        }  # fmt: skip


def _value(param: str, raw: str) -> Any:
    kind = NUMERIC.get(param)
    if kind is None:
        return raw
    try:
        return kind(raw)
    except ValueError:
        raise errors.InvalidRequestError(
            f"Grid value {raw!r} for {param} is not a number.", param=param
        ) from None


def parse_axis(spec: str, option: str) -> Axis:
    """``PARAM=v1,v2`` -> an axis; ``prompt`` values replace the prompt, ``variant`` values append."""
    param, sep, values = spec.partition("=")
    param = param.strip().replace("-", "_")
    if not sep or not values.strip():
        raise errors.UserError(
            f"{option} {spec!r} is not PARAM=v1,v2,...",
            hint="For example: --x model=openai:gpt-image-2,openai:dall-e-3",
        )
    if param not in GRID_PARAMS | {"variant"}:
        raise errors.UserError(
            f"Unknown grid parameter {param!r} in {option}.",
            hint=f"Parameters: {', '.join(sorted(GRID_PARAMS | {'variant'}))}.",
        )
    items = [v.strip() for v in values.split("|" if "|" in values else ",") if v.strip()]
    if not items:
        raise errors.UserError(f"{option} {spec!r} has no values.")
    return Axis(param, [(v, {param: _value(param, v)}) for v in items])


def grid_axes(
    prompt: str, x: str | None, y: str | None, z: str | None, **base: Any
) -> tuple[list[Axis], dict[str, Any]]:
    axes = [
        parse_axis(spec, opt) if spec else Axis("", [("", {})])
        for spec, opt in ((x, "--x"), (y, "--y"), (z, "--z"))
    ]
    if not (x or y or z):
        raise errors.UserError(
            "A grid needs at least one axis.",
            hint="For example: --x model=a,b --y style=vivid,natural",
        )
    return axes, {"prompt": prompt, **base}


def ab_axes(
    prompt: str, variants: list[str], models: list[str], seeds: int, **base: Any
) -> tuple[list[Axis], dict[str, Any]]:
    """Variants across; model x seed down; one sheet."""
    x = Axis("variant", [(v, {"variant": v}) for v in variants] or [("(as written)", {})])
    rows = []
    choices: list[str | None] = list(models) or [None]
    for model in choices:
        for seed in range(1, seeds + 1):
            label = f"{(model or 'default').split(':')[-1]}, seed {seed}"
            rows.append((label, {"model": model, "seed": seed}))
    return [x, Axis("model/seed", rows), Axis("", [("", {})])], {"prompt": prompt, **base}


def _cell_request(base: dict[str, Any], sets: list[dict[str, Any]]) -> ImageRequest:
    fields = {k: v for k, v in base.items() if v not in (None, [], {})}
    for assign in sets:
        for key, value in assign.items():
            if key == "variant":
                fields["prompt"] = f"{fields.get('prompt', '')}, {value}".strip(", ")
            elif value is not None:
                fields[key] = value
    try:
        return ImageRequest(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise errors.InvalidRequestError(
            f"Grid value for {first['loc'][0]}: {first['msg']}.", param=str(first["loc"][0])
        ) from None


def _grid_lines(base: dict[str, Any], axes: list[Axis]) -> list[BatchLine]:
    x, y, z = axes
    total = len(x.entries) * len(y.entries) * len(z.entries)
    if total > MAX_GRID_CELLS:
        raise errors.UserError(
            f"The grid has {total} cells, more than the maximum of {MAX_GRID_CELLS}.",
            hint="Use fewer values per axis, or run the requests as a batch.",
        )
    lines = []
    for n, ((zl, zs), (yl, ys), (xl, xs)) in enumerate(
        itertools.product(z.entries, y.entries, x.entries), start=1
    ):
        labels = {"x": xl, "y": yl, "z": zl}
        lines.append(BatchLine(n, _cell_request(base, [xs, ys, zs]), labels))
    return lines


def _quality_scores(path: Path) -> dict[str, Any]:
    """The seed's checklist scores for the report: sharpness, exposure, size."""
    from limner.ops import read_image
    from limner.ops.checks import Checks, check_image

    img, _ = read_image(path)
    return check_image(img, Checks(duplicate_distance=None), name=path.name).to_dict()


def run_grid(
    kind: str,
    base: dict[str, Any],
    axes: list[Axis],
    out_dir: Path | None,
    options: BatchOptions,
    params: dict[str, Any],
    execute: Callable[..., BatchSummary],
) -> GridResult:
    lines = _grid_lines(base, axes)
    source = json.dumps(
        {"base": base, "axes": [[a.name, a.entries] for a in axes]}, sort_keys=True, default=str
    )
    batch_id = batch_id_for(kind, base.get("prompt", ""), source)
    out = out_dir or Path(f"{kind}-{batch_id.split('-')[-1][:8]}")
    with BatchRunner(options) as runner:
        rows = runner.plan_items(lines)
        summary = execute(
            runner,
            batch_id,
            rows,
            kind=kind,
            name=f"{kind}: {base.get('prompt', '')[:40]}",
            source=source,
            params=params,
        )
        final = runner.store.items(batch_id, [r.item_key for r in rows])
        by_id = runner.store.entries([r.generation_id for r in final if r.generation_id])
        entries = {r.item_key: by_id.get(r.generation_id or "") for r in final}
        return _write_grid(
            runner.store,
            batch_id,
            summary,
            axes,
            final,
            entries,
            out,
            params.get("naming") or DEFAULT_NAMING,
        )


def _write_grid(
    store: BatchStore,
    batch_id: str,
    summary: BatchSummary,
    axes: list[Axis],
    rows: list[Any],
    entries: dict[str, LogEntry | None],
    out: Path,
    naming: str,
) -> GridResult:
    x, y, z = axes
    done = [e for e in (entries.get(r.item_key) for r in rows) if e is not None]
    files = export_entries(done, out / "images", naming)
    path_of = {f.entry.id: f.path for f in files if f.image_index == 0}
    cells: list[dict[str, Any]] = []
    for row in rows:
        entry = entries.get(row.item_key)
        path = path_of.get(entry.id) if entry else None
        cells.append({
            "x": row.labels.get("x"), "y": row.labels.get("y"), "z": row.labels.get("z"),
            "status": row.status, "generation_id": entry.id if entry else None,
            "file": str(path) if path else None, "prompt": row.request.get("prompt"),
            "params": row.request, "cost_usd": entry.cost_usd if entry else None,
            "error": row.error_message, "scores": _quality_scores(path) if path else {},
        })  # fmt: skip
    sheets = []
    for zi, (zl, _) in enumerate(z.entries):
        grid_cells = [
            [_sheet_cell(cells, xl, yl, zl) for xl, _ in x.entries] for yl, _ in y.entries
        ]
        title = " x ".join(a.name for a in (x, y) if a.name) + (
            f" - {z.name}={zl}" if z.name else ""
        )
        sheet = contact_sheet(
            grid_cells,
            row_labels=[yl for yl, _ in y.entries],
            col_labels=[xl for xl, _ in x.entries],
            title=title,
        )
        target = out / (
            "contact_sheet.png" if len(z.entries) == 1 else f"contact_sheet_{zi + 1}.png"
        )
        sheet.save(target)
        sheets.append(target)
    report = out / "report.html"
    report.write_text(_report_html(batch_id, summary, axes, cells, sheets, out))
    extra = {
        c["generation_id"]: {"x": c["x"], "y": c["y"], "z": c["z"], "scores": c["scores"]}
        for c in cells
        if c["generation_id"]
    }
    write_manifest(out, manifest_rows(done, files, extra), summary.to_dict())
    return GridResult(batch_id, summary, out, sheets, report, cells)


def _sheet_cell(cells: list[dict[str, Any]], xl: str, yl: str, zl: str) -> GridCell:
    for c in cells:
        if (c["x"], c["y"], c["z"]) == (xl, yl, zl):
            caption = f"${c['cost_usd']:.3f}" if c["cost_usd"] is not None else c["status"]
            return GridCell(Path(c["file"]) if c["file"] else None, caption)
    return GridCell(None, "missing")


def _report_html(
    batch_id: str,
    summary: BatchSummary,
    axes: list[Axis],
    cells: list[dict[str, Any]],
    sheets: list[Path],
    out: Path,
) -> str:
    esc = html.escape
    x, y, z = axes
    parts = [
        "<!doctype html><meta charset='utf-8'><title>limner report</title>",
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:6px;vertical-align:top}"
        "img{max-width:256px}pre{font-size:11px;white-space:pre-wrap;max-width:256px}.err{color:#b00}</style>",
        f"<h1>{esc(batch_id)}</h1><p>{summary.done}/{summary.total} done, {summary.failed} failed, "
        f"${summary.cost_usd:.4f}. Record a winner: <code>limner ab pick GENERATION_ID</code></p>",
    ]  # fmt: skip
    for sheet in sheets:
        parts.append(
            f"<p><img style='max-width:100%' src='{esc(sheet.relative_to(out).as_posix())}'></p>"
        )
    for zl, _ in z.entries:
        if z.name:
            parts.append(f"<h2>{esc(z.name)} = {esc(zl)}</h2>")
        parts.append(
            "<table><tr><th></th>" + "".join(f"<th>{esc(xl)}</th>" for xl, _ in x.entries) + "</tr>"
        )
        for yl, _ in y.entries:
            parts.append(f"<tr><th>{esc(yl)}</th>")
            for xl, _ in x.entries:
                parts.append(
                    "<td>"
                    + _cell_html(
                        next((c for c in cells if (c["x"], c["y"], c["z"]) == (xl, yl, zl)), None),
                        out,
                    )
                    + "</td>"
                )
            parts.append("</tr>")
        parts.append("</table>")
    return "\n".join(parts)


def _cell_html(cell: dict[str, Any] | None, out: Path) -> str:
    esc = html.escape
    if cell is None:
        return "missing"
    if not cell["file"]:
        return f"<span class='err'>{esc(cell['status'])}: {esc(cell['error'] or '')}</span>"
    src = Path(cell["file"]).relative_to(out).as_posix()
    cost = "—" if cell["cost_usd"] is None else f"${cell['cost_usd']:.4f}"
    return (
        f"<img src='{esc(src)}'><br><code>{esc(cell['generation_id'])}</code><br>cost {cost}"
        f"<pre>{esc(json.dumps(cell['params'], indent=1))}</pre>"
        f"<pre>scores {esc(json.dumps(cell['scores']))}</pre>"
    )


def export_project_files(
    name: str,
    directory: Path,
    *,
    naming: str | None = None,
    tags: list[str] | None = None,
    sheet: bool = True,
) -> dict[str, Any]:
    """A project's images under template names, its manifest (JSON + CSV) and a contact sheet."""
    from limner.store import Store

    store = Store()
    try:
        entries = store.search(None, limit=None, project=name, status="ok")
        known = (
            None
            if entries
            else sorted({e.project for e in store.search(None, limit=500) if e.project})
        )
    finally:
        store.close()
    if tags:
        entries = [e for e in entries if set(tags) <= set(e.tags or [])]
    if not entries:
        hint = (
            f"Projects in the log: {', '.join(known)}."
            if known
            else "Tag generations with --project NAME first."
        )
        raise errors.UserError(
            f"No generations in project {name!r}" + (f" with tags {tags}" if tags else "") + ".",
            hint=hint,
        )
    entries.sort(key=lambda e: (e.created_at, e.id))
    files = export_entries(entries, directory, naming or DEFAULT_NAMING)
    paths = write_manifest(directory, manifest_rows(entries, files))
    result: dict[str, Any] = {
        "project": name,
        "images": len(files),
        "dir": str(directory),
        **{k: str(v) for k, v in paths.items()},
    }
    if sheet and files:
        target = directory / "contact_sheet.png"
        simple_sheet(
            [f.path for f in files], [f.path.stem[-24:] for f in files], f"project {name}"
        ).save(target)
        result["contact_sheet"] = str(target)
    return result
