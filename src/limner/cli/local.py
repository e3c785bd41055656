"""Commands around the local engine and the log: ``limner models add``, ``limner rerun`` and
``limner export comfyui``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from limner.cli._common import dry_run_option, emit_json, json_option

__all__ = ["export_comfyui", "models_add", "request_from_entry", "rerun", "workflow_from_entry"]


@click.command("add")
@click.argument("name")
@click.argument("path_or_id")
@click.option(
    "--family",
    type=click.Choice(["sd", "sdxl", "sd3", "flux", "flux2"]),
    help="Architecture, when limner cannot tell.",
)
@click.option("--revision", help="Hub revision (branch, tag or commit) to pin.")
@json_option
def models_add(
    name: str, path_or_id: str, family: str | None, revision: str | None, as_json: bool
) -> None:
    """Register NAME for a local diffusers folder, a .safetensors file or a Hugging Face repo id.

    Afterwards `-m local:NAME` uses it. Pickle checkpoints (.ckpt, .pt, .bin) are refused.
    """
    from limner.config import limner_home
    from limner.local.models import register_model

    spec = register_model(limner_home(), name, path_or_id, family=family, revision=revision)
    if as_json:
        emit_json({"model": spec.ref, "family": spec.family, "wire": spec.wire})
        return
    click.echo(
        f"Registered {spec.ref} ({spec.family}): {spec.wire.get('path') or spec.wire.get('repo')}"
    )


def _load_entry(store: Any, generation_id: str) -> Any:
    from limner import errors

    entry = store.get(generation_id)
    if entry is None:
        raise errors.UserError(
            f"No generation {generation_id!r} in the log.", hint="See `limner logs` for ids."
        )
    return entry


def request_from_entry(
    entry: Any, store: Any, images: tuple[Path, ...] = (), mask: Path | None = None
) -> Any:
    """The request a logged generation was made with, its inputs read back from the store."""
    from limner import errors
    from limner.images import load_image
    from limner.types import ImageRequest

    params = dict(entry.params or {})
    stored_images = params.pop("images", [])
    stored_mask = params.pop("mask", None)
    fields = {k: v for k, v in params.items() if k in ImageRequest.model_fields}
    if fields.get("seed") is None and entry.images and entry.images[0].seed is not None:
        fields["seed"] = entry.images[0].seed  # the seed the provider picked
    inputs = [load_image(p) for p in images]
    if not inputs:
        for sha in stored_images:
            found = store.read_asset(sha)
            if found is None:
                raise errors.InputImageError(
                    f"Input image {sha[:12]} of {entry.id} is not in the store.",
                    hint="Pass it again with -i.",
                )
            inputs.append(load_image(found[0]))
    mask_input = load_image(mask) if mask else None
    if mask_input is None and stored_mask:
        found = store.read_asset(stored_mask)
        if found is None:
            raise errors.InputImageError(
                f"The mask of {entry.id} is not in the store.", hint="Pass it with --mask."
            )
        mask_input = load_image(found[0])
    fields.update(prompt=entry.prompt, negative_prompt=entry.negative_prompt, model=entry.model,
                  images=inputs, mask=mask_input, tags=entry.tags or [], project=entry.project)  # fmt: skip
    return ImageRequest.model_validate(fields)


@click.command()
@click.argument("generation_id")
@click.option("-i", "--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Input image(s), when the logged ones are not stored.")  # fmt: skip
@click.option("--mask", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-m", "--model", help="Run with another model instead.")
@click.option("--seed", type=int, help="Use another seed.")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=Path("."), show_default=True
)
@dry_run_option
@json_option
def rerun(generation_id: str, images: tuple[Path, ...], mask: Path | None, model: str | None,
          seed: int | None, output: Path, dry_run: bool, as_json: bool) -> None:  # fmt: skip
    """Run a logged generation again from its stored parameters (any provider)."""
    from limner.cli._common import result_payload
    from limner.cli.generate import _dry_run
    from limner.client import Limner

    with Limner() as client:
        entry = _load_entry(client.store, generation_id)
        request = request_from_entry(entry, client.store, images, mask)
        update = {k: v for k, v in (("model", model), ("seed", seed)) if v is not None}
        if update:
            request = request.model_copy(update=update)
        if dry_run:
            _dry_run(client, entry.operation, request, as_json)
            return
        result = client.run(entry.operation, request, use_cache=False, parent_id=entry.id)
    output.mkdir(parents=True, exist_ok=True)
    paths = [
        output / f"{result.generation_id}-{i}.{img.extension}"
        for i, img in enumerate(result.images)
    ]
    for image, path in zip(result.images, paths, strict=True):
        image.save(path)
    if as_json:
        emit_json(result_payload(result, paths))
        return
    for path in paths:
        click.echo(str(path))
    click.echo(f"Re-ran {entry.id} as {result.generation_id} with {result.model}.", err=True)


def workflow_from_entry(entry: Any, catalog: Any) -> dict[str, Any]:
    """The ComfyUI API-format workflow for a logged local generation."""
    from limner import errors
    from limner.local.comfyui import checkpoint_name, workflow_for
    from limner.local.models import FAMILIES, spec_for_reference

    if entry.provider not in ("local", "comfyui"):
        raise errors.UserError(
            f"Generation {entry.id} ran on {entry.provider}; only local generations export to ComfyUI.",
            hint="Re-run it with -m local:MODEL first.",
        )
    model_id = entry.model.partition(":")[2]
    spec = catalog.find(entry.model) or spec_for_reference(model_id)
    wire = spec.wire if spec else {}
    family = str(wire.get("family", "sd"))
    params = entry.params or {}
    options = params.get("provider_options", {})
    fam = FAMILIES[family]
    if params.get("size"):
        width, height = (int(v) for v in str(params["size"]).split("x"))
    elif entry.images and entry.images[0].width:
        width, height = entry.images[0].width, entry.images[0].height or entry.images[0].width
    else:
        width = height = int(wire.get("default_size", fam.default_size))
    seed = params.get("seed")
    if seed is None and entry.images:
        seed = entry.images[0].seed
    loras = [(str(x).rpartition(":")[0] or str(x), 1.0) if not isinstance(x, dict) else (x.get("path", ""), float(x.get("weight", 1.0)))
             for x in options.get("loras", [])]  # fmt: skip
    return workflow_for(
        checkpoint=checkpoint_name(wire, model_id), family=family, prompt=entry.prompt,
        negative_prompt=entry.negative_prompt, seed=int(seed or 0),
        steps=int(params.get("steps") or wire.get("default_steps", fam.default_steps)),
        cfg=float(params["guidance"] if params.get("guidance") is not None else wire.get("default_guidance", fam.default_guidance)),
        width=width, height=height, n=int(params.get("n", 1)), scheduler=options.get("scheduler"),
        operation=entry.operation, strength=params.get("strength"),
        image_name="input.png" if params.get("images") else None,
        mask_name="mask.png" if params.get("mask") else None, loras=loras,
        controlnets=[c if isinstance(c, dict) else {"model": str(c)} for c in options.get("controlnets", [])],
    )  # fmt: skip


@click.command("comfyui")
@click.argument("generation_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the workflow here (default: print it).",
)
def export_comfyui(generation_id: str, output: Path | None) -> None:
    """Export a local generation as a ComfyUI API-format workflow (same model, seed, steps,
    CFG, sampler and size). Queue it with POST /prompt, or load it in ComfyUI."""
    from limner.client import Limner

    with Limner() as client:
        entry = _load_entry(client.store, generation_id)
        workflow = workflow_from_entry(entry, client.catalog)
    text = json.dumps(workflow, indent=2)
    if output:
        output.write_text(text + "\n")
        click.echo(str(output))
    else:
        click.echo(text)
