"""Negative prompts: named presets combined with the user's own terms."""

from __future__ import annotations

import re
from collections.abc import Iterable

from limner.prompting.library import Library, load_library

__all__ = ["combine_negative", "split_terms"]


def split_terms(text: str | None) -> list[str]:
    """Comma- or newline-separated terms, trimmed, empty ones dropped."""
    return [t.strip() for t in re.split(r"[,\n]", text or "") if t.strip()]


def combine_negative(
    presets: Iterable[str] = (), own: str | None = None, library: Library | None = None
) -> str | None:
    """The user's own terms first, then each preset's, without repeats (case-insensitive).

    An unknown preset name raises ``UserError`` listing the known ones.
    """
    names = [p.strip() for item in presets for p in item.split(",") if p.strip()]
    terms = split_terms(own)
    if names:
        library = library or load_library()
        for name in names:
            terms.extend(library.negative(name))
    seen: set[str] = set()
    unique = []
    for term in terms:
        if term.lower() not in seen:
            seen.add(term.lower())
            unique.append(term)
    return ", ".join(unique) or None
