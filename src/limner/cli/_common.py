"""Options and output helpers shared by the commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(fn)


def dry_run_option(fn: F) -> F:
    return click.option(
        "--dry-run",
        is_flag=True,
        help="Print the provider-native request (or the local step) and its estimated cost; send"
        " nothing.",
    )(fn)


def parse_key_values(pairs: tuple[str, ...] | list[str], flag: str = "--option") -> dict[str, Any]:
    """``KEY=VALUE`` pairs from repeated options; VALUE is JSON where it parses, else a string."""
    from limner.errors import InvalidRequestError

    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidRequestError(
                f"{flag} {pair!r} is not KEY=VALUE.", param="provider_options"
            )
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def result_payload(result: Any, saved: list[Path]) -> dict[str, Any]:
    return {
        "generation_id": result.generation_id,
        "model": result.model,
        "provider": result.provider,
        "operation": result.operation.value,
        "cost_usd": result.cost_usd,
        "cache_hit": result.cache_hit,
        "warnings": result.warnings,
        "request_id": result.request_id,
        "timings": result.timings,
        "usage": result.usage.model_dump(exclude_none=True, exclude={"raw"}),
        "images": [
            {
                "path": str(path),
                "stored": str(img.path) if img.path else None,
                "sha256": img.sha256,
                "width": img.width,
                "height": img.height,
                "media_type": img.media_type,
                "seed": img.seed,
                "revised_prompt": img.revised_prompt,
            }
            for img, path in zip(result.images, saved, strict=True)
        ],
    }
