"""Prompt variants: ``{a|b|c}`` alternatives and ``__name__`` wildcard files.

A wildcard file is ``<LIMNER_HOME>/wildcards/<name>.txt`` (``__colors/warm__`` reads
``wildcards/colors/warm.txt``): one option per line, blank lines and ``#`` comments ignored.
Options may hold alternatives and wildcards themselves. Expansion gives every combination, or
``count`` distinct ones drawn at random with a seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from math import prod
from pathlib import Path

from limner.config import limner_home
from limner.errors import UserError

__all__ = ["DEFAULT_MAX", "WildcardError", "count_variants", "expand"]

DEFAULT_MAX = 1000
MAX_DEPTH = 8
WILDCARD = re.compile(r"__([A-Za-z0-9][A-Za-z0-9_\-/]*?)__")


class WildcardError(UserError):
    code = "invalid_pattern"


@dataclass
class Choice:
    alternatives: list[list[Part]]


Part = str | Choice


class _Parser:
    def __init__(self, pattern: str, home: Path, depth: int, chain: tuple[str, ...]) -> None:
        self.text, self.pos, self.home, self.depth, self.chain = pattern, 0, home, depth, chain

    def error(self, message: str) -> WildcardError:
        return WildcardError(
            f"Malformed pattern at character {self.pos + 1}: {message}.",
            hint="Alternatives look like {red|green|blue}; use \\{ and \\} for literal braces.",
        )

    def sequence(self, inside: bool) -> list[Part]:
        parts: list[Part] = []
        literal: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                literal.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            if ch in "|}" and inside:
                break
            if ch == "}":
                raise self.error("'}' without a matching '{'")
            if ch == "{":
                parts.extend(self._literal_parts("".join(literal)))
                literal = []
                self.pos += 1
                parts.append(self.choice())
                continue
            literal.append(ch)
            self.pos += 1
        parts.extend(self._literal_parts("".join(literal)))
        return parts

    def choice(self) -> Choice:
        alternatives = [self.sequence(inside=True)]
        while self.pos < len(self.text) and self.text[self.pos] == "|":
            self.pos += 1
            alternatives.append(self.sequence(inside=True))
        if self.pos >= len(self.text):
            raise self.error("'{' is never closed")
        self.pos += 1  # the closing brace
        if len(alternatives) < 2:
            raise self.error("a {...} group needs at least two alternatives separated by '|'")
        return Choice(alternatives)

    def _literal_parts(self, text: str) -> list[Part]:
        """Split literal text around ``__name__`` wildcards, which become choices."""
        parts: list[Part] = []
        last = 0
        for match in WILDCARD.finditer(text):
            if match.start() > last:
                parts.append(text[last : match.start()])
            parts.append(self._wildcard(match.group(1)))
            last = match.end()
        if last < len(text):
            parts.append(text[last:])
        return parts

    def _wildcard(self, name: str) -> Choice:
        if name in self.chain or self.depth >= MAX_DEPTH:
            raise WildcardError(
                f"Wildcard __{name}__ refers to itself (through {' -> '.join(self.chain)}).",
                hint="Break the cycle in the wildcard files.",
            )
        path = self.home / "wildcards" / f"{name}.txt"
        if ".." in Path(name).parts or not path.is_file():
            raise WildcardError(
                f"No wildcard file for __{name}__ (looked for {path}).",
                hint=f"Create {path} with one option per line.",
            )
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        options = [ln for ln in lines if ln and not ln.startswith("#")]
        if not options:
            raise WildcardError(
                f"Wildcard file {path} has no options.", hint="Add one option per line."
            )
        return Choice([parse(o, self.home, self.depth + 1, (*self.chain, name)) for o in options])


def parse(
    pattern: str, home: Path | None = None, depth: int = 0, chain: tuple[str, ...] = ()
) -> list[Part]:
    parser = _Parser(pattern, home or limner_home(), depth, chain)
    return parser.sequence(inside=False)


def _count(parts: list[Part]) -> int:
    return prod(
        sum(_count(a) for a in p.alternatives) if isinstance(p, Choice) else 1 for p in parts
    )


def _render(parts: list[Part], index: int) -> str:
    """The ``index``-th combination, counting the rightmost choice fastest."""
    out: list[str] = []
    sizes = [_count([p]) for p in parts]
    digits = []
    for size in reversed(sizes):
        index, digit = divmod(index, size)
        digits.append(digit)
    for part, digit in zip(parts, reversed(digits), strict=True):
        if isinstance(part, str):
            out.append(part)
            continue
        for alternative in part.alternatives:
            size = _count(alternative)
            if digit < size:
                out.append(_render(alternative, digit))
                break
            digit -= size
    return "".join(out)


def _tidy(text: str) -> str:
    """Collapse the double spaces and stray commas an empty alternative leaves behind."""
    text = re.sub(r"\s{2,}", " ", text)
    text = re.sub(r"\s+,", ",", text)
    return re.sub(r",\s*,", ",", text).strip(" ,")


def count_variants(pattern: str, home: Path | None = None) -> int:
    return _count(parse(pattern, home))


def expand(
    pattern: str,
    *,
    count: int | None = None,
    seed: int | None = None,
    max_count: int = DEFAULT_MAX,
    home: Path | None = None,
) -> list[str]:
    """All combinations of ``pattern`` (refused above ``max_count``), or ``count`` distinct
    ones chosen at random (reproducibly with ``seed``), in combination order."""
    if count is not None and count < 1:
        raise WildcardError(f"The number of variants must be at least 1; got {count}.")
    if max_count < 1:
        raise WildcardError(f"The maximum must be at least 1; got {max_count}.")
    parts = parse(pattern, home)
    total = _count(parts)
    if count is None:
        if total > max_count:
            raise WildcardError(
                f"The pattern makes {total:,} combinations, more than the maximum of {max_count:,}.",
                hint="Draw some at random with --random N (and --seed), or raise --max.",
            )
        indexes = list(range(total))
    else:
        wanted = min(count, total, max_count)
        indexes = sorted(random.Random(seed).sample(range(total), wanted))
    return [_tidy(_render(parts, i)) for i in indexes]
