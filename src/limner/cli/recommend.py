"""``limner recommend`` and ``limner models compare``."""

from __future__ import annotations

import click

from limner.cli._common import emit_json, json_option


@click.command()
@click.argument("prompt", required=False, default="")
@click.option(
    "--use-case", "use_cases", multiple=True, help="A use case (see --list-use-cases); repeatable."
)
@click.option("--budget", help="The most to pay per image, in USD.")
@click.option("--commercial", is_flag=True, help="Only models whose licence allows commercial use.")
@click.option("--needs", help="Operations the model must do, e.g. inpaint,controlnet.")
@click.option("--limit", type=int, default=5, show_default=True, help="How many to show (0 = all).")
@click.option("--list-use-cases", is_flag=True, help="List the use cases and exit.")
@json_option
def recommend(
    prompt: str,
    use_cases: tuple[str, ...],
    budget: str | None,
    commercial: bool,
    needs: str | None,
    limit: int,
    list_use_cases: bool,
    as_json: bool,
) -> None:
    """Rank the catalog's models for PROMPT (or --use-case), with the reasons."""
    from limner.budget import parse_amount
    from limner.prompting.library import load_library
    from limner.recommend import detect_use_cases, parse_needs
    from limner.recommend import recommend as rank

    library = load_library()
    if list_use_cases:
        rows = {
            n: {"label": c.get("label", n), "guide": c.get("seed_recommendation", "")}
            for n, c in library.use_cases.items()
        }
        if as_json:
            emit_json(rows)
        for name, row in [] if as_json else rows.items():
            click.echo(f"{name:16} {row['label']}  (guide: {row['guide']})")
        return
    per_image = parse_amount(budget, "budget per image") if budget is not None else None
    wanted = [u.strip() for item in use_cases for u in item.split(",") if u.strip()]
    results = rank(
        prompt,
        use_cases=wanted,
        budget=per_image,
        commercial=commercial,
        needs=parse_needs(needs),
        limit=limit,
        library=library,
    )
    detected = wanted or detect_use_cases(prompt, library)
    if as_json:
        emit_json({"use_cases": detected, "recommendations": [r.to_dict() for r in results]})
        return
    if detected:
        click.echo(f"Use case: {', '.join(library.use_case(u).get('label', u) for u in detected)}")
    if not results:
        click.echo("No model in the catalog fits these constraints.")
    for index, rec in enumerate(results, 1):
        click.secho(f"{index}. {rec.model}", bold=True, nl=False)
        click.echo(f"  ({rec.price_note}, score {rec.score:g})")
        click.echo(f"   {'; '.join(rec.reasons)}")


@click.command()
@click.argument("models", nargs=-1, required=True)
@json_option
def compare(models: tuple[str, ...], as_json: bool) -> None:
    """Compare MODELS feature by feature: text rendering, photorealism, ControlNet, licence..."""
    from rich.console import Console
    from rich.table import Table

    from limner.catalog import get_catalog
    from limner.recommend import feature_matrix

    catalog = get_catalog()
    specs = [catalog.resolve(m) for m in models]
    matrix = feature_matrix(specs)
    if as_json:
        emit_json(matrix)
        return
    table = Table("Feature", *[s.ref for s in specs])
    for feature, values in matrix.items():
        table.add_row(feature, *[values[s.ref] for s in specs])
    Console().print(table)
