"""Per-model prompt translation: what a request becomes in each model family's own terms.

``translate(request, spec)`` returns the prompt fields a model takes natively and the warnings
for whatever had to change: Midjourney's flags, Ideogram's enums, natural language for OpenAI
and Gemini (a negative prompt folded into the text), FLUX (no negative prompt; guidance) and
Stable Diffusion (negative prompt, CFG in the recommended range).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from typing import Any

from limner.catalog import ModelSpec
from limner.errors import InvalidRequestError
from limner.prompting.library import Library, load_library
from limner.types import ImageRequest

__all__ = ["WEIGHT_SYNTAX", "dialect_for", "fold_negative", "strip_weights", "translate"]

Fields = dict[str, Any]
# (word:1.2), ((word)), [word] — prompt-weight syntax of the Stable Diffusion web UIs.
WEIGHT_SYNTAX = re.compile(r"\(([^():]+):\s*[0-9.]+\)|\({2,}([^()]+)\){2,}|\[([^\[\]]+)\]")


def dialect_for(spec: ModelSpec, library: Library | None = None) -> str:
    """natural | midjourney | ideogram | flux | sd, from the catalog entry."""
    if spec.wire.get("prompt_dialect"):
        return str(spec.wire["prompt_dialect"])
    data = (library or load_library()).data
    if spec.family in data.get("by_family", {}):
        return str(data["by_family"][spec.family])
    ident = f"{spec.id} {spec.family}".lower()
    for needle, dialect in (("flux", "flux"), ("ideogram", "ideogram"), ("midjourney", "midjourney"),
                            ("stable-diffusion", "sd"), ("sdxl", "sd"), ("sd3", "sd"), ("sd-", "sd")):  # fmt: skip
        if needle in ident:
            return dialect
    return str(data.get("by_provider", {}).get(spec.provider, "natural"))


def strip_weights(prompt: str) -> str:
    return WEIGHT_SYNTAX.sub(lambda m: next(g for g in m.groups() if g), prompt)


def fold_negative(prompt: str, negative: str) -> str:
    """The text a negative prompt becomes for a model that takes none (as core validation does)."""
    return f"{prompt}. Avoid: {negative}."


def _common(request: ImageRequest, spec: ModelSpec, warnings: list[str]) -> str:
    prompt = request.prompt
    if WEIGHT_SYNTAX.search(prompt):
        prompt = strip_weights(prompt)
        warnings.append(f"{spec.ref} ignores (word:1.2) weights: the markup was removed.")
    return prompt


def _natural(request: ImageRequest, spec: ModelSpec, lib: Library, warnings: list[str]) -> Fields:
    prompt = _common(request, spec, warnings)
    if request.negative_prompt:
        prompt = fold_negative(prompt, request.negative_prompt)
        warnings.append(
            f"{spec.ref} takes no negative prompt: it was folded into the prompt as 'Avoid: ...'; "
            "describing what you want works better."
        )
    fields: Fields = {"prompt": prompt}
    for name in ("size", "aspect_ratio", "quality", "style", "seed"):
        if getattr(request, name) is not None:
            fields[name] = getattr(request, name)
    return fields


def _range_check(value: float, bounds: list[float], label: str, spec: ModelSpec, warnings: list[str]) -> None:
    low, high = bounds
    if not low <= value <= high:
        warnings.append(f"{label} {value:g} is outside the range recommended for {spec.ref} ({low:g}-{high:g}).")


def _flux(request: ImageRequest, spec: ModelSpec, lib: Library, warnings: list[str]) -> Fields:
    settings = lib.dialect_settings("flux")
    prompt = _common(request, spec, warnings)
    fields: Fields = {}
    if request.negative_prompt:
        prompt = fold_negative(prompt, request.negative_prompt)
        warnings.append(
            f"{spec.ref} takes no negative prompt and follows prompts literally: the negative was "
            "folded in as 'Avoid: ...', which may bring those things in; describe what you want instead."
        )
    fields["prompt"] = prompt
    if spec.guidance:
        guidance = request.guidance if request.guidance is not None else settings.get("guidance_default", 3.5)
        _range_check(float(guidance), settings.get("guidance_range", [1.5, 5.0]), "Guidance", spec, warnings)
        fields["guidance"] = guidance
    elif request.guidance is not None:
        warnings.append(f"{spec.ref} takes no guidance: the value was not sent.")
    _passthrough(request, spec, fields, ("aspect_ratio", "size", "seed", "steps"))
    return fields


def _sd(request: ImageRequest, spec: ModelSpec, lib: Library, warnings: list[str]) -> Fields:
    settings = lib.dialect_settings("sd")
    supports_weights = spec.provider in ("local", "comfyui") or bool(spec.wire.get("prompt_weights"))
    prompt = request.prompt if supports_weights else _common(request, spec, warnings)
    fields: Fields = {"prompt": prompt}
    if request.negative_prompt:
        fields["negative_prompt"] = request.negative_prompt
    else:
        warnings.append(f"{spec.ref} works best with a negative prompt: try --negative-preset general.")
    cfg = request.guidance if request.guidance is not None else settings.get("cfg_default", 4.5)
    _range_check(float(cfg), settings.get("cfg_range", [4.0, 7.0]), "CFG scale", spec, warnings)
    fields["cfg_scale"] = cfg
    if spec.steps or request.steps is not None:
        fields["steps"] = request.steps if request.steps is not None else settings.get("steps_default", 28)
    _passthrough(request, spec, fields, ("aspect_ratio", "size", "seed"))
    return fields


def _ideogram_aspect(ratio: str, spec: ModelSpec) -> str:
    w, _, h = ratio.partition(":")
    legacy = spec.wire.get("aspect_format") == "enum" or "v2" in spec.id.lower() or spec.id.upper().startswith("V_")
    return f"ASPECT_{w}_{h}" if legacy else f"{w}x{h}"


def _ideogram(request: ImageRequest, spec: ModelSpec, lib: Library, warnings: list[str]) -> Fields:
    settings = lib.dialect_settings("ideogram")
    prompt = _common(request, spec, warnings)
    fields: Fields = {"prompt": prompt}
    if request.aspect_ratio:
        fields["aspect_ratio"] = _ideogram_aspect(request.aspect_ratio, spec)
    style = (request.style or request.provider_options.get("style_type") or "").upper().replace(" ", "_")
    if style and style not in settings.get("style_types", []):
        raise InvalidRequestError(
            f"Ideogram style type {style!r} is unknown.", param="style",
            hint=f"Allowed: {', '.join(settings.get('style_types', []))}.",
        )
    if not style:
        lowered = prompt.lower()
        style = next((s for s, words in settings.get("style_words", {}).items() if any(w in lowered for w in words)), "AUTO")
    fields["style_type"] = style
    magic = str(request.provider_options.get("magic_prompt", "AUTO")).upper()
    if magic not in settings.get("magic_prompt", ["AUTO", "ON", "OFF"]):
        raise InvalidRequestError(f"magic_prompt must be AUTO, ON or OFF; got {magic!r}.", param="magic_prompt")
    fields["magic_prompt"] = magic
    if request.negative_prompt:
        fields["negative_prompt"] = request.negative_prompt
    if request.seed is not None:
        fields["seed"] = request.seed
    return fields


def _mj_number(options: dict[str, Any], key: str, bounds: list[float] | None) -> float | None:
    if key not in options or options[key] is None:
        return None
    try:
        value = float(options[key])
    except (TypeError, ValueError):
        raise InvalidRequestError(f"--{key} must be a number; got {options[key]!r}.", param=key) from None
    if bounds and not bounds[0] <= value <= bounds[1]:
        raise InvalidRequestError(f"--{key} must be between {bounds[0]:g} and {bounds[1]:g}; got {value:g}.", param=key)
    return value


def midjourney_prompt(request: ImageRequest, settings: dict[str, Any]) -> str:
    """The prompt with Midjourney's flags (--ar --no --seed --stylize --chaos --style raw --tile
    --q --v --cref --cw --sref --sw), as typed after /imagine."""
    opts = dict(request.provider_options)
    flags: list[str] = []
    if request.aspect_ratio:
        flags.append(f"--ar {request.aspect_ratio}")
    if request.negative_prompt:
        flags.append(f"--no {request.negative_prompt}")
    if request.seed is not None:
        flags.append(f"--seed {request.seed}")
    for key, bounds in (("stylize", settings.get("stylize_range")), ("chaos", settings.get("chaos_range"))):
        value = _mj_number(opts, key, bounds)
        if value is not None:
            flags.append(f"--{key} {value:g}")
    if opts.get("raw") or (request.style or "").lower() == "raw":
        flags.append("--style raw")
    if opts.get("tile"):
        flags.append("--tile")
    quality = _mj_number(opts, "q", None) if "q" in opts else _mj_number(opts, "quality", None)
    if quality is not None:
        if quality not in settings.get("quality_values", [0.25, 0.5, 1, 2, 4]):
            raise InvalidRequestError(f"--q must be one of 0.25, 0.5, 1, 2, 4; got {quality:g}.", param="q")
        flags.append(f"--q {quality:g}")
    version = opts.get("v") or opts.get("version")
    if version:
        flags.append(f"--v {version}")
    for ref, weight, bounds in (("cref", "cw", settings.get("cw_range")), ("sref", "sw", settings.get("sw_range"))):
        if opts.get(ref):
            flags.append(f"--{ref} {opts[ref]}")
        value = _mj_number(opts, weight, bounds)
        if value is not None:
            flags.append(f"--{weight} {value:g}")
    return " ".join([request.prompt.strip(), *flags])


def _midjourney(request: ImageRequest, spec: ModelSpec, lib: Library, warnings: list[str]) -> Fields:
    builder = _external_midjourney_builder()
    if builder is not None:
        return {"prompt": builder(request, spec)}
    if "--" in request.prompt:
        warnings.append("The prompt already holds '--' flags; limner adds its own from the options.")
    return {"prompt": midjourney_prompt(request, lib.dialect_settings("midjourney"))}


def _external_midjourney_builder() -> Callable[[ImageRequest, ModelSpec], str] | None:
    """The Midjourney provider's own flag builder when it ships one, so both agree."""
    name = "limner.providers.midjourney_flags"
    if importlib.util.find_spec(name) is None:
        return None
    module = importlib.import_module(name)
    builder = getattr(module, "build_prompt", None)
    return builder if callable(builder) else None


def _passthrough(request: ImageRequest, spec: ModelSpec, fields: Fields, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(request, name)
        if value is None:
            continue
        if name == "seed" and not spec.seed:
            continue
        fields[name] = value


DIALECTS: dict[str, Callable[[ImageRequest, ModelSpec, Library, list[str]], Fields]] = {
    "natural": _natural,
    "flux": _flux,
    "sd": _sd,
    "ideogram": _ideogram,
    "midjourney": _midjourney,
}


def translate(request: ImageRequest, spec: ModelSpec, library: Library | None = None) -> tuple[Fields, list[str]]:
    """The prompt fields ``spec`` takes natively for ``request``, and the warnings."""
    library = library or load_library()
    warnings: list[str] = []
    dialect = dialect_for(spec, library)
    fields = DIALECTS.get(dialect, _natural)(request, spec, library, warnings)
    return fields, warnings
