"""Commands for local image operations: upscale, remove-bg, mask, outpaint, check, provenance.

Each writes its result next to the input unless ``-o`` says where, stores it in the asset store
and logs it like a generation. Bad input exits with code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from limner import errors
from limner.cli._common import dry_run_option, emit_json, json_option, parse_key_values

IMAGE = click.Path(dir_okay=False, path_type=Path)


def _default_out(image: Path, suffix: str) -> Path:
    return image.with_name(f"{image.stem}-{suffix}.png")


def _write(data: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _client(model: str | None) -> Any:
    from limner.client import Limner

    return Limner() if model and ":" in model else None


def _is_cloud(model: str | None) -> bool:
    """The ops' own rule: provider:model that is not a file on disk."""
    return bool(model and ":" in model and not Path(model).expanduser().exists())


def _dry_run_cloud(
    op: str, image: Path, model: str, options: dict[str, Any], as_json: bool
) -> None:
    from limner.cli.generate import _dry_run
    from limner.client import Limner
    from limner.images import load_image
    from limner.types import ImageRequest

    request = ImageRequest(model=model, images=[load_image(image)], provider_options=options)
    with Limner() as client:
        _dry_run(client, op, request, as_json)


def _dry_run_local(op: str, image: Path, model: str, detail: str, as_json: bool) -> None:
    """A local operation sends nothing anywhere: say what would run, and that it is free."""
    from limner.ops._common import read_image

    img, _ = read_image(image)  # the input is checked as the real run would
    if as_json:
        emit_json({"operation": op, "model": model, "local": True, "input": str(image),
                   "input_size": f"{img.width}x{img.height}", "detail": detail,
                   "estimated_cost_usd": 0.0})  # fmt: skip
        return
    click.echo(f"Would run {op} with {model} on this machine: {image} ({img.width}x{img.height}), "
               f"{detail}; nothing sent.")  # fmt: skip
    click.echo("Estimated cost: $0.0000 (local)")


def _report(result: Any, saved: list[Path], as_json: bool) -> None:
    if as_json:
        emit_json({
            "generation_id": result.generation_id, "operation": result.operation, "model": result.model,
            "warnings": result.warnings, "timings": result.timings,
            "images": [
                {"path": str(p), "stored": str(img.path) if img.path else None, "sha256": img.sha256,
                 "width": img.width, "height": img.height}
                for img, p in zip(result.images, saved, strict=False)
            ],
        })  # fmt: skip
        return
    for warning in result.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    for img, path in zip(result.images, saved, strict=False):
        click.echo(f"{path}  {img.width}x{img.height}  ({result.model})")


@click.command()
@click.argument("image", type=IMAGE)
@click.option("--scale", type=click.IntRange(2, 4), default=2, show_default=True, help="2, 3 or 4.")
@click.option(
    "-m",
    "--model",
    help="lanczos, fsrcnn, fsrcnn-small, espcn, a .safetensors/.onnx/.pb file, or provider:model.",
)
@click.option(
    "--tile",
    type=click.IntRange(64, 4096),
    default=512,
    show_default=True,
    help="Tile size for learned models.",
)
@click.option(
    "-O",
    "--provider-option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option for a cloud upscaler, e.g. -O scale=4 (repeatable).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the result.",
)
@dry_run_option
@json_option
def upscale(
    image: Path,
    scale: int,
    model: str | None,
    tile: int,
    options: tuple[str, ...],
    output: Path | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Upscale IMAGE by 2, 3 or 4 (cloud upscalers use their own factor; see -O)."""
    from limner.ops.upscale import upscale as run_upscale

    if dry_run:
        if _is_cloud(model):
            _dry_run_cloud("upscale", image, model or "", parse_key_values(options, "-O"), as_json)
        else:
            _dry_run_local("upscale", image, model or "lanczos", f"x{scale}", as_json)
        return

    result = run_upscale(
        image,
        scale,
        model,
        client=_client(model),
        tile=tile,
        provider_options=parse_key_values(options, "-O"),
    )
    out = _write(result.image.data, output or _default_out(image, f"x{scale}"))
    _report(result, [out], as_json)


@click.command("remove-bg")
@click.argument("image", type=IMAGE)
@click.option(
    "-m",
    "--model",
    help="An ISNet/U2-Net .onnx file, grabcut (default), or provider:model (e.g. removebg).",
)
@click.option(
    "--background",
    "background",
    help="Replacement background: a colour (#ffffff, white) or an image path.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the RGBA result.",
)
@click.option(
    "--mask-output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the mask.",
)
@dry_run_option
@json_option
def remove_bg(
    image: Path,
    model: str | None,
    background: str | None,
    output: Path | None,
    mask_output: Path | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Remove the background of IMAGE; writes the cut-out and its mask."""
    from limner.ops.background import remove_background

    if dry_run:
        if _is_cloud(model):
            _dry_run_cloud("remove-background", image, model or "", {}, as_json)
        else:
            detail = f"background {background}" if background else "transparent background"
            _dry_run_local("remove-background", image, model or "grabcut", detail, as_json)
        return

    result = remove_background(image, model, background=background, client=_client(model))
    mask_index = result.extras.get("mask_index", len(result.images) - 1)
    out = _write(result.images[0].data, output or _default_out(image, "nobg"))
    mask_out = _write(result.images[mask_index].data, mask_output or _default_out(image, "mask"))
    _report(result, [out, mask_out], as_json)


def _base_mask(
    img: Any,
    rect: str | None,
    polygon: str | None,
    colour: str | None,
    tolerance: int,
    from_alpha: bool,
    area: str | None,
    model: str | None,
    points: str | None,
    sam_model: str | None,
) -> Any:
    from limner.ops import masks
    from limner.ops.background import parse_colour

    chosen = [bool(rect), bool(polygon), bool(colour), from_alpha, bool(area), bool(points)]
    if sum(chosen) != 1:
        raise errors.InvalidRequestError(
            "Give exactly one mask source.",
            hint="One of --rect, --polygon, --colour, --alpha, --area subject|background, --points.",
        )
    if rect:
        return masks.rectangle_mask(img.size, masks.parse_box(rect))
    if polygon:
        return masks.polygon_mask(img.size, masks.parse_points(polygon))
    if colour:
        red, green, blue, _ = parse_colour(colour)
        return masks.colour_range_mask(img, (red, green, blue), tolerance)
    if from_alpha:
        return masks.alpha_mask(img)
    if area:
        return masks.background_mask(img, model, "subject" if area == "subject" else "background")
    return masks.sam_mask(img, masks.parse_points(points or ""), sam_model)


@click.command()
@click.argument("image", type=IMAGE)
@click.option("--rect", help="x0,y0,x1,y1 in pixels.")
@click.option("--polygon", help="x1,y1,x2,y2,... (at least 3 points).")
@click.option("--colour", "--color", "colour", help="Pixels near this colour (#rrggbb or r,g,b).")
@click.option(
    "--tolerance",
    type=click.IntRange(0, 255),
    default=30,
    show_default=True,
    help="Per-channel tolerance for --colour.",
)
@click.option("--alpha", "from_alpha", is_flag=True, help="Transparent pixels of IMAGE.")
@click.option(
    "--area",
    type=click.Choice(["subject", "background"]),
    help="The subject or background found by the background model.",
)
@click.option("-m", "--model", help="Background model (.onnx) for --area; GrabCut without.")
@click.option("--points", help="x,y,... point prompts on the object (needs --sam-model).")
@click.option("--sam-model", help="ENCODER.onnx,DECODER.onnx of a segment-anything export.")
@click.option("--grow", type=click.IntRange(0, 512), default=0, help="Grow the mask by PX.")
@click.option("--shrink", type=click.IntRange(0, 512), default=0, help="Shrink the mask by PX.")
@click.option(
    "--feather", type=click.FloatRange(0, 256), default=0.0, help="Blur the edge by a radius in PX."
)
@click.option("--invert", is_flag=True, help="Swap masked and unmasked areas.")
@click.option(
    "--preview",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the image with the mask tinted.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the mask.",
)
@json_option
def mask(
    image: Path,
    rect: str | None,
    polygon: str | None,
    colour: str | None,
    tolerance: int,
    from_alpha: bool,
    area: str | None,
    model: str | None,
    points: str | None,
    sam_model: str | None,
    grow: int,
    shrink: int,
    feather: float,
    invert: bool,
    preview: Path | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Make a mask for IMAGE (white marks the area to change)."""
    import time

    from limner.ops import masks
    from limner.ops._common import encode_png, input_sha, read_image, record_op
    from limner.store import Store

    started = time.perf_counter()
    img, notes = read_image(image)
    result_mask = _base_mask(
        img, rect, polygon, colour, tolerance, from_alpha, area, model, points, sam_model
    )
    result_mask = masks.feather(masks.shrink(masks.grow(result_mask, grow), shrink), feather)
    if invert:
        result_mask = masks.invert(result_mask)
    outputs = [result_mask] + ([masks.preview(img, result_mask)] if preview else [])
    params = {"rect": rect, "polygon": polygon, "colour": colour, "alpha": from_alpha, "area": area,
              "points": points, "grow": grow, "shrink": shrink, "feather": feather, "invert": invert}  # fmt: skip
    result = record_op(
        Store(),
        operation="mask",
        model=model or "limner-mask",
        outputs=outputs,
        params={k: v for k, v in params.items() if v},
        inputs=[input_sha(img)],
        started=started,
        warnings=notes,
    )
    saved = [_write(encode_png(result_mask), output or _default_out(image, "mask"))]
    if preview:
        saved.append(_write(result.images[1].data, preview))
    _report(result, saved, as_json)


@click.command()
@click.argument("image", type=IMAGE)
@click.option("--left", type=click.IntRange(0, 8192), default=0, help="Pixels to add on the left.")
@click.option(
    "--right", type=click.IntRange(0, 8192), default=0, help="Pixels to add on the right."
)
@click.option("--top", type=click.IntRange(0, 8192), default=0, help="Pixels to add on top.")
@click.option(
    "--bottom", type=click.IntRange(0, 8192), default=0, help="Pixels to add at the bottom."
)
@click.option("--to-aspect", help="Pad evenly to this aspect ratio, e.g. 16:9.")
@click.option("-m", "--model", help="A model that can outpaint or inpaint.")
@click.option("-p", "--prompt", default="", help="What the new area should show.")
@click.option("--seed", type=int)
@click.option("--canvas-only", is_flag=True, help="Write the canvas and mask, call no model.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the result.",
)
@dry_run_option
@json_option
def outpaint(
    image: Path,
    left: int,
    right: int,
    top: int,
    bottom: int,
    to_aspect: str | None,
    model: str | None,
    prompt: str,
    seed: int | None,
    canvas_only: bool,
    output: Path | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Extend IMAGE beyond its borders with a model (or just build the canvas and mask)."""
    from limner.ops import outpaint as op
    from limner.ops._common import encode_png, read_image

    pad = op.Padding(left, right, top, bottom)
    if canvas_only:
        img, _ = read_image(image)
        if to_aspect:
            pad = op.padding_for_aspect(img.width, img.height, to_aspect)
        canvas, canvas_mask = op.build_canvas(img, pad)
        out = _write(encode_png(canvas), output or _default_out(image, "canvas"))
        mask_out = _write(encode_png(canvas_mask), _default_out(out, "mask"))
        if as_json:
            emit_json(
                {
                    "canvas": str(out),
                    "mask": str(mask_out),
                    "width": canvas.width,
                    "height": canvas.height,
                }
            )
        else:
            click.echo(f"{out}  {canvas.width}x{canvas.height}\n{mask_out}")
        return
    from limner.client import Limner

    extra = {"seed": seed} if seed is not None else {}
    if dry_run:
        _dry_run_outpaint(image, model, prompt, pad, to_aspect, extra, as_json)
        return
    with Limner() as client:
        result = op.outpaint(
            client, image, model=model, prompt=prompt, pad=pad, to_aspect=to_aspect, **extra
        )
    saved = []
    for i, generated in enumerate(result.images):
        many = len(result.images) > 1
        target = (
            output
            if output and not many
            else _default_out(output or image, f"outpaint-{i + 1}" if many else "outpaint")
        )
        saved.append(_write(generated.data, target))
    from limner.cli._common import result_payload

    if as_json:
        emit_json(result_payload(result, saved))
    else:
        for warning in result.warnings:
            click.secho(f"warning: {warning}", fg="yellow", err=True)
        for path in saved:
            click.echo(str(path))


@click.command()
@click.argument("images", nargs=-1, required=True, type=IMAGE)
@click.option("--expect-text", help="Text that must be rendered in the image (OCR, fuzzy match).")
@click.option(
    "--text-threshold",
    type=click.FloatRange(0, 1),
    default=0.8,
    show_default=True,
    help="Minimum match score for --expect-text.",
)
@click.option("--min-size", help="Minimum WIDTHxHEIGHT.")
@click.option("--aspect", help="Required aspect ratio, e.g. 16:9 (2% tolerance).")
@click.option(
    "--min-sharpness",
    type=float,
    default=100.0,
    show_default=True,
    help="Minimum variance of the Laplacian; lower is blurry.",
)
@click.option(
    "--max-clipped",
    type=click.FloatRange(0, 1),
    default=0.25,
    show_default=True,
    help="Maximum share of black or white pixels.",
)
@click.option(
    "--duplicate-distance",
    type=click.IntRange(0, 64),
    default=6,
    show_default=True,
    help="Perceptual-hash distance at or below which images are near-duplicates.",
)
@json_option
def check(
    images: tuple[Path, ...],
    expect_text: str | None,
    text_threshold: float,
    min_size: str | None,
    aspect: str | None,
    min_sharpness: float,
    max_clipped: float,
    duplicate_distance: int,
    as_json: bool,
) -> None:
    """Check images against the quality checklist. Exit 0: all pass; 1: a check failed; 2: bad input."""
    from limner.ops._common import read_image
    from limner.ops.checks import Checks, check_images, parse_size

    checks = Checks(
        min_size=parse_size(min_size) if min_size else None,
        aspect=aspect,
        expect_text=expect_text,
        text_threshold=text_threshold,
        min_sharpness=min_sharpness,
        max_clipped=max_clipped,
        duplicate_distance=duplicate_distance,
    )
    loaded = [(str(path), read_image(path)[0]) for path in images]
    reports = check_images(loaded, checks)
    passed = all(r.passed for r in reports)
    if as_json:
        emit_json({"passed": passed, "images": [r.to_dict() for r in reports]})
    else:
        for report in reports:
            mark = (
                click.style("PASS", fg="green") if report.passed else click.style("FAIL", fg="red")
            )
            click.echo(f"{mark}  {report.name}  {report.width}x{report.height}")
            for reason in report.reasons:
                click.echo(f"      {reason}")
    sys.exit(0 if passed else 1)


@click.command()
@click.argument("image", type=IMAGE)
@click.option("--sign", is_flag=True, help="Add a signed C2PA manifest (needs --cert and --key).")
@click.option(
    "--cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificate chain, signing certificate first.",
)
@click.option(
    "--key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key of the signing certificate.",
)
@click.option(
    "--alg",
    default="es256",
    show_default=True,
    help="es256, es384, es512, ps256, ps384, ps512 or ed25519.",
)
@click.option(
    "--strip", "strip_all", is_flag=True, help="Write a copy with every metadata block removed."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where --sign/--strip write (default: next to IMAGE).",
)
@json_option
def provenance(
    image: Path,
    sign: bool,
    cert: Path | None,
    key: Path | None,
    alg: str,
    strip_all: bool,
    output: Path | None,
    as_json: bool,
) -> None:
    """Read and verify IMAGE's provenance (IPTC source type, limner metadata, C2PA).

    Exit 1 when a C2PA manifest is present but fails verification.
    """
    from limner.ops import provenance as prov

    try:
        data = image.read_bytes()
    except OSError as exc:
        raise errors.InputImageError(f"{image} cannot be read: {exc.strerror}.") from exc
    if sign and strip_all:
        raise errors.InvalidRequestError("--sign and --strip cannot be used together.")
    if strip_all:
        out = _write(
            prov.strip_metadata(data),
            output or image.with_name(f"{image.stem}-stripped{image.suffix}"),
        )
        emit_json({"stripped": str(out)}) if as_json else click.echo(str(out))
        return
    if sign:
        if not cert or not key:
            raise errors.InvalidRequestError(
                "--sign needs --cert and --key.", hint="Give PEM files."
            )
        meta = prov.read_provenance(data).limner
        data = prov.sign_c2pa(
            data,
            cert_chain_pem=cert.read_bytes(),
            private_key_pem=key.read_bytes(),
            algorithm=alg,
            model=meta.get("model"),
            provider=meta.get("provider"),
            title=image.name,
        )
        image = _write(data, output or image.with_name(f"{image.stem}-signed{image.suffix}"))
    info = prov.read_provenance(data)
    if as_json:
        emit_json({"path": str(image), **info.to_dict()})
    else:
        _print_provenance(image, info)
    sys.exit(1 if info.c2pa_valid is False else 0)


def _print_provenance(image: Path, info: Any) -> None:
    click.echo(f"{image}")
    click.echo(f"  AI-generated (IPTC): {'yes' if info.ai_generated else 'not declared'}")
    if info.digital_source_type:
        click.echo(f"  digital source type: {info.digital_source_type}")
    for field in ("model", "provider", "generation_id", "seed", "prompt"):
        if info.limner.get(field) is not None:
            click.echo(f"  {field}: {info.limner[field]}")
    if info.c2pa is None:
        click.echo("  C2PA: no manifest")
        return
    state = "valid" if info.c2pa.get("valid") else "INVALID"
    trust = "trusted" if info.c2pa.get("trusted") else "signer not in the trust list"
    click.echo(f"  C2PA: {state} ({trust})")
    signature = info.c2pa.get("signature") or {}
    if signature:
        click.echo(f"  signed by: {signature.get('common_name') or signature.get('issuer')}")
    for problem in info.c2pa.get("problems") or []:
        click.echo(f"  problem: {problem}")


def _dry_run_outpaint(
    image: Path,
    model: str | None,
    prompt: str,
    pad: Any,
    to_aspect: str | None,
    extra: dict[str, Any],
    as_json: bool,
) -> None:
    """The request `limner outpaint` would send, planned and not sent."""
    from limner.cli.generate import _dry_run
    from limner.client import Limner
    from limner.ops.outpaint import outpaint_request

    with Limner() as client:
        operation, request, _ = outpaint_request(
            client, image, model=model, prompt=prompt, pad=pad, to_aspect=to_aspect, **extra
        )
        _dry_run(client, operation, request, as_json)
