"""The prompt library: keyword categories, style and negative presets, use cases, cost
scenarios and model dialects, from the bundled data files merged with the user's own.

User files are ``<LIMNER_HOME>/prompting/*.toml`` with the same layout as the bundled files in
``limner/prompting/data``; tables merge key by key and keyword lists are extended, so a user
file can add one keyword group or override one preset without copying the rest.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from limner.config import limner_home
from limner.errors import UserError

__all__ = ["Library", "load_library", "merge_tables"]

BUNDLED = ("keywords.toml", "presets.toml", "use_cases.toml", "scenarios.toml", "dialects.toml")


def merge_tables(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into ``base``: tables recursively, lists extended without duplicates,
    everything else replaced."""
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = merge_tables(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            merged[key] = old + [v for v in value if v not in old]
        else:
            merged[key] = value
    return merged


def _read_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(
            f"{origin} is not valid TOML: {exc}.", hint="Fix or remove the file."
        ) from exc


@dataclass(frozen=True)
class Library:
    data: dict[str, Any]
    user_files: tuple[Path, ...] = ()

    # -- keywords ------------------------------------------------------------------------------
    @property
    def categories(self) -> dict[str, Any]:
        return dict(self.data.get("categories", {}))

    def category(self, name: str) -> dict[str, Any]:
        categories = self.categories
        if name not in categories:
            raise UserError(
                f"Unknown keyword category {name!r}.",
                hint=f"Known categories: {', '.join(sorted(categories))}, presets, negative.",
            )
        return dict(categories[name])

    @property
    def conflicts(self) -> list[dict[str, list[str]]]:
        return list(self.data.get("conflicts", []))

    # -- presets -------------------------------------------------------------------------------
    @property
    def styles(self) -> dict[str, Any]:
        return dict(self.data.get("styles", {}))

    @property
    def negatives(self) -> dict[str, Any]:
        return dict(self.data.get("negative", {}))

    def style(self, name: str) -> dict[str, Any]:
        if name not in self.styles:
            raise UserError(
                f"Unknown style preset {name!r}.",
                hint=f"Known presets: {', '.join(sorted(self.styles))}.",
            )
        return dict(self.styles[name])

    def negative(self, name: str) -> list[str]:
        if name not in self.negatives:
            raise UserError(
                f"Unknown negative preset {name!r}.",
                hint=f"Known negative presets: {', '.join(sorted(self.negatives))}.",
            )
        return [str(t) for t in self.negatives[name].get("terms", [])]

    # -- use cases, scenarios, dialects --------------------------------------------------------
    @property
    def use_cases(self) -> dict[str, Any]:
        return dict(self.data.get("use_cases", {}))

    def use_case(self, name: str) -> dict[str, Any]:
        if name not in self.use_cases:
            raise UserError(
                f"Unknown use case {name!r}.",
                hint=f"Known use cases: {', '.join(sorted(self.use_cases))}.",
            )
        return dict(self.use_cases[name])

    @property
    def scenarios(self) -> dict[str, Any]:
        return dict(self.data.get("scenarios", {}))

    @property
    def self_hosted(self) -> dict[str, Any]:
        return dict(self.data.get("self_hosted", {}))

    def dialect_settings(self, dialect: str) -> dict[str, Any]:
        return dict(self.data.get(dialect, {}))


def _bundled() -> dict[str, Any]:
    folder = resources.files("limner.prompting") / "data"
    data: dict[str, Any] = {}
    for name in BUNDLED:
        data = merge_tables(data, _read_toml((folder / name).read_text(encoding="utf-8"), name))
    return data


def load_library(home: Path | None = None) -> Library:
    """The bundled library extended by ``<home>/prompting/*.toml`` (files in name order)."""
    data = _bundled()
    folder = (home or limner_home()) / "prompting"
    files = tuple(sorted(folder.glob("*.toml"))) if folder.is_dir() else ()
    for path in files:
        data = merge_tables(data, _read_toml(path.read_text(encoding="utf-8"), str(path)))
    return Library(data, files)
