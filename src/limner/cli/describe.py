"""``limner describe``: prompt suggestions for an existing image, from a model that reads images
(Ideogram's /describe, Midjourney's /describe through a proxy)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import click

from limner.cli._common import emit_json, json_option

__all__ = ["describe"]

# provider -> the library function that describes an image with it ("module:attribute").
DESCRIBERS = {
    "ideogram": "limner.providers.ideogram:describe",
    "midjourney": "limner.providers.midjourney:describe",
}


def _describer(provider: str, ref: str) -> Any:
    from limner import errors

    target = DESCRIBERS.get(provider)
    if target is None:
        raise errors.UnsupportedOperationError(
            f"{ref} cannot describe images.",
            hint=f"Use -m {' or -m '.join(sorted(DESCRIBERS))}.",
        )
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-m",
    "--model",
    default="ideogram",
    show_default=True,
    help="A model that describes images: ideogram or midjourney (or provider:model).",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.0, min_open=True),
    default=3.0,
    show_default=True,
    help="Seconds between status checks (Midjourney, whose describe is a queued job).",
)
@json_option
def describe(image: Path, model: str, poll_interval: float, as_json: bool) -> None:
    """Suggest prompts that describe IMAGE."""
    from limner.client import Limner
    from limner.images import load_image

    picture = load_image(image)  # a missing file or one that is no image fails before any call
    with Limner() as client:
        spec = client.resolve(model)
        run = _describer(spec.provider, spec.ref)
        polls = "poll_interval" in inspect.signature(run).parameters  # queued-job describers
        options = {"poll_interval": poll_interval} if polls else {}
        descriptions = run(picture.data, model=spec.ref, client=client, **options)
    if as_json:
        emit_json({"image": str(image), "model": spec.ref, "descriptions": descriptions})
        return
    for number, text in enumerate(descriptions, 1):
        click.echo(f"{number}. {text}")
