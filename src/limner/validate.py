"""Check a request against the catalog before anything is sent, and translate what a model
takes differently. Each translation adds a warning; what cannot be translated is refused."""

from __future__ import annotations

from limner import errors
from limner.catalog import Catalog, ModelSpec
from limner.images import check_mask_matches
from limner.types import SEED_MAX, ImageRequest, Operation

__all__ = ["MAX_TOTAL_N", "check_request", "nearest_aspect"]

MAX_TOTAL_N = 64
PROMPTLESS = {Operation.VARIATION, Operation.UPSCALE, Operation.REMOVE_BACKGROUND}


def _ratio(text: str) -> float:
    a, _, b = text.partition(":")
    return float(a) / float(b)


def nearest_aspect(width: int, height: int, choices: list[str]) -> str:
    target = width / height
    return min(choices, key=lambda c: abs(_ratio(c) - target))


def _nearest_size(target: float, sizes: list[str]) -> str:
    fixed = [s for s in sizes if "x" in s]

    def ratio(s: str) -> float:
        w, _, h = s.partition("x")
        return int(w) / int(h)

    return min(fixed, key=lambda s: abs(ratio(s) - target))


def _check_operation(op: Operation, spec: ModelSpec, catalog: Catalog | None) -> None:
    if spec.supports(op):
        return
    others = (
        [s.ref for s in catalog or [] if s.supports(op) and not s.is_retired()][:8]
        if catalog
        else []
    )
    raise errors.UnsupportedOperationError(
        f"{spec.ref} cannot {op.value}.",
        hint=f"Models that can: {', '.join(others)}." if others else "No model in the catalog can.",
    )


def _check_size(request: ImageRequest, spec: ModelSpec, warnings: list[str]) -> ImageRequest:
    dims = request.dimensions()
    if request.size and request.size != "auto" and dims is None:
        raise errors.InvalidRequestError(
            f"Size {request.size!r} is not WIDTHxHEIGHT.", param="size"
        )
    if dims is None:
        if (
            request.size == "auto"
            and spec.sizes
            and "auto" not in spec.sizes
            and not spec.aspect_ratios
        ):
            raise errors.InvalidRequestError(
                f"{spec.ref} does not take size 'auto'.",
                param="size",
                hint=f"Allowed: {spec.allowed_sizes_text()}.",
            )
        if request.aspect_ratio and not spec.aspect_ratios and spec.sizes:
            size = _nearest_size(_ratio(request.aspect_ratio), spec.sizes)
            warnings.append(
                f"{spec.ref} takes sizes, not aspect ratios: aspect {request.aspect_ratio} was sent as size {size}."
            )
            return request.model_copy(update={"size": size, "aspect_ratio": None})
        if (
            request.aspect_ratio
            and spec.aspect_ratios
            and request.aspect_ratio not in spec.aspect_ratios
        ):
            raise errors.InvalidRequestError(
                f"{spec.ref} cannot produce aspect ratio {request.aspect_ratio}.",
                param="aspect_ratio",
                hint=f"Allowed: {', '.join(spec.aspect_ratios)}.",
            )
        return request
    width, height = dims
    if request.size in spec.sizes:
        return request
    if spec.size_rule:
        reason = spec.size_rule.check(width, height)
        if reason is None:
            return request
        raise errors.InvalidRequestError(
            f"Size {request.size} is not allowed for {spec.ref}: {reason}.",
            param="size",
            hint=f"Allowed: {spec.allowed_sizes_text()}.",
        )
    if spec.aspect_ratios and not spec.sizes:
        aspect = nearest_aspect(width, height, spec.aspect_ratios)
        warnings.append(
            f"{spec.ref} takes aspect ratios, not pixel sizes: {request.size} was sent as aspect ratio {aspect}."
        )
        return request.model_copy(update={"size": None, "aspect_ratio": aspect})
    if spec.sizes:
        raise errors.InvalidRequestError(
            f"Size {request.size} is not allowed for {spec.ref}.",
            param="size",
            hint=f"Allowed: {spec.allowed_sizes_text()}.",
        )
    return request


def _check_enums(request: ImageRequest, spec: ModelSpec) -> None:
    for field, allowed in (
        ("quality", spec.qualities),
        ("style", spec.styles),
        ("output_format", spec.output_formats),
    ):
        value = getattr(request, field)
        if value is None:
            continue
        if not allowed:
            raise errors.InvalidRequestError(f"{spec.ref} does not take a {field}.", param=field)
        if value not in allowed:
            raise errors.InvalidRequestError(
                f"{field} {value!r} is not allowed for {spec.ref}.",
                param=field,
                hint=f"Allowed: {', '.join(allowed)}.",
            )
    if request.background and not spec.background:
        raise errors.InvalidRequestError(
            f"{spec.ref} does not take a background setting.", param="background"
        )
    if request.background == "transparent" and request.output_format == "jpeg":
        raise errors.InvalidRequestError(
            "A transparent background needs PNG or WebP output.",
            param="background",
            hint="Use --format png.",
        )


def _translate_unsupported(
    request: ImageRequest, spec: ModelSpec, warnings: list[str]
) -> ImageRequest:
    update: dict[str, object] = {}
    if request.negative_prompt and not spec.negative_prompt:
        update["prompt"] = f"{request.prompt}. Avoid: {request.negative_prompt}."
        update["negative_prompt"] = None
        warnings.append(
            f"{spec.ref} takes no negative prompt: it was folded into the prompt as 'Avoid: ...'."
        )
    if request.seed is not None and not spec.seed:
        warnings.append(
            f"{spec.ref} takes no seed: results are not reproducible (the seed is kept in the log and cache key only)."
        )
    for field in ("steps", "guidance"):
        if getattr(request, field) is not None and not getattr(spec, field):
            update[field] = None
            warnings.append(f"{spec.ref} takes no {field}: the value was not sent.")
    if request.strength is not None and not 0.0 <= request.strength <= 1.0:
        raise errors.InvalidRequestError("strength must be between 0 and 1.", param="strength")
    return request.model_copy(update=update) if update else request


def _check_inputs(op: Operation, request: ImageRequest, spec: ModelSpec) -> None:
    # An operation on an earlier provider-side task (Midjourney's U1-U4 / V1-V4) names the task
    # in provider_options["task_id"] and needs no input image.
    acts_on_task = "task_id" in request.provider_options
    needs_image = (
        op not in (Operation.GENERATE, Operation.CONTROLNET, Operation.LORA) and not acts_on_task
    )
    if needs_image and not request.images:
        raise errors.InvalidRequestError(f"{op.value} needs an input image.", param="image")
    if len(request.images) > max(spec.max_input_images, 1):
        raise errors.InvalidRequestError(
            f"{spec.ref} takes at most {spec.max_input_images} input image(s); {len(request.images)} were given.",
            param="image",
        )
    if request.references and len(request.references) > spec.max_reference_images:
        raise errors.InvalidRequestError(
            f"{spec.ref} takes at most {spec.max_reference_images} reference image(s); {len(request.references)} were given.",
            param="references",
        )
    if request.mask is not None:
        if not spec.supports(Operation.INPAINT):
            raise errors.UnsupportedOperationError(
                f"{spec.ref} cannot take a mask (it does not inpaint)."
            )
        if request.images:
            check_mask_matches(request.images[0], request.mask)


def _check_prompt_present(op: Operation, request: ImageRequest, spec: ModelSpec) -> None:
    """Refuse an empty prompt unless the operation, the model or the chosen provider option
    (``spec.promptless_options``, e.g. Recraft's ``action=vectorize``) does without one."""
    if op in PROMPTLESS or not spec.prompt_required or request.prompt.strip():
        return
    chosen = {key: request.provider_options.get(key) for key in spec.promptless_options}
    if any(str(chosen[key]) in values for key, values in spec.promptless_options.items()):
        return
    hint = "Describe the image to make"
    for key, values in spec.promptless_options.items():
        hint += f", or set {key} to one that needs none: --option {key}={'|'.join(values)}"
    hint += "."
    picked = [f"{key} {value!r}" for key, value in chosen.items() if value is not None]
    needs = f" {spec.ref} needs one for {op.value} with {', '.join(picked)}." if picked else ""
    raise errors.InvalidRequestError(f"The prompt is empty.{needs}", param="prompt", hint=hint)


def check_request(
    op: Operation, request: ImageRequest, spec: ModelSpec, catalog: Catalog | None = None
) -> tuple[ImageRequest, list[str]]:
    """Validate ``request`` for ``spec``; return the request to send and the warnings."""
    warnings: list[str] = []
    _check_prompt_present(op, request, spec)
    if spec.max_prompt_chars and len(request.prompt) > spec.max_prompt_chars:
        raise errors.InvalidRequestError(
            f"The prompt is {len(request.prompt)} characters; {spec.ref} takes at most {spec.max_prompt_chars}.",
            param="prompt",
        )
    if not 1 <= request.n <= MAX_TOTAL_N:
        raise errors.InvalidRequestError(
            f"n must be between 1 and {MAX_TOTAL_N}; got {request.n}.",
            param="n",
            hint=f"{spec.ref} makes up to {spec.max_n} per call; limner splits larger n into parallel calls.",
        )
    if request.seed is not None and request.seed + request.n - 1 > SEED_MAX:
        raise errors.InvalidRequestError(
            f"Seed {request.seed} leaves no room for {request.n} images: image k takes seed + k, "
            f"and seeds go up to {SEED_MAX}.",
            param="seed", hint=f"Use a seed of at most {SEED_MAX - request.n + 1}.",
        )  # fmt: skip
    _check_operation(op, spec, catalog)
    _check_inputs(op, request, spec)
    request = _check_size(request, spec, warnings)
    _check_enums(request, spec)
    request = _translate_unsupported(request, spec, warnings)
    return request, warnings
