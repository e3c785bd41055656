"""``limner prompt``: build, look up, translate, expand and lint prompts."""

from __future__ import annotations

import json
from typing import Any

import click

from limner.cli._common import emit_json, json_option, parse_key_values


@click.group()
def prompt() -> None:
    """Structured prompts, keyword libraries, per-model translation, wildcards and lint."""


def _negative_presets(values: tuple[str, ...]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


_negative_preset_option = click.option(
    "--negative-preset", "negative_presets", multiple=True, metavar="NAME[,NAME]",
    help="Named negative prompt(s) to add (see `limner prompt keywords negative`); repeatable.",
)  # fmt: skip


@prompt.command()
@click.option("--subject", required=True, help="What the image is of.")
@click.option("--setting", default="", help="Where: the setting or environment.")
@click.option(
    "--style", default="", help="A style, or a preset name (see `limner prompt keywords presets`)."
)
@click.option("--lighting", default="", help="How it is lit.")
@click.option("--composition", default="", help="Framing, angle, depth.")
@click.option("--technical", default="", help="Quality, camera and lens terms.")
@click.option("--extra", multiple=True, help="More terms appended at the end; repeatable.")
@click.option("--negative", help="Your own negative terms.")
@_negative_preset_option
@json_option
def build(
    as_json: bool,
    negative_presets: tuple[str, ...],
    negative: str | None,
    extra: tuple[str, ...],
    **parts: str,
) -> None:
    """Join subject + setting + style + lighting + composition + technical into one prompt."""
    from limner.prompting import PromptParts, build_prompt

    built = build_prompt(
        PromptParts(**parts, extra=list(extra)),
        negative=negative,
        negative_presets=_negative_presets(negative_presets),
    )
    if as_json:
        emit_json(built.to_dict())
        return
    click.echo(built.prompt)
    if built.negative_prompt:
        click.echo(f"Negative: {built.negative_prompt}")


@prompt.command()
@click.argument("category", required=False)
@json_option
def keywords(category: str | None, as_json: bool) -> None:
    """List keyword categories, or the keywords of one (also: presets, negative)."""
    from limner.prompting import keyword_listing

    listing = keyword_listing(category)
    if as_json:
        emit_json(listing)
        return
    for name, value in listing.items():
        if category is None:
            click.secho(name, bold=True, nl=False)
            click.echo(f"  {value['description']}  [{', '.join(value['groups'])}]")
        elif isinstance(value, list):
            click.echo(f"{click.style(name, bold=True)}: {', '.join(value)}")
        else:
            details = {k: v for k, v in value.items() if k != "description"}
            click.echo(f"{click.style(name, bold=True)}: {value.get('description', '')}")
            for key, item in details.items():
                click.echo(f"    {key}: {', '.join(item) if isinstance(item, list) else item}")


@prompt.command("for")
@click.argument("model")
@click.argument("text")
@click.option("--negative", help="What to keep out of the image.")
@_negative_preset_option
@click.option("--aspect-ratio", "--ar", "aspect_ratio", help="W:H.")
@click.option("--size", help="WIDTHxHEIGHT.")
@click.option("--seed", type=int)
@click.option("--style", help="A style the model offers (Ideogram style type, Midjourney 'raw').")
@click.option("--quality")
@click.option("--guidance", type=float, help="Guidance / CFG scale.")
@click.option("--steps", type=int)
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Model-specific: stylize, chaos, tile, q, v, cref, cw, sref, sw, magic_prompt...")  # fmt: skip
@json_option
def for_model(
    model: str,
    text: str,
    negative: str | None,
    negative_presets: tuple[str, ...],
    options: tuple[str, ...],
    as_json: bool,
    **fields: Any,
) -> None:
    """Print exactly what MODEL would be sent for TEXT."""
    from limner.catalog import get_catalog
    from limner.prompting import combine_negative, translate
    from limner.types import ImageRequest

    spec = get_catalog().resolve(model)
    request = ImageRequest(
        prompt=text, model=spec.ref, negative_prompt=combine_negative(_negative_presets(negative_presets), negative),
        provider_options=parse_key_values(options), **{k: v for k, v in fields.items() if v is not None},
    )  # fmt: skip
    fields, warnings = translate(request, spec)
    native = _native_request(request, spec)
    if as_json:
        emit_json({"model": spec.ref, "fields": fields, "request": native, "warnings": warnings})
        return
    click.secho(spec.ref, bold=True)
    for key, value in fields.items():
        click.echo(f"{key}: {value}")
    if native is not None:
        click.secho("Provider request:", bold=True)
        click.echo(json.dumps(native, indent=2, default=str))
    for warning in warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)


def _native_request(request: Any, spec: Any) -> dict[str, Any] | None:
    """The provider's own request for ``request`` (what ``generate`` would send), if it says."""
    from limner.errors import LimnerError
    from limner.providers import get_provider_class
    from limner.types import Operation
    from limner.validate import check_request

    checked, _ = check_request(Operation.GENERATE, request, spec)
    try:
        native: dict[str, Any] = get_provider_class(spec.provider)().native_request(
            Operation.GENERATE, checked, spec
        )
    except (NotImplementedError, LimnerError):
        return None
    return native


@prompt.command()
@click.argument("pattern")
@click.option(
    "--random", "count", type=int, help="Draw N distinct variants at random instead of all."
)
@click.option("--seed", type=int, help="Seed for --random (same seed, same draw).")
@click.option(
    "--max",
    "max_count",
    type=int,
    default=1000,
    show_default=True,
    help="Refuse to make more than this many.",
)
@click.option("--count-only", is_flag=True, help="Print only the number of combinations.")
@json_option
def expand(
    pattern: str,
    count: int | None,
    seed: int | None,
    max_count: int,
    count_only: bool,
    as_json: bool,
) -> None:
    """Expand {a|b|c} alternatives and __name__ wildcard files into prompts, one a line."""
    from limner.prompting import count_variants
    from limner.prompting import expand as expand_pattern

    if count_only:
        total = count_variants(pattern)
        emit_json({"count": total}) if as_json else click.echo(total)
        return
    prompts = expand_pattern(pattern, count=count, seed=seed, max_count=max_count)
    if as_json:
        emit_json(prompts)
        return
    for line in prompts:
        click.echo(line)


@prompt.command()
@click.argument("model")
@click.argument("text")
@click.option("--negative", help="The negative prompt you mean to send.")
@click.option("--strict", is_flag=True, help="Exit 1 when there is any warning or error.")
@json_option
def lint(model: str, text: str, negative: str | None, strict: bool, as_json: bool) -> None:
    """Check TEXT against what MODEL handles well."""
    import sys

    from limner.catalog import get_catalog
    from limner.prompting import lint_prompt

    catalog = get_catalog()
    spec = catalog.resolve(model)
    issues = lint_prompt(text, spec, negative=negative, catalog=catalog)
    if as_json:
        emit_json({"model": spec.ref, "issues": [i.to_dict() for i in issues]})
    elif not issues:
        click.echo(f"No problems found for {spec.ref}.")
    colours = {"error": "red", "warning": "yellow", "info": "cyan"}
    for issue in [] if as_json else issues:
        click.secho(f"{issue.level}: {issue.message}", fg=colours[issue.level])
        if issue.suggestion:
            click.echo(f"    {issue.suggestion}")
    if any(i.level == "error" for i in issues) or (
        strict and any(i.level == "warning" for i in issues)
    ):
        sys.exit(1)
