"""Reading a batch file: JSONL (a request per line), CSV (columns are parameters) or plain text
(a prompt per line, or a template with ``{a|b}`` alternatives and wildcards).

Malformed lines are collected with their line numbers (the caller reports them and goes on, or
stops under ``--strict``); problems with the file as a whole (empty, an unknown CSV column) raise
``BatchInputError`` at once.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from limner import errors
from limner.types import ImageRequest

__all__ = [
    "BatchInputError",
    "BatchLine",
    "LineProblem",
    "ParsedBatch",
    "expand_template",
    "parse_batch_file",
    "parse_batch_text",
]

# Fields a batch line may set: everything but binary inputs (images, masks, references).
REQUEST_FIELDS = frozenset(ImageRequest.model_fields) - {"images", "mask", "references"}
DEFAULT_MAX_EXPANSIONS = 1000
_ALTERNATIVES = re.compile(r"\{([^{}]*\|[^{}]*)\}")


class BatchInputError(errors.UserError):
    """The batch file cannot be used as a whole (empty, unknown column, unreadable)."""

    code = "invalid_batch_file"


@dataclass
class LineProblem:
    line: int
    message: str


@dataclass
class BatchLine:
    """One request from the file, with the line it came from and labels (e.g. a template's choice)."""

    line: int
    request: ImageRequest
    labels: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParsedBatch:
    fmt: str
    lines: list[BatchLine]
    problems: list[LineProblem]
    expansion_note: str | None = None


def _detect_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".txt", ".prompts", ".md"):
        return "text"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return "jsonl" if first.startswith("{") else "text"


def _request_from(values: dict[str, Any], defaults: dict[str, Any]) -> ImageRequest:
    merged = {**defaults, **{k: v for k, v in values.items() if v is not None}}
    if defaults.get("tags") and values.get("tags"):
        merged["tags"] = [
            *defaults["tags"],
            *[t for t in values["tags"] if t not in defaults["tags"]],
        ]
    return ImageRequest(**merged)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "request"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field {where!r}")
        else:
            parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _parse_jsonl(text: str, defaults: dict[str, Any]) -> tuple[list[BatchLine], list[LineProblem]]:
    lines: list[BatchLine] = []
    problems: list[LineProblem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            values = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(
                LineProblem(number, f"not valid JSON ({exc.msg} at column {exc.colno})")
            )
            continue
        if isinstance(values, str):
            values = {"prompt": values}
        if not isinstance(values, dict):
            problems.append(LineProblem(number, "expected a JSON object with request fields"))
            continue
        binary = sorted(set(values) & {"images", "mask", "references"})
        if binary:
            problems.append(LineProblem(number, f"field {binary[0]!r} is not supported in batches"))
            continue
        try:
            lines.append(BatchLine(number, _request_from(values, defaults)))
        except ValidationError as exc:
            problems.append(LineProblem(number, _validation_message(exc)))
    return lines, problems


def _csv_value(column: str, value: str) -> Any:
    value = value.strip()
    if value == "":
        return None
    if column == "tags":
        return [t.strip() for t in re.split(r"[;,]", value) if t.strip()]
    if column == "provider_options":
        return json.loads(value)
    return value


def _parse_csv(
    text: str, defaults: dict[str, Any], delimiter: str
) -> tuple[list[BatchLine], list[LineProblem]]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    columns = [c.strip() for c in (reader.fieldnames or []) if c is not None]
    if not columns:
        raise BatchInputError(
            "The CSV file has no header row.", hint="Add a header such as: prompt,size,seed"
        )
    unknown = [c for c in columns if c not in REQUEST_FIELDS]
    if unknown:
        raise BatchInputError(
            f"Unknown CSV column {unknown[0]!r}.",
            hint=f"Columns are request parameters: {', '.join(sorted(REQUEST_FIELDS))}.",
        )
    lines: list[BatchLine] = []
    problems: list[LineProblem] = []
    for row in reader:
        number = reader.line_num
        if None in row:
            problems.append(LineProblem(number, "more values than header columns"))
            continue
        if all((v or "").strip() == "" for v in row.values()):
            continue
        try:
            values = {k.strip(): _csv_value(k.strip(), v or "") for k, v in row.items()}
            lines.append(BatchLine(number, _request_from(values, defaults)))
        except json.JSONDecodeError as exc:
            problems.append(LineProblem(number, f"provider_options is not valid JSON ({exc.msg})"))
        except ValidationError as exc:
            problems.append(LineProblem(number, _validation_message(exc)))
    return lines, problems


def _local_expand(template: str) -> Iterable[str]:
    """``{a|b}`` alternatives, every combination, lazily (so a huge product is never built)."""
    parts = _ALTERNATIVES.split(template)
    literals, choices = parts[0::2], [[c.strip() for c in p.split("|")] for p in parts[1::2]]
    for combo in itertools.product(*choices):
        out = literals[0]
        for choice, literal in zip(combo, literals[1:], strict=True):
            out += choice + literal
        yield out.strip()


def _wildcard_expand(template: str, max_expansions: int) -> tuple[list[str], str | None]:
    """The prompt toolkit's expansion (alternatives and ``__name__`` wildcard files) when it is
    installed; otherwise ``{a|b}`` alternatives only, and a note saying so."""
    try:
        from limner.prompting.wildcards import WildcardError, expand
    except ImportError:
        prompts = list(itertools.islice(_local_expand(template), max_expansions + 1))
        if len(prompts) > max_expansions:
            raise ValueError(
                f"expands to more than {max_expansions} prompts (raise --max-expansions to allow it)"
            ) from None
        return prompts, "wildcard files not available: only {a|b} alternatives were expanded"
    try:
        return expand(template, max_count=max_expansions), None
    except WildcardError as exc:
        raise ValueError(str(exc)) from None


def expand_template(template: str, max_expansions: int = DEFAULT_MAX_EXPANSIONS) -> list[str]:
    """Expand one template; raise ``ValueError`` when it yields nothing or too many prompts."""
    prompts, _ = _wildcard_expand(template, max_expansions)
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise ValueError("expands to no prompt")
    return prompts


def _parse_text(
    text: str, defaults: dict[str, Any], max_expansions: int
) -> tuple[list[BatchLine], list[LineProblem]]:
    lines: list[BatchLine] = []
    problems: list[LineProblem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            prompts = (
                expand_template(stripped, max_expansions)
                if "{" in stripped or "__" in stripped
                else [stripped]
            )
        except ValueError as exc:
            problems.append(LineProblem(number, f"template {stripped[:60]!r}: {exc}"))
            continue
        for prompt in prompts:
            try:
                labels = {"template": stripped} if prompt != stripped else {}
                lines.append(BatchLine(number, _request_from({"prompt": prompt}, defaults), labels))
            except ValidationError as exc:
                problems.append(LineProblem(number, _validation_message(exc)))
    return lines, problems


def parse_batch_text(
    text: str,
    fmt: str,
    defaults: dict[str, Any] | None = None,
    *,
    max_expansions: int = DEFAULT_MAX_EXPANSIONS,
) -> ParsedBatch:
    defaults = {k: v for k, v in (defaults or {}).items() if v not in (None, [], {})}
    if fmt == "jsonl":
        lines, problems = _parse_jsonl(text, defaults)
    elif fmt in ("csv", "tsv"):
        lines, problems = _parse_csv(text, defaults, "\t" if fmt == "tsv" else ",")
    else:
        lines, problems = _parse_text(text, defaults, max_expansions)
    note = None
    if fmt == "text" and any(b.labels for b in lines):
        note = _wildcard_expand("x", 1)[1]
    return ParsedBatch(fmt, lines, problems, note)


def parse_batch_file(
    path: Path,
    defaults: dict[str, Any] | None = None,
    *,
    max_expansions: int = DEFAULT_MAX_EXPANSIONS,
) -> ParsedBatch:
    """Read and parse a batch file; raise ``BatchInputError`` when there is nothing to read."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BatchInputError(f"Batch file {str(path)!r} does not exist.") from None
    except UnicodeDecodeError:
        raise BatchInputError(f"Batch file {str(path)!r} is not UTF-8 text.") from None
    if not text.strip():
        raise BatchInputError(
            f"Batch file {str(path)!r} is empty.",
            hint="Write one prompt per line, a JSON request per line (.jsonl) or a CSV with a header.",
        )
    fmt = _detect_format(path, text)
    if fmt == "csv" and path.suffix.lower() == ".tsv":
        fmt = "tsv"
    return parse_batch_text(text, fmt, defaults, max_expansions=max_expansions)
