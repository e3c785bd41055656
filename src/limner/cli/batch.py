"""``limner batch``, ``limner ab``, ``limner grid`` and ``limner export project``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from limner.cli._common import dry_run_option, emit_json, json_option

__all__ = ["ab", "batch", "export_project", "grid"]


def _nothing_to_run(message: str, hint: str | None = None) -> Any:
    from limner.errors import UserError

    return UserError(message, hint=hint)


@contextmanager
def _progress(
    enabled: bool, title: str
) -> Iterator[tuple[Callable[[int, int], None], Callable[[Any], None]]]:
    """A rich progress bar (done, failed, ETA, running cost) on stderr, or one line per failure."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"), TextColumn("${task.fields[cost]:.4f}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, disable=not enabled, transient=False,
    )  # fmt: skip
    tally = {"failed": 0, "cost": 0.0}
    tasks: list[TaskID] = []

    def on_start(total: int, done: int) -> None:
        tasks.append(progress.add_task(title, total=total, completed=done, failed=0, cost=0.0))

    def on_item(outcome: Any) -> None:
        if outcome.status == "skipped":
            return
        if outcome.status == "failed":
            tally["failed"] += 1
            console.print(
                f"[red]failed[/red] {outcome.item_key[:12]}: {outcome.error}", highlight=False
            )
        tally["cost"] += outcome.cost_usd or 0.0
        if tasks:
            # The bar counts settled items; the failed column says how many of them failed.
            progress.update(tasks[0], advance=1, failed=tally["failed"], cost=tally["cost"])

    with progress:
        yield on_start, on_item


def _report_problems(problems: list[Any], strict: bool, source: str) -> None:
    from limner.batch import BatchInputError

    for problem in problems:
        click.secho(f"{source}:{problem.line}: {problem.message}", fg="yellow", err=True)
    if problems and strict:
        first = problems[0]
        raise BatchInputError(
            f"{len(problems)} malformed line(s) in {source}; the first is line {first.line}: {first.message}.",
            hint="Fix the lines, or run without --strict to skip them and go on.",
        )


def _print_summary(summary: Any, out_dir: Path | None) -> None:
    line = (
        f"{summary.done}/{summary.total} done, {summary.failed} failed"
        + (f", {summary.uncertain} uncertain" if summary.uncertain else "")
        + (f", {summary.malformed} malformed line(s) skipped" if summary.malformed else "")
        + (f", {summary.skipped_done} already done" if summary.skipped_done else "")
        + (f", {summary.resumed} resumed after a crash" if summary.resumed else "")
        + f", ${summary.cost_usd:.4f}, {summary.wall_s:.1f}s"
        + (f", {summary.rate_limited} rate-limited responses" if summary.rate_limited else "")
    )
    click.echo(line, err=True)
    for p in summary.problems:
        where = f"line {p['line']}" if p.get("line") else p["item"][:12]
        click.echo(f"  {p['status']}: {where} {p['prompt'][:50]!r}: {p['error']}", err=True)
    if out_dir:
        click.echo(f"Manifest: {out_dir / 'manifest.json'}", err=True)


def _run_options(fn: Any) -> Any:
    options = [
        click.option("--concurrency", type=click.IntRange(1, 256), default=4, show_default=True, help="Requests in flight per provider."),
        click.option("--rpm", type=click.FloatRange(min=0.1), help="Requests per minute per provider (default: follow the provider's headers)."),
        click.option("--uncertain", type=click.Choice(["resubmit", "park"]), default="resubmit", show_default=True,
                     help="After a crash, resend items whose request was in flight, or park them for review."),
        click.option("--retry-uncertain", is_flag=True, help="Resend items parked as uncertain."),
        click.option("--no-cache", is_flag=True, help="Always call the provider, even for seeded requests seen before."),
        click.option("--naming", default=None, help="File name template (default {model}_{prompthash}_{timestamp})."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
        dry_run_option,
        json_option,
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def _options(params: dict[str, Any]) -> Any:
    from limner.batch import BatchOptions

    return BatchOptions(
        concurrency=params["concurrency"], rpm=params["rpm"], uncertain=params["uncertain"],
        retry_uncertain=params["retry_uncertain"], use_cache=not params["no_cache"],
    )  # fmt: skip


def _dry_run(runner: Any, batch_id: str, rows: list[Any], as_json: bool) -> None:
    """The items a run would send (those not already done) and their estimated cost."""
    from collections import Counter

    from limner.pricing import estimate_cost
    from limner.types import ImageRequest

    done = {r.item_key for r in runner.store.items(batch_id) if r.status == "done"}
    to_send = [r for r in rows if r.status == "pending" and r.item_key not in done]
    by_model: Counter[str] = Counter()
    total, unpriced = 0.0, 0
    for row in to_send:
        request = ImageRequest(**row.request)
        spec = runner.client.resolve(request.model)
        by_model[spec.ref] += 1
        cost = estimate_cost(spec, request)
        if cost is None:
            unpriced += 1
        else:
            total += cost
    payload = {
        "items": len(rows), "would_send": len(to_send), "already_done": len(done & {r.item_key for r in rows}),
        "refused": sum(r.status == "failed" for r in rows), "by_model": dict(by_model),
        "estimated_cost_usd": round(total, 6), "unpriced_items": unpriced,
    }  # fmt: skip
    if as_json:
        emit_json(payload)
        return
    click.echo(f"Would send {len(to_send)} of {len(rows)} item(s); nothing sent.")
    for model, count in by_model.most_common():
        click.echo(f"  {model}: {count}")
    note = f" ({unpriced} without a list price)" if unpriced else ""
    click.echo(f"Estimated cost: ${total:.4f}{note}")


def execute(
    runner: Any,
    batch_id: str,
    rows: list[Any],
    *,
    kind: str,
    name: str,
    source: str | None,
    params: dict[str, Any],
    executor: Any = None,
) -> Any:
    """Run the planned rows with a progress bar; exit 2 when not one item can run."""
    if not any(r.status == "pending" for r in rows):
        reasons = sorted({r.error_message or "" for r in rows})[:3]
        raise _nothing_to_run(
            f"Nothing in {name} can run: every request was refused before sending.",
            hint="; ".join(reasons) or None,
        )
    if params.get("dry_run"):
        _dry_run(runner, batch_id, rows, params["as_json"])
        sys.exit(0)
    show = not params["no_progress"] and not params["as_json"] and sys.stderr.isatty()
    with _progress(show, name) as (on_start, on_item):
        return runner.run(
            batch_id,
            rows,
            kind=kind,
            name=name,
            source=source,
            on_start=on_start,
            on_item=on_item,
            executor=executor,
        )


@click.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-m", "--model", help="Model for lines that name none.")
@click.option("--size", help="Size for lines that set none.")
@click.option("--quality", help="Quality for lines that set none.")
@click.option("--project", help="Project for every generation.")
@click.option("--tag", "tags", multiple=True, help="Tag for every generation; repeatable.")
@click.option(
    "--strict",
    is_flag=True,
    help="Stop (exit 2) at the first malformed line instead of skipping it.",
)
@click.option(
    "--name", help="Batch name (default: the file's path); the same name resumes the same batch."
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for images and manifest (default: FILE's name + _out).",
)
@click.option(
    "--max-expansions",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Most prompts one template may expand to.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="auto",
    default=None,
    metavar="[ADDRESS]",
    help="Run on a Ray cluster (ADDRESS, or 'auto'/'local').",
)
@_run_options
def batch(
    file: Path,
    model: str | None,
    size: str | None,
    quality: str | None,
    project: str | None,
    tags: tuple[str, ...],
    strict: bool,
    name: str | None,
    out_dir: Path | None,
    max_expansions: int,
    ray_address: str | None,
    **params: Any,
) -> None:
    """Run every request in FILE: JSONL (a request per line), CSV (columns are parameters) or
    text (a prompt or a {a|b} / __wildcard__ template per line). Re-running resumes."""
    from limner.batch import BatchRunner, batch_id_for, parse_batch_file, write_batch_outputs
    from limner.batch.manifest import DEFAULT_NAMING, check_naming

    naming = params["naming"] or DEFAULT_NAMING
    check_naming(naming)
    defaults = {
        "model": model,
        "size": size,
        "quality": quality,
        "project": project,
        "tags": list(tags),
    }
    parsed = parse_batch_file(file, defaults, max_expansions=max_expansions)
    _report_problems(parsed.problems, strict, str(file))
    if parsed.expansion_note:
        click.secho(f"Note: {parsed.expansion_note}.", fg="yellow", err=True)
    if not parsed.lines:
        raise _nothing_to_run(
            f"No usable request in {file}: {len(parsed.problems)} malformed line(s).",
            hint="Fix the lines reported above.",
        )
    batch_name = name or file.name
    batch_id = batch_id_for("batch", batch_name, None if name else str(file.resolve()))
    executor = None
    if ray_address:
        from limner.batch.ray_backend import ray_executor

        executor = ray_executor(ray_address)
    with BatchRunner(_options(params)) as runner:
        rows = runner.plan_items(parsed.lines)
        summary = execute(
            runner,
            batch_id,
            rows,
            kind="batch",
            name=batch_name,
            source=str(file.resolve()),
            params=params,
            executor=executor,
        )
        out = out_dir or file.with_name(file.stem + "_out")
        final = runner.store.items(batch_id, [r.item_key for r in rows])
        # Lines that never became items are part of the outcome too.
        summary.problems += [
            {"line": p.line, "item": "", "prompt": "", "status": "malformed", "error": p.message}
            for p in parsed.problems
        ]
        summary.malformed = len(parsed.problems)
        write_batch_outputs(runner.store, final, out, summary, naming)
    if params["as_json"]:
        emit_json({**summary.to_dict(), "out_dir": str(out)})
    else:
        _print_summary(summary, out)
    if summary.done < summary.total or summary.malformed:
        sys.exit(1)


def _emit_grid(result: Any, as_json: bool) -> None:
    if as_json:
        emit_json(result.to_dict())
    else:
        _print_summary(result.summary, None)
        click.echo(f"Contact sheet: {', '.join(str(p) for p in result.sheets)}")
        click.echo(f"Report: {result.report}")
        click.echo("Pick a winner: limner ab pick GENERATION_ID")
    if result.summary.done < result.summary.total:
        sys.exit(1)


class _AbCommand(click.Command):
    """``limner ab PROMPT ...`` runs a test; ``limner ab pick ID`` records its winner."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args[:1] == ["pick"]:
            ctx.meta["limner_ab_pick"] = True
            return pick.parse_args(ctx, args[1:])
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.meta.get("limner_ab_pick"):
            return ctx.invoke(pick.callback or (lambda **_: None), **ctx.params)
        return super().invoke(ctx)


@click.command()
@click.argument("generation_id")
@json_option
def pick(generation_id: str, as_json: bool) -> None:
    """Record GENERATION_ID as the winner of its A/B test or grid."""
    from limner.batch.state import BatchStore

    store = BatchStore()
    try:
        batch_id, gen_id = store.set_winner(generation_id)
    finally:
        store.close()
    if as_json:
        emit_json({"batch_id": batch_id, "winner": gen_id})
    else:
        click.echo(f"Winner of {batch_id}: {gen_id}")


@click.command(cls=_AbCommand)
@click.argument("prompt", required=False)
@click.option(
    "--variant",
    "variants",
    multiple=True,
    help="Text appended to the prompt (', VARIANT'); repeatable.",
)
@click.option("-m", "--model", "models", multiple=True, help="Model to compare; repeatable.")
@click.option(
    "--seeds",
    type=click.IntRange(1, 100),
    default=1,
    show_default=True,
    help="Seeds per variant and model (1, 2, ...).",
)
@click.option("--size", help="Size for every image.")
@click.option("--project", help="Project for every generation.")
@click.option("--tag", "tags", multiple=True, help="Tag for every generation; repeatable.")
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the sheet, report and images.",
)
@_run_options
def ab(
    prompt: str | None,
    variants: tuple[str, ...],
    models: tuple[str, ...],
    seeds: int,
    size: str | None,
    project: str | None,
    tags: tuple[str, ...],
    out_dir: Path | None,
    **params: Any,
) -> None:
    """Compare prompt variants across models and seeds: contact sheet and HTML report.

    `limner ab pick GENERATION_ID` records the winner."""
    from limner.batch.workflows import ab_axes, run_grid

    if prompt is None:
        raise click.UsageError("Give a PROMPT (or `limner ab pick GENERATION_ID`).")
    axes, base = ab_axes(
        prompt, list(variants), list(models), seeds, size=size, project=project, tags=list(tags)
    )
    result = run_grid("ab", base, axes, out_dir, _options(params), params, execute)
    _emit_grid(result, params["as_json"])


@click.command()
@click.argument("prompt")
@click.option("--x", "x_axis", help="PARAM=v1,v2,... across (e.g. model=a,b).")
@click.option("--y", "y_axis", help="PARAM=v1,v2,... down (e.g. style=vivid,natural).")
@click.option("--z", "z_axis", help="PARAM=v1,v2,... one sheet per value (e.g. seed=1,2).")
@click.option("-m", "--model", help="Model when no axis sets one.")
@click.option("--size", help="Size for every image.")
@click.option("--seed", type=int, help="Seed when no axis sets one.")
@click.option("--project", help="Project for every generation.")
@click.option("--tag", "tags", multiple=True, help="Tag for every generation; repeatable.")
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the sheet, report and images.",
)
@_run_options
def grid(
    prompt: str,
    x_axis: str | None,
    y_axis: str | None,
    z_axis: str | None,
    model: str | None,
    size: str | None,
    seed: int | None,
    project: str | None,
    tags: tuple[str, ...],
    out_dir: Path | None,
    **params: Any,
) -> None:
    """An X/Y/Z grid over any parameters: a contact sheet with labelled axes and an HTML report."""
    from limner.batch.workflows import grid_axes, run_grid

    axes, base = grid_axes(
        prompt,
        x_axis,
        y_axis,
        z_axis,
        model=model,
        size=size,
        seed=seed,
        project=project,
        tags=list(tags),
    )
    result = run_grid("grid", base, axes, out_dir, _options(params), params, execute)
    _emit_grid(result, params["as_json"])


@click.command("project")
@click.argument("name")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--naming", default=None, help="File name template (default {model}_{prompthash}_{timestamp})."
)
@click.option("--tag", "tags", multiple=True, help="Only generations with this tag; repeatable.")
@click.option("--no-sheet", is_flag=True, help="Write no contact sheet.")
@json_option
def export_project(
    name: str,
    directory: Path,
    naming: str | None,
    tags: tuple[str, ...],
    no_sheet: bool,
    as_json: bool,
) -> None:
    """Write project NAME's images (named from a template), its manifest and a contact sheet to DIRECTORY."""
    from limner.batch.workflows import export_project_files

    written = export_project_files(
        name, directory, naming=naming, tags=list(tags), sheet=not no_sheet
    )
    if as_json:
        emit_json(written)
    else:
        click.echo(f"Exported {written['images']} image(s) of project {name!r} to {directory}")
