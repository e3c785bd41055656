"""``limner generate``, ``limner edit`` and ``limner variations``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from limner.cli._common import (
    dry_run_option,
    emit_json,
    json_option,
    parse_key_values,
    result_payload,
)

F = TypeVar("F", bound=Callable[..., Any])


def _request_options(fn: F) -> F:
    options = [
        click.option("-m", "--model", help="provider:model or alias (see `limner models`)."),
        click.option("-n", "n", type=int, default=1, show_default=True, help="Number of images."),
        click.option("--size", help="WIDTHxHEIGHT, or auto."),
        click.option("--aspect-ratio", "--ar", "aspect_ratio", help="W:H, for models that take ratios."),
        click.option("--seed", type=int, help="Seed (also makes the request cacheable)."),
        click.option("--quality", help="Quality level the model offers (low, medium, high, hd...)."),
        click.option("--style", help="Style the model offers (e.g. vivid, natural)."),
        click.option("--negative", "negative_prompt", help="What to keep out of the image."),
        click.option("--format", "output_format", type=click.Choice(["png", "jpeg", "webp"])),
        click.option("--background", type=click.Choice(["transparent", "opaque", "auto"])),
        click.option("--steps", type=int, help="Denoising steps (local and open models)."),
        click.option("--guidance", type=float, help="Guidance / CFG scale."),
        click.option("--strength", type=float, help="How far to move from the input image (0..1)."),
        click.option("--option", "provider_options", multiple=True, metavar="KEY=VALUE",
                     help="A provider-specific parameter; repeatable. VALUE is JSON or a string."),
        click.option("--tag", "tags", multiple=True, help="Tag for the log; repeatable."),
        click.option("--project", help="Project name for the log."),
        click.option("-o", "--output", "output", type=click.Path(path_type=Path), default=Path("."),
                     show_default=True, help="Folder (or file name for one image) to save to."),
        click.option("--no-cache", is_flag=True, help="Always call the provider."),
        click.option("--commercial", is_flag=True, help="Refuse models whose licence forbids commercial use."),
        click.option("--no-metadata", is_flag=True, help="Save images with no metadata: neither limner's nor the provider's."),
        dry_run_option,
        click.option("--timeout", type=float, help="Give up (and cancel the remote job) after this many seconds."),
        json_option,
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def _build(
    op: Any, prompt: str, images: list[Path], mask: Path | None, params: dict[str, Any]
) -> Any:
    from limner import build_request

    fields = {
        k: params[k]
        for k in ("n", "size", "aspect_ratio", "seed", "quality", "style", "negative_prompt",
                  "output_format", "background", "steps", "guidance", "strength", "project")
        if params.get(k) is not None
    }  # fmt: skip
    fields["provider_options"] = parse_key_values(params["provider_options"])
    fields["tags"] = list(params["tags"])
    return build_request(op, prompt, params["model"], list(images), mask, fields)


def _output_paths(result: Any, output: Path) -> list[Path]:
    images = result.images
    if len(images) == 1 and output.suffix:
        return [output]
    stem = (result.generation_id or "image")[-12:]
    return [output / f"{stem}-{i}.{img.extension}" for i, img in enumerate(images)]


def _dry_run(client: Any, op: Any, request: Any, as_json: bool) -> None:
    plan = client.plan(op, request)
    try:
        native = plan.provider.native_request(plan.op, plan.request, plan.spec)
    except NotImplementedError:
        native = {"note": f"{plan.spec.provider} does not describe its native request"}
    payload = {
        "model": plan.spec.ref,
        "operation": plan.op.value,
        "calls": len(plan.chunks),
        "request": native,
        "estimated_cost_usd": plan.estimated_cost,
        "warnings": plan.warnings,
    }
    if as_json:
        emit_json(payload)
        return
    click.echo(f"{plan.spec.ref} ({plan.op.value}), {len(plan.chunks)} call(s); nothing sent.")
    click.echo(json.dumps(native, indent=2, default=str))
    cost = "unknown" if plan.estimated_cost is None else f"${plan.estimated_cost:.4f}"
    click.echo(f"Estimated cost: {cost}")
    for warning in plan.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)


class _Status:
    """A spinner on stderr while a slow call runs; provider progress updates its text."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.status: Any = None

    def start(self, text: str) -> None:
        if self.enabled:
            from rich.console import Console

            self.status = Console(stderr=True).status(text)
            self.status.start()

    def update(self, fraction: float | None, message: str) -> None:
        if self.status is not None:
            pct = f"{fraction * 100:.0f}% " if fraction is not None else ""
            self.status.update(f"{pct}{message}")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()


def _run(
    op: Any, prompt: str, images: list[Path], mask: Path | None, params: dict[str, Any]
) -> None:
    import sys

    from limner.client import Limner

    as_json = params["as_json"]
    request = _build(op, prompt, images, mask, params)
    status = _Status(not as_json and sys.stderr.isatty())
    with Limner(
        embed_metadata=not params["no_metadata"],
        commercial=params["commercial"],
        deadline_s=params["timeout"],
        on_progress=status.update,
    ) as client:
        if params["dry_run"]:
            _dry_run(client, op, request, as_json)
            return
        status.start(f"Generating with {client.resolve(request.model).ref}...")
        try:
            gate = params.get("gate")
            if gate and gate[0] is not None:
                from limner.ops.gate import run_with_gate

                result = run_with_gate(client, op, request, gate[0], gate[1]).result
            else:
                result = client.run(op, request, use_cache=not params["no_cache"])
        finally:
            status.stop()
    paths = _output_paths(result, params["output"])
    for image, path in zip(result.images, paths, strict=True):
        image.save(path)
    if as_json:
        emit_json(result_payload(result, paths))
        return
    for warning in result.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    for path in paths:
        click.echo(str(path))
    cost = "unknown" if result.cost_usd is None else f"${result.cost_usd:.4f}"
    note = " (cache hit)" if result.cache_hit else ""
    click.echo(
        f"{len(paths)} image(s) from {result.model}, cost {cost}{note}, id {result.generation_id}",
        err=True,
    )


@click.command()
@click.argument("prompt")
@_request_options
@click.option("--require-text", help="Quality gate: retry until OCR finds this text in the image.")
@click.option("--min-size", help="Quality gate: retry until the image is at least WIDTHxHEIGHT.")
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 10),
    default=3,
    show_default=True,
    help="Attempts for the quality gate (new seed, else the next recommended model).",
)
def generate(
    prompt: str, require_text: str | None, min_size: str | None, max_attempts: int, **params: Any
) -> None:
    """Make images from PROMPT."""
    from limner.ops.gate import requested_checks
    from limner.types import Operation

    params["gate"] = (requested_checks(require_text, min_size), max_attempts)
    _run(Operation.GENERATE, prompt, [], None, params)


def split_images_and_prompt(args: tuple[str, ...]) -> tuple[list[Path], str]:
    """IMAGE... [PROMPT]: the last argument is the prompt unless it names an existing file, so
    actions that take no prompt (vectorize, remove a background, erase) can leave it out."""
    from limner import errors

    if Path(args[-1]).is_file():
        return [Path(a) for a in args], ""
    if len(args) == 1:
        raise errors.UserError(
            f"No image to edit: {args[0]!r} is not a file.",
            hint="Pass the image path first, then the prompt: limner edit IMAGE... PROMPT",
        )
    return [Path(a) for a in args[:-1]], args[-1]


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="IMAGE... [PROMPT]")
@click.option(
    "--mask",
    type=click.Path(path_type=Path),
    help="White (or transparent) marks the area to change.",
)
@_request_options
def edit(args: tuple[str, ...], mask: Path | None, **params: Any) -> None:
    """Edit IMAGE(s) as PROMPT says; with --mask, only the marked area.

    Actions that need no prompt (e.g. --option action=vectorize on Recraft) may leave PROMPT
    out; the last argument is read as the prompt unless it names an existing file."""
    from limner.types import Operation

    images, prompt = split_images_and_prompt(args)
    op = Operation.INPAINT if mask else Operation.EDIT
    _run(op, prompt, images, mask, params)


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@_request_options
def variations(image: Path, **params: Any) -> None:
    """Make variations of IMAGE."""
    from limner.types import Operation

    _run(Operation.VARIATION, "", [image], None, params)
