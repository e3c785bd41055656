"""Which model to use: catalog models ranked for a prompt or use case, with the reasons.

The "when to use each" table is data (``prompting/data/use_cases.toml``); capabilities, text
rendering grades, traits, prices and licences come from the catalog.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from limner.catalog import Catalog, ModelSpec, get_catalog
from limner.errors import UserError
from limner.pricing import estimate_cost
from limner.prompting.library import Library, load_library
from limner.types import ImageRequest, Operation

__all__ = [
    "FEATURES",
    "Recommendation",
    "detect_use_cases",
    "feature_matrix",
    "parse_needs",
    "recommend",
]

GRADE_POINTS = {"excellent": 3.0, "good": 1.5, "moderate": 0.0, "weak": -2.0, "none": -4.0}
QUOTED = re.compile(r"\"[^\"]+\"|“[^”]+”")
NEED_ALIASES = {"inpainting": "inpaint", "outpainting": "outpaint", "variations": "variation",
                "img2img": "edit", "cref": "style-reference", "sref": "style-reference",
                "background-removal": "remove-background", "upscaling": "upscale"}  # fmt: skip


@dataclass
class Recommendation:
    model: str
    score: float
    reasons: list[str]
    price_per_image_usd: float | None
    commercial_use: bool
    licence: str
    price_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_needs(text: str | list[str] | None) -> list[Operation]:
    """``inpaint,controlnet`` as operations; unknown names raise ``UserError``."""
    items = text.split(",") if isinstance(text, str) else list(text or [])
    needs = []
    for item in (i.strip().lower() for i in items if i.strip()):
        name = NEED_ALIASES.get(item, item)
        try:
            needs.append(Operation(name))
        except ValueError:
            raise UserError(
                f"Unknown capability {item!r} in --needs.",
                hint=f"Use any of: {', '.join(o.value for o in Operation)}.",
            ) from None
    return needs


def detect_use_cases(prompt: str, library: Library) -> list[str]:
    """Use cases a prompt reveals: quoted text, then the use cases' words, in table order."""
    lowered = prompt.lower()
    found = []
    for name, case in library.use_cases.items():
        quoted = bool(case.get("quoted_text")) and bool(QUOTED.search(prompt))
        words = any(
            re.search(rf"(?<!\w){re.escape(w.lower())}(?!\w)", lowered)
            for w in case.get("prompt_words", [])
        )
        if quoted or words:
            found.append(name)
    return found


def _price_note(spec: ModelSpec) -> str:
    price = spec.price
    if price is None:
        return "price unknown"
    if price.kind == "subscription":
        return f"subscription ${price.monthly_usd:g}/month" if price.monthly_usd else "subscription"
    if price.kind == "free":
        return "free (your hardware)"
    each = _price(spec)
    return f"${each:.4f}/image" if each is not None else price.kind


def _price(spec: ModelSpec) -> float | None:
    if spec.price is None:
        return None
    return estimate_cost(spec, ImageRequest(prompt="x"), 1)


def _score_case(
    spec: ModelSpec, name: str, case: dict[str, Any], cheapest: float, reasons: list[str]
) -> float:
    score = 0.0
    label = case.get("label", name)
    if set(case.get("catalog_tags", [name])) & set(spec.use_cases):
        score += 3
        reasons.append(f"listed for {label.lower()}")
    preferred = list(case.get("prefer_families", []))
    rank = next((i for i, f in enumerate(preferred) if spec.family.startswith(f)), None)
    if spec.family and rank is not None:
        score += 2 + 0.5 * (1 - rank / len(preferred))  # the guide lists its favourite first
        reasons.append(
            f"a family the guide recommends for {label.lower()} ({case.get('seed_recommendation', '')})"
        )
    if case.get("text_rendering"):
        points = GRADE_POINTS[spec.text_rendering]
        score += points
        if points > 0 or points < 0:
            reasons.append(f"text rendering {spec.text_rendering}")
    for trait, wanted in (case.get("trait") or {}).items():
        have = spec.traits.get(trait)
        if have == wanted:
            score += 2
            reasons.append(f"{trait} {have}")
        elif have:
            score += GRADE_POINTS.get(have, 0) / 3
    for op in case.get("operations", []):
        if spec.supports(op):
            score += 1.5
            reasons.append(f"can {op}")
    price = _price(spec)
    if case.get("cheap") and price is not None:
        score += 3 * cheapest / price if price > 0 else 3
        reasons.append(f"${price:.4f}/image" if price > 0 else "free")
    return score


def _exclusion(
    spec: ModelSpec, needs: list[Operation], commercial: bool, budget: float | None
) -> str | None:
    if spec.is_retired():
        return "retired"
    # Without --needs the question is which model should *make* the image.
    missing = [n.value for n in needs or [Operation.GENERATE] if not spec.supports(n)]
    if missing:
        return f"cannot {', '.join(missing)}"
    if commercial and not spec.commercial_use:
        return f"no commercial use ({spec.licence})"
    price = _price(spec)
    if budget is not None and price is not None and price > budget:
        return f"${price:.4f}/image is over the budget of ${budget:.4f}"
    return None


def recommend(
    prompt: str = "",
    *,
    use_cases: list[str] | None = None,
    budget: float | None = None,
    commercial: bool = False,
    needs: list[Operation] | None = None,
    limit: int = 5,
    catalog: Catalog | None = None,
    library: Library | None = None,
) -> list[Recommendation]:
    """Catalog models ranked for ``prompt`` and/or ``use_cases``, best first.

    ``budget`` is the most to pay per image (USD); ``needs`` are operations a model must do.
    """
    library = library or load_library()
    catalog = catalog or get_catalog()
    if budget is not None and not budget > 0:
        raise UserError(
            f"The budget must be a positive number of US dollars per image; got {budget}."
        )
    cases = list(use_cases or [])
    for name in cases:
        library.use_case(name)  # unknown names raise with the list of known ones
    cases = cases or detect_use_cases(prompt, library) or ["general"]
    candidates = [s for s in catalog if _exclusion(s, needs or [], commercial, budget) is None]
    prices = [p for p in (_price(s) for s in candidates) if p]
    cheapest = min(prices) if prices else 0.0
    ranked = []
    for spec in candidates:
        reasons: list[str] = []
        score = sum(
            _score_case(spec, c, library.use_case(c), cheapest, reasons)
            for c in cases
            if c in library.use_cases
        )
        price = _price(spec)
        if price is not None and price > 0:
            score += 0.5 * cheapest / price  # a tie-breaker toward the cheaper model
        for op in needs or []:
            reasons.append(f"can {op.value}")
        if commercial:
            reasons.append(f"commercial use allowed ({spec.licence})")
        unique = list(dict.fromkeys(reasons)) or ["general-purpose"]
        ranked.append(
            Recommendation(
                spec.ref,
                round(score, 3),
                unique,
                price,
                spec.commercial_use,
                spec.licence,
                _price_note(spec),
            )
        )
    ranked.sort(
        key=lambda r: (
            -r.score,
            r.price_per_image_usd if r.price_per_image_usd is not None else 1e9,
            r.model,
        )
    )
    return ranked[:limit] if limit else ranked


def excluded(
    *,
    budget: float | None = None,
    commercial: bool = False,
    needs: list[Operation] | None = None,
    catalog: Catalog | None = None,
) -> dict[str, str]:
    """Models left out and why (for ``--explain``)."""
    catalog = catalog or get_catalog()
    return {s.ref: why for s in catalog if (why := _exclusion(s, needs or [], commercial, budget))}


# -- the feature matrix ------------------------------------------------------------------------
def _yes_no(spec: ModelSpec, op: Operation, trait: str) -> str:
    if spec.supports(op):
        return "Yes"
    return spec.traits.get(trait, "No").replace("no", "No").replace("yes", "Yes")


FEATURES: list[tuple[str, Any]] = [
    ("Text Rendering", lambda s: s.text_rendering.capitalize()),
    ("Photorealism", lambda s: s.traits.get("photorealism", "-").capitalize()),
    ("Artistic Styles", lambda s: s.traits.get("artistic", "-").capitalize()),
    ("ControlNet", lambda s: _yes_no(s, Operation.CONTROLNET, "controlnet")),
    ("Inpainting", lambda s: _yes_no(s, Operation.INPAINT, "inpainting")),
    ("Outpainting", lambda s: _yes_no(s, Operation.OUTPAINT, "outpainting")),
    ("API Access", lambda s: s.traits.get("api", s.provider)),
    (
        "Self-hosting",
        lambda s: "Yes" if s.self_hostable else s.traits.get("self_hosting", "No").capitalize(),
    ),
    ("Commercial Use", lambda s: "Yes" if s.commercial_use else f"No ({s.licence})"),
    (
        "Price / image",
        lambda s: (
            f"${p:.4f}"
            if (p := _price(s)) is not None
            else (s.price.note or s.price.kind)
            if s.price
            else "-"
        ),
    ),
    ("Status", lambda s: s.status()),
]


def feature_matrix(specs: list[ModelSpec]) -> dict[str, dict[str, str]]:
    """feature -> model -> value, the seed's comparison table for any models."""
    return {name: {s.ref: str(get(s)) for s in specs} for name, get in FEATURES}
