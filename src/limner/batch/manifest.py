"""Manifests, file naming and contact sheets for batches, grids and project exports.

The manifest has one row per image (or per failed item): model, prompt, revised prompt, file,
parameters, time and cost, as JSON and CSV. Files are named from a template; the default is
``{model}_{prompthash}_{timestamp}``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from limner import errors
from limner.store import LogEntry

__all__ = [
    "DEFAULT_NAMING",
    "GridCell",
    "contact_sheet",
    "export_entries",
    "render_name",
    "write_manifest",
]

DEFAULT_NAMING = "{model}_{prompthash}_{timestamp}"
NAMING_FIELDS = (
    "model",
    "provider",
    "prompthash",
    "timestamp",
    "seed",
    "index",
    "id",
    "project",
    "n",
)
MANIFEST_COLUMNS = (
    "index", "status", "model", "prompt", "revised_prompt", "file", "seed", "params", "time",
    "cost_usd", "generation_id", "tags", "project", "line", "error",
)  # fmt: skip


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def check_naming(template: str) -> None:
    try:
        fields = {f for _, f, _, _ in __import__("string").Formatter().parse(template) if f}
    except ValueError as exc:
        raise errors.UserError(f"Bad naming template {template!r}: {exc}.") from None
    unknown = sorted(fields - set(NAMING_FIELDS))
    if unknown:
        raise errors.UserError(
            f"Unknown field {{{unknown[0]}}} in naming template {template!r}.",
            hint=f"Fields: {', '.join('{' + f + '}' for f in NAMING_FIELDS)}.",
        )


def render_name(template: str, entry: LogEntry, index: int, n: int) -> str:
    """A file stem from the template (without extension), safe on every file system."""
    seed = entry.images[n].seed if n < len(entry.images) else None
    values = {
        "model": _slug(entry.model.split(":", 1)[-1]),
        "provider": _slug(entry.provider),
        "prompthash": hashlib.md5(entry.prompt.encode(), usedforsecurity=False).hexdigest()[:8],
        "timestamp": datetime.fromtimestamp(entry.created_at, UTC).strftime("%Y%m%d_%H%M%S"),
        "seed": "" if seed is None else str(seed),
        "index": f"{index:04d}",
        "id": entry.id,
        "project": _slug(entry.project or ""),
        "n": str(n),
    }
    return _slug(template.format(**values))


@dataclass
class ExportedFile:
    entry: LogEntry
    image_index: int
    path: Path


def export_entries(
    entries: Sequence[LogEntry], out_dir: Path, naming: str = DEFAULT_NAMING
) -> list[ExportedFile]:
    """Copy each entry's images into ``out_dir`` under template names (unique: ``_2``...)."""
    check_naming(naming)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    files: list[ExportedFile] = []
    for index, entry in enumerate(entries):
        for n, image in enumerate(entry.images):
            stem = render_name(naming, entry, index, n)
            ext = image.path.suffix
            name, k = f"{stem}{ext}", 2
            while name in used:
                name, k = f"{stem}_{k}{ext}", k + 1
            used.add(name)
            target = out_dir / name
            if image.path.exists():
                shutil.copyfile(image.path, target)
                files.append(ExportedFile(entry, n, target))
    return files


def manifest_rows(
    entries: Sequence[LogEntry],
    files: Sequence[ExportedFile],
    extra: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    by_entry: dict[str, list[ExportedFile]] = {}
    for f in files:
        by_entry.setdefault(f.entry.id, []).append(f)
    rows = []
    for index, entry in enumerate(entries):
        base = {
            "index": index, "status": entry.status, "model": entry.model, "prompt": entry.prompt,
            "params": entry.params, "time": datetime.fromtimestamp(entry.created_at, UTC).isoformat(),
            "cost_usd": entry.cost_usd, "generation_id": entry.id, "tags": entry.tags or [],
            "project": entry.project, **(extra or {}).get(entry.id, {}),
        }  # fmt: skip
        for f in by_entry.get(entry.id, []):
            image = entry.images[f.image_index]
            rows.append(
                {
                    **base,
                    "file": f.path.name,
                    "seed": image.seed,
                    "revised_prompt": image.revised_prompt,
                }
            )
    return rows


def write_manifest(
    out_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any] | None = None
) -> dict[str, Path]:
    """``manifest.json``, ``manifest.csv`` and (when given) ``summary.json`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "manifest.json", "csv": out_dir / "manifest.csv"}
    paths["json"].write_text(json.dumps(rows, indent=2, default=str))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        flat = {
            k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v
            for k, v in row.items()
        }
        writer.writerow(flat)
    paths["csv"].write_text(buf.getvalue())
    if summary is not None:
        paths["summary"] = out_dir / "summary.json"
        paths["summary"].write_text(json.dumps(summary, indent=2, default=str))
    return paths


@dataclass
class GridCell:
    path: Path | None
    caption: str = ""


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


def contact_sheet(
    cells: list[list[GridCell]],
    *,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    title: str = "",
    thumb: int = 192,
) -> Any:
    """A sheet of thumbnails: labelled columns (x) and rows (y), a caption under each cell."""
    from PIL import Image, ImageDraw

    rows, cols = len(cells), max((len(r) for r in cells), default=0)
    font, small = _font(14), _font(11)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest = max((measure.textlength(label[:48], font=font) for label in row_labels), default=0)
    left = min(int(widest) + 16, 360) if row_labels else 8
    top = (28 if title else 4) + (24 if col_labels else 0)
    caption_h = 16 if any(c.caption for r in cells for c in r) else 0
    cell_w, cell_h = thumb + 8, thumb + 8 + caption_h
    sheet = Image.new("RGB", (left + cols * cell_w + 8, top + rows * cell_h + 8), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((8, 6), title[:120], fill="black", font=font)
    for c, label in enumerate(col_labels):
        draw.text((left + c * cell_w + 4, top - 20), label[:28], fill="black", font=font)
    for r, row in enumerate(cells):
        y = top + r * cell_h
        if r < len(row_labels):
            draw.text((6, y + thumb // 2), row_labels[r][:48], fill="black", font=font)
        for c, cell in enumerate(row):
            x = left + c * cell_w
            _paste_thumb(sheet, draw, cell, (x + 4, y + 4), thumb)
            if cell.caption:
                draw.text((x + 4, y + thumb + 8), cell.caption[:32], fill="dimgray", font=small)
    return sheet


def _paste_thumb(sheet: Any, draw: Any, cell: GridCell, at: tuple[int, int], thumb: int) -> None:
    from PIL import Image

    x, y = at
    if cell.path is None or not cell.path.exists():
        draw.rectangle([x, y, x + thumb, y + thumb], outline="red", width=2)
        draw.line([x, y, x + thumb, y + thumb], fill="red", width=2)
        return
    with Image.open(cell.path) as img:
        rgb = img.convert("RGB")
    rgb.thumbnail((thumb, thumb))
    sheet.paste(rgb, (x + (thumb - rgb.width) // 2, y + (thumb - rgb.height) // 2))


def simple_sheet(
    files: Sequence[Path], captions: Sequence[str], title: str, per_row: int = 6
) -> Any:
    """A contact sheet without axes: thumbnails in reading order with captions."""
    cells: list[list[GridCell]] = []
    for i, path in enumerate(files):
        if i % per_row == 0:
            cells.append([])
        cells[-1].append(GridCell(path, captions[i] if i < len(captions) else ""))
    return contact_sheet(cells or [[]], title=title)
