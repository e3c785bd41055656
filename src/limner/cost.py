"""What images cost: estimates before spending, the ledger of what was spent, and monthly plans.

Prices come from the catalog (``limner.pricing``); spend comes from the generation log.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from limner.catalog import Catalog, ModelSpec, get_catalog
from limner.errors import UserError
from limner.pricing import estimate_cost
from limner.prompting.library import Library, load_library
from limner.store import LogEntry, Store
from limner.types import ImageRequest, Operation
from limner.validate import check_request

__all__ = [
    "Estimate", "PlanLine", "ReportRow", "estimate", "parse_since", "parse_volume", "plan_scenario",
    "plan_scenarios", "report",
]  # fmt: skip

GROUPINGS = ("model", "provider", "day", "tag")
HOURS_PER_MONTH = 720  # a GPU rented around the clock for 30 days


@dataclass
class Estimate:
    model: str
    n: int
    size: str | None
    quality: str | None
    per_image_usd: float | None
    total_usd: float | None
    price_kind: str | None
    note: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(
    spec: ModelSpec,
    n: int = 1,
    size: str | None = None,
    quality: str | None = None,
    catalog: Catalog | None = None,
) -> Estimate:
    """The list price of ``n`` images, after the same checks a real request gets."""
    if n < 1:
        raise UserError(f"The number of images must be at least 1; got {n}.")
    request, warnings = check_request(
        Operation.GENERATE,
        ImageRequest(prompt="estimate", n=min(n, 64), size=size, quality=quality),
        spec,
        catalog,
    )
    one = estimate_cost(spec, request, 1)
    price = spec.price
    note = price.note if price else "The catalog has no price for this model."
    if price is not None and price.kind == "per_token":
        note = (
            note + " " if note else ""
        ) + "Billed by tokens; the estimate is the per-image list price."
    if price is not None and price.kind == "subscription":
        note = f"Subscription: ${price.monthly_usd or 0:.2f}/month, not per image."
    return Estimate(
        model=spec.ref, n=n, size=request.size, quality=request.quality, per_image_usd=one,
        total_usd=round(one * n, 6) if one is not None else None,
        price_kind=price.kind if price else None, note=note.strip(), warnings=warnings,
    )  # fmt: skip


# -- the ledger --------------------------------------------------------------------------------
def parse_since(text: str | None, now: float | None = None) -> float | None:
    """``30d``, ``12h``, ``2w``, ``1m`` (30 days) or an ISO date, as a timestamp."""
    if not text:
        return None
    now = now if now is not None else time.time()
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([hdwm])\s*", text)
    if match:
        seconds = {"h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400}[match.group(2)]
        return now - float(match.group(1)) * seconds
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UserError(
            f"--since {text!r} is not a duration or a date.",
            hint="Use e.g. 30d, 12h, 2w or 2026-11-01.",
        ) from None


@dataclass
class ReportRow:
    key: str
    requests: int = 0
    images: int = 0
    spend_usd: float = 0.0
    cache_hits: int = 0
    saved_usd: float = 0.0
    failed: int = 0
    refused: int = 0

    @property
    def average_usd(self) -> float | None:
        paid = self.images - self.cached_images
        return round(self.spend_usd / paid, 6) if paid > 0 else None

    cached_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spend_usd"] = round(self.spend_usd, 6)
        data["saved_usd"] = round(self.saved_usd, 6)
        data["average_usd"] = self.average_usd
        return data


def _keys(entry: LogEntry, by: str) -> list[str]:
    if by == "model":
        return [entry.model]
    if by == "provider":
        return [entry.provider]
    if by == "day":
        return [datetime.fromtimestamp(entry.created_at).date().isoformat()]
    return list(entry.tags or []) or ["(untagged)"]


def _list_price(entry: LogEntry, catalog: Catalog) -> float:
    """What the cached images of ``entry`` would have cost at list price."""
    spec = catalog.find(entry.model)
    if spec is None:
        return 0.0
    params = entry.params or {}
    request = ImageRequest(
        prompt=entry.prompt or "x", size=params.get("size"), quality=params.get("quality")
    )
    return estimate_cost(spec, request, len(entry.images) or int(params.get("n", 1))) or 0.0


def report(
    store: Store, *, since: float | None = None, by: str = "model", catalog: Catalog | None = None
) -> list[ReportRow]:
    """Spend, images, average per image, cache hits and what they saved, grouped by ``by``."""
    if by not in GROUPINGS:
        raise UserError(f"Cannot group by {by!r}.", hint=f"Use one of: {', '.join(GROUPINGS)}.")
    catalog = catalog or get_catalog()
    rows: dict[str, ReportRow] = {}
    for entry in store.search(since=since, limit=None):
        for key in _keys(entry, by):
            row = rows.setdefault(key, ReportRow(key))
            row.requests += 1
            if entry.status == "refused":
                row.refused += 1
                continue
            if entry.status != "ok":
                row.failed += 1
                continue
            row.images += len(entry.images)
            if entry.cache_hit:
                row.cache_hits += 1
                row.cached_images += len(entry.images)
                row.saved_usd += _list_price(entry, catalog)
            else:
                row.spend_usd += entry.cost_usd or 0.0
    return sorted(rows.values(), key=lambda r: (-r.spend_usd, r.key))


def report_totals(rows: list[ReportRow]) -> ReportRow:
    total = ReportRow("total")
    for row in rows:
        for name in (
            "requests",
            "images",
            "spend_usd",
            "cache_hits",
            "saved_usd",
            "failed",
            "refused",
            "cached_images",
        ):
            setattr(total, name, getattr(total, name) + getattr(row, name))
    return total


# -- monthly plans -----------------------------------------------------------------------------
def parse_volume(text: str | int) -> int:
    """``2000``, ``2000/month``, ``100/day`` or ``500/week`` as images per month."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:/\s*(month|mo|day|d|week|wk|w))?\s*", str(text))
    if not match or int(match.group(1)) < 1:
        raise UserError(
            f"Volume {text!r} is not a positive number of images.",
            hint="Use e.g. 2000/month or 100/day.",
        )
    factor = {"day": 30, "d": 30, "week": 30 / 7, "wk": 30 / 7, "w": 30 / 7}.get(
        match.group(2) or "month", 1
    )
    return round(int(match.group(1)) * factor)


@dataclass
class PlanLine:
    model: str
    share: float
    images: int
    monthly_usd: float | None
    note: str = ""


@dataclass
class Plan:
    name: str
    label: str
    volume: int
    lines: list[PlanLine]
    api_usd: float | None
    self_hosted_images: int
    self_hosted_usd: float
    all_self_hosted_usd: float
    gpu_always_on_usd: float = 0.0
    seed_estimate: str = ""
    seed_recommendation: str = ""

    @property
    def total_usd(self) -> float | None:
        return None if self.api_usd is None else round(self.api_usd + self.self_hosted_usd, 2)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_usd"] = self.total_usd
        return data


def _pick(models: list[str], catalog: Catalog) -> ModelSpec | None:
    for name in models:
        spec = catalog.find(name)
        if spec is not None and not spec.is_retired():
            return spec
    return None


def _line_cost(spec: ModelSpec, images: int, quality: str | None) -> tuple[float | None, str]:
    price = spec.price
    if price is None:
        return None, "no price in the catalog"
    if price.kind == "subscription":
        return price.monthly_usd, "flat subscription"
    if quality and spec.qualities and quality not in spec.qualities:
        quality = None
    each = estimate_cost(spec, ImageRequest(prompt="x", quality=quality), 1)
    return (
        (None, "no per-image price")
        if each is None
        else (round(each * images, 2), f"${each:.4f}/image")
    )


def gpu_cost(images: int, hourly_usd: float, images_per_hour: float) -> float:
    return round(images / images_per_hour * hourly_usd, 2) if images else 0.0


def plan_scenario(
    name: str,
    *,
    volume: int | None = None,
    mix: list[tuple[str, float]] | None = None,
    gpu_hourly: float | None = None,
    gpu_images_per_hour: float | None = None,
    catalog: Catalog | None = None,
    library: Library | None = None,
) -> Plan:
    """Price one scenario of the library (or a custom ``mix`` of model=share) per month."""
    library = library or load_library()
    catalog = catalog or get_catalog()
    scenario: dict[str, Any] = (
        dict(library.scenarios.get(name) or {}) if name != "custom" else {"label": "Custom"}
    )
    if not scenario:
        raise UserError(
            f"Unknown scenario {name!r}.",
            hint=f"Known: {', '.join(library.scenarios)}, or pass --mix.",
        )
    hosted = library.self_hosted
    hourly = gpu_hourly if gpu_hourly is not None else float(hosted.get("gpu_hourly_usd", 0.7))
    per_hour = (
        gpu_images_per_hour
        if gpu_images_per_hour is not None
        else float(hosted.get("images_per_hour", 300))
    )
    volume = volume or int(scenario.get("volume", 0))
    if volume < 1:
        raise UserError("A custom plan needs --volume.")
    entries: list[dict[str, Any]] = (
        [{"share": s, "models": [m]} for m, s in mix] if mix else list(scenario.get("mix", []))
    )
    self_share = 0.0 if mix else float(scenario.get("self_hosted_share", 0.0))
    lines, api_total = [], 0.0
    for item in entries:
        images = round(volume * float(item["share"]))
        spec = _pick(list(item["models"]), catalog)
        if spec is None:
            if mix:
                catalog.resolve(item["models"][0])  # raises UnknownModelError with suggestions
            lines.append(
                PlanLine(
                    item["models"][0],
                    float(item["share"]),
                    images,
                    None,
                    "not in the catalog (nor its alternatives)",
                )
            )
            continue
        cost, note = _line_cost(spec, images, item.get("quality"))
        lines.append(PlanLine(spec.ref, float(item["share"]), images, cost, note))
        api_total += cost or 0.0
    hosted_images = round(volume * self_share)
    return Plan(
        name=name, label=str(scenario.get("label", name)), volume=volume, lines=lines,
        api_usd=round(api_total, 2), self_hosted_images=hosted_images,
        self_hosted_usd=gpu_cost(hosted_images, hourly, per_hour),
        all_self_hosted_usd=gpu_cost(volume, hourly, per_hour),
        gpu_always_on_usd=round(hourly * HOURS_PER_MONTH, 2),
        seed_estimate=str(scenario.get("seed_estimate", "")),
        seed_recommendation=str(scenario.get("seed_recommendation", "")),
    )  # fmt: skip


def plan_scenarios(**kwargs: Any) -> list[Plan]:
    library = kwargs.pop("library", None) or load_library()
    return [plan_scenario(name, library=library, **kwargs) for name in library.scenarios]


def parse_mix(text: str | None) -> list[tuple[str, float]] | None:
    """``model=share,model=share`` (shares are normalised to sum to 1)."""
    if not text:
        return None
    pairs = []
    for item in text.split(","):
        model, sep, share = item.strip().rpartition("=")
        try:
            value = float(share)
        except ValueError:
            value = -1.0
        if not sep or not model or value <= 0:
            raise UserError(
                f"--mix item {item.strip()!r} is not MODEL=SHARE.",
                hint="e.g. --mix openai:gpt-image-2=0.3,ideogram:ideogram-v3=0.7",
            )
        pairs.append((model.strip(), value))
    total = sum(s for _, s in pairs)
    return [(m, s / total) for m, s in pairs]
