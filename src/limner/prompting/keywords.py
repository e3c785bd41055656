"""The keyword libraries: categories of prompt keywords, listed and looked up."""

from __future__ import annotations

from typing import Any

from limner.prompting.library import Library, load_library

__all__ = ["keyword_listing", "keywords"]

SPECIAL = {
    "presets": "Named style presets for --style.",
    "negative": "Named negative-prompt presets.",
}


def keywords(category: str, group: str | None = None, library: Library | None = None) -> list[str]:
    """Every keyword of ``category`` (or of one group in it)."""
    data = (library or load_library()).category(category)
    groups: dict[str, list[str]] = data.get("groups", {})
    if group is not None:
        if group not in groups:
            from limner.errors import UserError

            raise UserError(
                f"Category {category!r} has no group {group!r}.",
                hint=f"Groups: {', '.join(groups)}.",
            )
        return list(groups[group])
    return [k for words in groups.values() for k in words]


def keyword_listing(category: str | None = None, library: Library | None = None) -> dict[str, Any]:
    """What ``limner prompt keywords [CATEGORY]`` shows, as data."""
    lib = library or load_library()
    if category is None:
        listing: dict[str, Any] = {
            name: {"description": c.get("description", ""), "groups": sorted(c.get("groups", {}))}
            for name, c in lib.categories.items()
        }
        listing["presets"] = {"description": SPECIAL["presets"], "groups": sorted(lib.styles)}
        listing["negative"] = {"description": SPECIAL["negative"], "groups": sorted(lib.negatives)}
        return listing
    if category == "presets":
        return {n: {k: v for k, v in p.items()} for n, p in lib.styles.items()}
    if category == "negative":
        return {
            n: {"description": p.get("description", ""), "terms": p.get("terms", [])}
            for n, p in lib.negatives.items()
        }
    return dict(lib.category(category).get("groups", {}))
