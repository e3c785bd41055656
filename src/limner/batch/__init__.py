"""Production workflows: batches (resumable, rate-limited), A/B tests and grids, project exports,
and scale-out on a Ray cluster.

    from limner.batch import BatchOptions, BatchRunner, parse_batch_file
    parsed = parse_batch_file(Path("prompts.txt"), {"model": "openai:gpt-image-2"})
    with BatchRunner(BatchOptions(concurrency=4, rpm=60)) as runner:
        rows = runner.plan_items(parsed.lines)
        summary = runner.run(batch_id_for("batch", "prompts"), rows)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from limner.batch.inputs import BatchInputError, BatchLine, parse_batch_file, parse_batch_text
from limner.batch.manifest import DEFAULT_NAMING, export_entries, manifest_rows, write_manifest
from limner.batch.runner import BatchOptions, BatchRunner, BatchSummary, ItemOutcome, batch_id_for
from limner.batch.state import BatchStore, ItemRow
from limner.store import LogEntry

__all__ = [
    "BatchInputError",
    "BatchLine",
    "BatchOptions",
    "BatchRunner",
    "BatchStore",
    "BatchSummary",
    "ItemOutcome",
    "batch_id_for",
    "parse_batch_file",
    "parse_batch_text",
    "write_batch_outputs",
]


def write_batch_outputs(
    store: BatchStore,
    rows: list[ItemRow],
    out_dir: Path,
    summary: BatchSummary,
    naming: str = DEFAULT_NAMING,
) -> dict[str, Path]:
    """Images under template names, the manifest (JSON + CSV, failed items included with their
    reason) and ``summary.json``."""
    entries: list[LogEntry] = []
    extra: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, Any]] = []
    by_id = store.entries([r.generation_id for r in rows if r.status == "done" and r.generation_id])
    for row in rows:
        entry = by_id.get(row.generation_id or "") if row.status == "done" else None
        if entry is None:
            failures.append({
                "index": row.idx, "status": row.status, "model": row.request.get("model"),
                "prompt": row.request.get("prompt", ""), "params": row.request, "line": row.line,
                "error": f"{row.error_type}: {row.error_message}" if row.error_type else row.error_message,
            })  # fmt: skip
            continue
        entries.append(entry)
        extra[entry.id] = {
            "index": row.idx,
            "line": row.line,
            "status": "done",
            **({"labels": row.labels} if row.labels else {}),
        }
    files = export_entries(entries, out_dir, naming)
    manifest = manifest_rows(entries, files, extra) + failures
    manifest.sort(key=lambda r: (r["index"], r.get("file") or ""))
    return write_manifest(out_dir, manifest, summary.to_dict())
