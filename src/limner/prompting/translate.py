"""Per-model prompt translation: what a request becomes in each model family's own terms.

``translate(request, spec)`` returns the prompt fields a model takes natively and the warnings
for whatever had to change: Midjourney's flags, Ideogram's enums, natural language for OpenAI
and Gemini (a negative prompt folded into the text), FLUX (no negative prompt; guidance) and
Stable Diffusion (negative prompt, CFG in the recommended range).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from limner.catalog import ModelSpec
from limner.errors import InvalidRequestError
from limner.prompting.library import Library, load_library
from limner.types import ImageRequest, Operation

__all__ = ["WEIGHT_SYNTAX", "dialect_for", "strip_weights", "translate"]

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


def _weights_note(request: ImageRequest, spec: ModelSpec, warnings: list[str]) -> None:
    if WEIGHT_SYNTAX.search(request.prompt):
        warnings.append(
            f"{spec.ref} ignores (word:1.2) weights: the markup is read as text. "
            "Put what matters most first instead."
        )


def _natural(request: ImageRequest, spec: ModelSpec, lib: Library, warnings: list[str]) -> Fields:
    _weights_note(request, spec, warnings)
    fields: Fields = {"prompt": request.prompt}
    _passthrough(request, spec, fields, ("size", "aspect_ratio", "quality", "style", "seed"))
    return fields


def _range_check(
    value: float, bounds: list[float], label: str, spec: ModelSpec, warnings: list[str]
) -> None:
    low, high = bounds
    if not low <= value <= high:
        warnings.append(
            f"{label} {value:g} is outside the range recommended for {spec.ref} ({low:g}-{high:g})."
        )


def _guidance(
    request: ImageRequest, spec: ModelSpec, settings: dict[str, Any], keys: tuple[str, str, str],
    warnings: list[str], fields: Fields,
) -> None:  # fmt: skip
    """Check the guidance against the recommended range, or recommend one when unset."""
    default_key, range_key, label = keys
    bounds = settings.get(range_key, [1.0, 10.0])
    if request.guidance is not None:
        _range_check(float(request.guidance), bounds, label, spec, warnings)
        fields[label.lower().replace(" ", "_")] = request.guidance
    elif spec.guidance:
        warnings.append(
            f"No {label.lower()} set: the provider's default applies; the guide recommends "
            f"{bounds[0]:g}-{bounds[1]:g} (try --guidance {settings.get(default_key, bounds[0]):g})."
        )


def _flux(request: ImageRequest, spec: ModelSpec, lib: Library, warnings: list[str]) -> Fields:
    _weights_note(request, spec, warnings)
    fields: Fields = {"prompt": request.prompt}
    keys = ("guidance_default", "guidance_range", "Guidance")
    _guidance(request, spec, lib.dialect_settings("flux"), keys, warnings, fields)
    _passthrough(request, spec, fields, ("aspect_ratio", "size", "seed", "steps"))
    return fields


def _sd(request: ImageRequest, spec: ModelSpec, lib: Library, warnings: list[str]) -> Fields:
    if not (spec.provider in ("local", "comfyui") or spec.wire.get("prompt_weights")):
        _weights_note(request, spec, warnings)
    fields: Fields = {"prompt": request.prompt}
    if request.negative_prompt:
        fields["negative_prompt"] = request.negative_prompt
    elif spec.negative_prompt:
        warnings.append(
            f"{spec.ref} works best with a negative prompt: try --negative-preset general."
        )
    _guidance(
        request,
        spec,
        lib.dialect_settings("sd"),
        ("cfg_default", "cfg_range", "CFG scale"),
        warnings,
        fields,
    )
    _passthrough(request, spec, fields, ("steps", "aspect_ratio", "size", "seed"))
    return fields


def _ideogram_aspect(ratio: str, spec: ModelSpec) -> str:
    w, _, h = ratio.partition(":")
    legacy = (
        spec.wire.get("aspect_format") == "enum"
        or "v2" in spec.id.lower()
        or spec.id.upper().startswith("V_")
    )
    return f"ASPECT_{w}_{h}" if legacy else f"{w}x{h}"


def _ideogram(request: ImageRequest, spec: ModelSpec, lib: Library, warnings: list[str]) -> Fields:
    settings = lib.dialect_settings("ideogram")
    _weights_note(request, spec, warnings)
    fields: Fields = {"prompt": request.prompt}
    if request.aspect_ratio:
        fields["aspect_ratio"] = _ideogram_aspect(request.aspect_ratio, spec)
    allowed = settings.get("style_types", [])
    style = (request.style or request.provider_options.get("style_type") or "").upper()
    style = style.replace(" ", "_")
    if style and style not in allowed:
        raise InvalidRequestError(
            f"Ideogram style type {style!r} is unknown.",
            param="style",
            hint=f"Allowed: {', '.join(allowed)}.",
        )
    if style:
        fields["style_type"] = style
    else:
        lowered = request.prompt.lower()
        words = settings.get("style_words", {})
        fitting = next((s for s, ws in words.items() if any(w in lowered for w in ws)), None)
        # Suggest the style in the catalog's own spelling, and only one the model offers.
        offered = {st.upper(): st for st in spec.styles} if spec.styles else {}
        if fitting and (not spec.styles or fitting in offered):
            spelled = offered.get(fitting, fitting)
            warnings.append(
                f"No style type set (AUTO); {fitting} suits this prompt: --style {spelled}."
            )
    if "magic_prompt" in request.provider_options:
        magic = str(request.provider_options["magic_prompt"]).upper()
        if magic not in settings.get("magic_prompt", ["AUTO", "ON", "OFF"]):
            raise InvalidRequestError(
                f"magic_prompt must be AUTO, ON or OFF; got {magic!r}.", param="magic_prompt"
            )
        fields["magic_prompt"] = magic
    if request.negative_prompt:
        fields["negative_prompt"] = request.negative_prompt
    if request.seed is not None:
        fields["seed"] = request.seed
    return fields


def _mj_weight(options: dict[str, Any], key: str, high: float) -> str:
    try:
        value = float(options[key])
    except (TypeError, ValueError):
        raise InvalidRequestError(
            f"--{key} must be a number; got {options[key]!r}.", param=key
        ) from None
    if not 0 <= value <= high:
        raise InvalidRequestError(
            f"--{key} must be between 0 and {high:g}; got {value:g}.", param=key
        )
    return f"{value:g}"


def _url_reference_flags(options: dict[str, Any]) -> list[str]:
    """--cref/--cw and --sref/--sw for references given as URLs (``--option cref=URL``)."""
    flags: list[str] = []
    for ref, weight, high in (("cref", "cw", 100.0), ("sref", "sw", 1000.0)):
        if options.get(ref):
            flags += [f"--{ref}", str(options[ref])]
            if options.get(weight) is not None:
                flags += [f"--{weight}", _mj_weight(options, weight, high)]
    return flags


def _midjourney(
    request: ImageRequest, spec: ModelSpec, lib: Library, warnings: list[str]
) -> Fields:
    # The Midjourney provider builds its prompts with midjourney_flags; so does this, so the
    # two never disagree.
    from limner.providers.midjourney_flags import midjourney_prompt

    options = request.provider_options
    version = options.get("v") or options.get("version") or spec.wire.get("version")
    text, more = midjourney_prompt(request, version=str(version) if version else None)
    warnings.extend(more)
    return {"prompt": " ".join([text, *_url_reference_flags(options)])}


def _passthrough(
    request: ImageRequest, spec: ModelSpec, fields: Fields, names: tuple[str, ...]
) -> None:
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


def translate(
    request: ImageRequest,
    spec: ModelSpec,
    library: Library | None = None,
    op: Operation = Operation.GENERATE,
) -> tuple[Fields, list[str]]:
    """The fields ``spec`` is sent for ``request``, and the warnings and advice.

    The request first goes through core validation (``limner.validate.check_request``), the
    same step every generation takes: that is where a negative prompt is folded into the text
    for a model that takes none and a size becomes an aspect ratio, so this view and the real
    request never disagree. The dialect then names the fields in the model's own terms.
    """
    from limner.validate import check_request

    library = library or load_library()
    checked, warnings = check_request(op, request, spec)
    dialect = dialect_for(spec, library)
    if request.negative_prompt and checked.negative_prompt is None and dialect == "flux":
        warnings.append(
            "FLUX follows prompts literally: 'Avoid: ...' may bring those things in; "
            "describe what you want instead."
        )
    fields = DIALECTS.get(dialect, _natural)(checked, spec, library, warnings)
    return fields, warnings
