"""Translate a limner request into a Midjourney prompt with ``--`` parameters.

Pure and I/O-free, so that both the Midjourney provider and ``limner prompt for`` use it:

    >>> text, warnings = midjourney_prompt(ImageRequest(prompt="a fox", aspect_ratio="16:9", seed=7))
    >>> text
    'a fox --ar 16:9 --seed 7'

Reference images become ``--sref`` / ``--cref`` (``--oref`` on V7, which dropped ``--cref``)
once they have URLs; pass those in ``reference_urls`` (same order as ``request.references``).
Content references are image prompts: their URLs go in front of the text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from limner import errors
from limner.types import ImageRequest

__all__ = ["FLAG_OPTIONS", "midjourney_prompt"]

# provider_options keys that map to flags: key -> (flag, min, max) for numbers, or None for switches.
FLAG_OPTIONS: dict[str, tuple[str, float, float] | None] = {
    "stylize": ("--stylize", 0, 1000),
    "chaos": ("--chaos", 0, 100),
    "weird": ("--weird", 0, 3000),
    "image_weight": ("--iw", 0, 3),
    "tile": None,
    "raw": None,
    "draft": None,
    "niji": None,
}
QUALITIES = {"0.25", "0.5", "1", "2", "4"}
SEED_MAX = 4_294_967_295


def _flag_present(text: str, flag: str) -> bool:
    return re.search(rf"(^|\s){re.escape(flag)}(\s|$)", text) is not None


def _aspect(request: ImageRequest) -> str | None:
    if request.aspect_ratio:
        return request.aspect_ratio
    dims = request.dimensions()
    if dims is None:
        return None
    divisor = math.gcd(*dims)
    return f"{dims[0] // divisor}:{dims[1] // divisor}"


def _number(key: str, value: Any, low: float, high: float) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise errors.InvalidRequestError(
            f"{key} must be a number; got {value!r}.", param=f"provider_options.{key}"
        ) from None
    if not low <= number <= high:
        raise errors.InvalidRequestError(
            f"{key} must be between {low:g} and {high:g}; got {value}.",
            param=f"provider_options.{key}",
        )
    return f"{number:g}"


def _version_number(version: str | None) -> float | None:
    try:
        return float(version) if version else None
    except ValueError:
        return None


def _reference_flags(
    request: ImageRequest, reference_urls: Sequence[str], version: str | None, warnings: list[str]
) -> tuple[list[str], list[str]]:
    """(image-prompt URLs for the front of the prompt, flags for the end)."""
    if request.references and len(reference_urls) != len(request.references):
        raise errors.InvalidRequestError(
            "Midjourney takes reference images as URLs; upload them first.", param="references"
        )
    v7 = (_version_number(version) or 7.0) >= 7
    front: list[str] = []
    groups: dict[str, tuple[list[str], list[float]]] = {}
    for ref, url in zip(request.references, reference_urls, strict=True):
        if ref.kind == "content":
            front.append(url)
            continue
        if ref.kind == "style":
            flag, weight_flag = "--sref", "--sw"
        elif v7:
            flag, weight_flag = "--oref", "--ow"
            if "--oref" not in groups:
                warnings.append(
                    "Midjourney V7 has no --cref: the character reference was sent as an omni reference (--oref)."
                )
        else:
            flag, weight_flag = "--cref", "--cw"
        urls, weights = groups.setdefault(flag, ([], []))
        urls.append(url)
        if ref.weight is not None:
            weights.append(ref.weight)
    flags: list[str] = []
    limits = {"--sw": 1000, "--cw": 100, "--ow": 1000}
    for flag, (urls, weights) in groups.items():
        flags += [flag, *urls]
        if weights:
            weight_flag = {"--sref": "--sw", "--cref": "--cw", "--oref": "--ow"}[flag]
            flags += [weight_flag, _number(weight_flag, max(weights), 0, limits[weight_flag])]
    return front, flags


def _option_flags(options: dict[str, Any]) -> list[list[str]]:
    """Flags from provider_options (stylize, chaos, tile, ...), range-checked."""
    out: list[list[str]] = []
    for key, spec in FLAG_OPTIONS.items():
        value = options.get(key)
        if key == "raw" or value is None or value is False:
            continue
        out.append(
            [f"--{key}"] if spec is None else [spec[0], _number(key, value, spec[1], spec[2])]
        )
    return out


def midjourney_prompt(
    request: ImageRequest, *, version: str | None = None, reference_urls: Sequence[str] = ()
) -> tuple[str, list[str]]:
    """The Midjourney prompt for ``request`` and warnings about what was translated.

    ``version`` ("6.1", "7", or None for the account default) adds ``--v``. Flags already
    written in the prompt win over the request's fields, with a warning.
    """
    warnings: list[str] = []
    text = request.prompt.strip()
    flags: list[str] = []

    def add(flag: str, *values: str) -> None:
        if _flag_present(text, flag):
            warnings.append(f"The prompt already sets {flag}; the request's value was not added.")
            return
        flags.extend([flag, *values])

    aspect = _aspect(request)
    if aspect:
        add("--ar", aspect)
    if request.negative_prompt:
        add("--no", request.negative_prompt.strip())
    if request.seed is not None:
        if not 0 <= request.seed <= SEED_MAX:
            raise errors.InvalidRequestError(
                f"Midjourney seeds are 0-{SEED_MAX}; got {request.seed}.", param="seed"
            )
        add("--seed", str(request.seed))
    if request.quality:
        if request.quality not in QUALITIES:
            raise errors.InvalidRequestError(
                f"Midjourney quality must be one of {', '.join(sorted(QUALITIES))}.",
                param="quality",
            )
        add("--q", request.quality)
    options = request.provider_options
    if request.style == "raw" or options.get("raw"):
        add("--style", "raw")
    elif request.style:
        raise errors.InvalidRequestError(
            f"Midjourney style {request.style!r} is not supported.", param="style", hint="Use raw."
        )
    for flag, *values in _option_flags(options):
        add(flag, *values)
    if request.steps is not None or request.guidance is not None:
        warnings.append("Midjourney takes no steps or guidance: they were not sent.")
    front, ref_flags = _reference_flags(request, reference_urls, version, warnings)
    flags += ref_flags
    if version and not options.get("niji"):
        add("--v", version)
    return " ".join([*front, text, *flags]).strip(), warnings
