"""The model catalog: capabilities, limits, prices, licence and lifecycle, kept as data.

Each provider's models live in ``catalog/data/<provider>.toml``; plugins add theirs through
``Provider.catalog_entries()``. Nothing here knows a provider by name.
"""

from __future__ import annotations

import difflib
import tomllib
from datetime import date
from functools import cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from limner.errors import UnknownModelError
from limner.types import Operation

__all__ = ["Catalog", "ModelSpec", "Price", "SizeRule", "get_catalog"]

TextGrade = Literal["excellent", "good", "moderate", "weak", "none"]


class SizeRule(BaseModel):
    """Free-form sizes: any WxH within these limits."""

    model_config = ConfigDict(extra="forbid")

    multiple_of: int = 8
    min_edge: int = 64
    max_edge: int = 4096
    min_pixels: int = 0
    max_pixels: int | None = None
    max_aspect: float | None = None  # the long edge over the short edge

    def check(self, width: int, height: int) -> str | None:
        """Return why ``width x height`` breaks the rule, or None when it fits."""
        if width % self.multiple_of or height % self.multiple_of:
            return f"width and height must be multiples of {self.multiple_of}"
        if min(width, height) < self.min_edge or max(width, height) > self.max_edge:
            return f"each edge must be between {self.min_edge} and {self.max_edge} pixels"
        pixels = width * height
        if pixels < self.min_pixels or (self.max_pixels and pixels > self.max_pixels):
            top = f"{self.max_pixels:,}" if self.max_pixels else "no limit"
            return f"the pixel count must be between {self.min_pixels:,} and {top}"
        if self.max_aspect and max(width, height) / min(width, height) > self.max_aspect + 1e-9:
            return (
                f"the aspect ratio must be within 1:{self.max_aspect:g} and {self.max_aspect:g}:1"
            )
        return None

    def describe(self) -> str:
        parts = [
            f"any WxH in multiples of {self.multiple_of}",
            f"edges {self.min_edge}-{self.max_edge}",
        ]
        if self.max_pixels:
            parts.append(f"at most {self.max_pixels:,} pixels")
        if self.max_aspect:
            parts.append(f"aspect within 1:{self.max_aspect:g}..{self.max_aspect:g}:1")
        return ", ".join(parts)


class Price(BaseModel):
    """How a model is billed. ``table`` maps quality -> size -> USD per image ("*" matches any)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["per_image", "per_token", "per_megapixel", "subscription", "free"]
    per_image: float | None = None
    table: dict[str, dict[str, float]] = Field(default_factory=dict)
    text_input_per_mtok: float | None = None
    image_input_per_mtok: float | None = None
    image_output_per_mtok: float | None = None
    first_megapixel: float | None = None
    per_megapixel: float | None = None
    input_per_megapixel: float | None = None
    monthly_usd: float | None = None
    note: str = ""

    def image_price(self, quality: str | None, size: str | None) -> float | None:
        """The list price of one image at this quality and size, where the table knows it."""
        for q in (quality or "*", "*", "auto", "medium", "standard"):
            row = self.table.get(q)
            if row is None:
                continue
            for s in (size or "*", "*", "auto", "1024x1024"):
                if s in row:
                    return row[s]
        if self.per_image is not None:
            return self.per_image
        if self.kind == "per_megapixel" and self.first_megapixel is not None:
            return self._megapixel_price(size)
        return None

    def _megapixel_price(self, size: str | None) -> float:
        mp = 1.0
        if size and "x" in size:
            w, _, h = size.partition("x")
            mp = max(int(w) * int(h) / 1_000_000, 1.0)
        extra = (mp - 1.0) * (self.per_megapixel or self.first_megapixel or 0.0)
        return round((self.first_megapixel or 0.0) + extra, 6)


class ModelSpec(BaseModel):
    """Everything limner knows about one model of one provider."""

    model_config = ConfigDict(extra="forbid")

    id: str
    provider: str
    name: str = ""
    family: str = ""
    aliases: list[str] = Field(default_factory=list)
    description: str = ""
    operations: list[Operation]
    sizes: list[str] = Field(default_factory=list)
    size_rule: SizeRule | None = None
    aspect_ratios: list[str] = Field(default_factory=list)
    qualities: list[str] = Field(default_factory=list)
    styles: list[str] = Field(default_factory=list)
    output_formats: list[str] = Field(default_factory=lambda: ["png"])
    max_n: int = 1
    max_input_images: int = 1
    max_reference_images: int = 0
    prompt_required: bool = True  # False for services that ignore the prompt (erase)
    # provider_options values that make the prompt optional: {"action": ["vectorize"]}
    promptless_options: dict[str, list[str]] = Field(default_factory=dict)
    max_prompt_chars: int | None = None
    max_prompt_tokens: int | None = None
    negative_prompt: bool = False
    seed: bool = False
    steps: bool = False
    guidance: bool = False
    background: bool = False
    mask_convention: Literal["alpha", "white", "black", "none"] = "none"
    text_rendering: TextGrade = "moderate"
    traits: dict[str, str] = Field(default_factory=dict)
    use_cases: list[str] = Field(default_factory=list)
    licence: str = "proprietary"
    commercial_use: bool = True
    self_hostable: bool = False
    released: date | None = None
    deprecated: date | None = None
    retired: date | None = None
    successor: str | None = None
    lifecycle_note: str = ""
    price: Price | None = None
    # Endpoints billed apart from the model, USD per image: by an operation's default path
    # ({"upscale": 0.004}) and by a provider option that picks another ({"action":
    # {"vectorize": 0.01}}). An option's price wins over its operation's.
    operation_prices: dict[str, float] = Field(default_factory=dict)
    option_prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    wire: dict[str, Any] = Field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.provider}:{self.id}"

    def supports(self, op: Operation | str) -> bool:
        return Operation(op) in self.operations

    def status(self, today: date | None = None) -> str:
        today = today or date.today()
        if self.retired and self.retired <= today:
            return "retired"
        if self.deprecated and self.deprecated <= today:
            return "deprecated"
        if self.retired:
            return f"retiring {self.retired.isoformat()}"
        return "active"

    def is_retired(self, today: date | None = None) -> bool:
        return self.status(today) == "retired"

    def allowed_sizes_text(self) -> str:
        if self.size_rule:
            extra = f" (or {', '.join(self.sizes)})" if self.sizes else ""
            return self.size_rule.describe() + extra
        if self.sizes:
            return ", ".join(self.sizes)
        if self.aspect_ratios:
            return "aspect ratios " + ", ".join(self.aspect_ratios)
        return "any"


class Catalog:
    """All known models, addressable as ``provider:model`` or by alias."""

    def __init__(self, specs: list[ModelSpec] | None = None) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._aliases: dict[str, str] = {}
        for spec in specs or []:
            self.add(spec)

    def add(self, spec: ModelSpec) -> None:
        self._specs[spec.ref] = spec
        for alias in spec.aliases:
            self._aliases.setdefault(alias.lower(), spec.ref)

    def __iter__(self) -> Any:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def providers(self) -> list[str]:
        return sorted({s.provider for s in self._specs.values()})

    def resolve(self, name: str) -> ModelSpec:
        """Find a model by ``provider:model``, alias or unique bare id."""
        key = name.strip()
        if key in self._specs:
            return self._specs[key]
        lowered = key.lower()
        if lowered in self._aliases:
            return self._specs[self._aliases[lowered]]
        matches = [s for s in self._specs.values() if s.id.lower() == lowered]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UnknownModelError(name, [m.ref for m in matches])
        names = [*self._specs, *self._aliases]
        raise UnknownModelError(name, difflib.get_close_matches(key, names, n=4, cutoff=0.5))

    def find(self, name: str) -> ModelSpec | None:
        try:
            return self.resolve(name)
        except UnknownModelError:
            return None

    def filter(
        self,
        *,
        provider: str | None = None,
        capability: str | None = None,
        include_retired: bool = True,
    ) -> list[ModelSpec]:
        out = []
        for spec in self._specs.values():
            if provider and spec.provider != provider:
                continue
            if capability and not spec.supports(capability):
                continue
            if not include_retired and spec.is_retired():
                continue
            out.append(spec)
        return sorted(out, key=lambda s: (s.provider, s.id))


def load_specs_from_toml(text: str) -> list[ModelSpec]:
    data = tomllib.loads(text)
    defaults = data.get("defaults", {})
    return [ModelSpec.model_validate({**defaults, **entry}) for entry in data.get("models", [])]


@cache
def _builtin_specs() -> tuple[ModelSpec, ...]:
    specs: list[ModelSpec] = []
    folder = resources.files("limner.catalog") / "data"
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".toml"):
            specs.extend(load_specs_from_toml(item.read_text(encoding="utf-8")))
    return tuple(specs)


def get_catalog(extra: list[ModelSpec] | None = None) -> Catalog:
    """The built-in catalog plus ``extra`` entries (plugins, user-registered models)."""
    catalog = Catalog(list(_builtin_specs()))
    for spec in extra or []:
        catalog.add(spec)
    return catalog
