"""Prompt lint: what the catalog and the product description's tips know about a prompt for a
given model, before anything is spent."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from limner.catalog import Catalog, ModelSpec, get_catalog
from limner.prompting.library import Library, load_library
from limner.prompting.translate import WEIGHT_SYNTAX, dialect_for

__all__ = ["LintIssue", "estimate_tokens", "lint_prompt"]

QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|'([^']{2,})'(?!\w)")
MJ_FLAG = re.compile(r"(?<!\S)--(ar|no|seed|stylize|chaos|style|tile|q|v|cref|cw|sref|sw|niji)\b")
NEGATION = re.compile(r"\b(no|without|not|don't|avoid)\s+([a-z][\w-]*)", re.IGNORECASE)
WEAK_TEXT = ("moderate", "weak", "none")
GRADE_ORDER = {"excellent": 0, "good": 1, "moderate": 2, "weak": 3, "none": 4}


@dataclass
class LintIssue:
    level: str  # error | warning | info
    code: str
    message: str
    suggestion: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def estimate_tokens(text: str) -> int:
    """A CLIP-like token count: words and punctuation, long words counted as two."""
    pieces = re.findall(r"\w+|[^\w\s]", text)
    return sum(2 if len(p) > 9 else 1 for p in pieces)


def _text_models(catalog: Catalog) -> list[str]:
    good = [s for s in catalog if s.text_rendering == "excellent" and not s.is_retired()]
    ideogram = [s.ref for s in good if s.provider == "ideogram"]
    gpt = [s.ref for s in good if s.family == "gpt-image"]
    return (ideogram[:2] + gpt[:2]) or [s.ref for s in good[:3]]


def _check_text(prompt: str, spec: ModelSpec, catalog: Catalog, issues: list[LintIssue]) -> None:
    quoted = [next(g for g in m.groups() if g) for m in QUOTED.finditer(prompt)]
    if not quoted:
        return
    if spec.text_rendering in WEAK_TEXT:
        others = ", ".join(_text_models(catalog)) or "an Ideogram or gpt-image model"
        issues.append(LintIssue(
            "warning", "weak-text-rendering",
            f"The prompt asks for text ({', '.join(repr(q) for q in quoted[:3])}) but {spec.ref} "
            f"has a text-rendering grade of {spec.text_rendering!r}.",
            f"Use a model with excellent text rendering: {others}.",
        ))  # fmt: skip
    elif spec.text_rendering == "good" and any(len(q.split()) > 4 for q in quoted):
        issues.append(LintIssue(
            "info", "long-text", f"{spec.ref} renders short text well; long phrases often garble.",
            "Keep quoted text to a few words, or use Ideogram or gpt-image.",
        ))  # fmt: skip


def _check_length(prompt: str, spec: ModelSpec, issues: list[LintIssue]) -> None:
    if spec.max_prompt_chars and len(prompt) > spec.max_prompt_chars:
        issues.append(LintIssue(
            "error", "too-long",
            f"The prompt is {len(prompt):,} characters; {spec.ref} takes at most {spec.max_prompt_chars:,}.",
            "Shorten it: the request would be refused.",
        ))  # fmt: skip
    if spec.max_prompt_tokens:
        tokens = estimate_tokens(prompt)
        if tokens > spec.max_prompt_tokens:
            issues.append(LintIssue(
                "warning", "too-many-tokens",
                f"The prompt is about {tokens} tokens; {spec.ref} reads at most {spec.max_prompt_tokens}, "
                "so the rest is ignored.",
                "Put the important words first, or shorten it.",
            ))  # fmt: skip


def _check_syntax(prompt: str, spec: ModelSpec, dialect: str, issues: list[LintIssue]) -> None:
    weights_ok = dialect == "sd" and (
        spec.provider in ("local", "comfyui") or spec.wire.get("prompt_weights")
    )
    if WEIGHT_SYNTAX.search(prompt) and not weights_ok:
        issues.append(LintIssue(
            "warning", "ignored-weights", f"{spec.ref} ignores (word:1.2)-style weights; they are read as text.",
            "Say what matters most first, in plain words." if dialect != "midjourney"
            else "Midjourney weighs parts with 'part one::2 part two::1'.",
        ))  # fmt: skip
    if MJ_FLAG.search(prompt) and dialect != "midjourney":
        issues.append(LintIssue(
            "warning", "midjourney-flags", f"Midjourney flags (--ar, --no ...) mean nothing to {spec.ref}.",
            "Use --aspect-ratio, --negative and --seed instead; limner translates them per model.",
        ))  # fmt: skip
    if "::" in prompt and dialect != "midjourney":
        issues.append(
            LintIssue(
                "warning",
                "ignored-multiprompt",
                f"'::' weights are Midjourney syntax; {spec.ref} reads them as text.",
            )
        )


def _check_negation(prompt: str, spec: ModelSpec, dialect: str, issues: list[LintIssue]) -> None:
    found = [m.group(0) for m in NEGATION.finditer(prompt)]
    if not found:
        return
    if spec.negative_prompt or dialect == "midjourney":
        issues.append(LintIssue(
            "info", "negation-in-prompt",
            f"Negations in the prompt ({', '.join(found[:3])}) can bring the very thing in.",
            "Move them to --negative: this model takes a negative prompt.",
        ))  # fmt: skip
    elif dialect == "flux":
        issues.append(LintIssue(
            "info", "negation-in-prompt",
            f"FLUX follows prompts literally: '{found[0]}' may add what it negates.",
            "Describe what you want instead (e.g. 'plain background' for 'no clutter').",
        ))  # fmt: skip


def _check_conflicts(prompt: str, library: Library, issues: list[LintIssue]) -> None:
    lowered = prompt.lower()

    def present(words: list[str]) -> list[str]:
        return [w for w in words if re.search(rf"(?<!\w){re.escape(w.lower())}(?!\w)", lowered)]

    for pair in library.conflicts:
        a, b = present(pair.get("a", [])), present(pair.get("b", []))
        if a and b:
            issues.append(LintIssue(
                "warning", "conflicting-styles", f"Conflicting styles: {a[0]!r} and {b[0]!r}.",
                "Pick one look; the model will blend them unpredictably.",
            ))  # fmt: skip


def lint_prompt(
    prompt: str,
    spec: ModelSpec,
    *,
    negative: str | None = None,
    catalog: Catalog | None = None,
    library: Library | None = None,
) -> list[LintIssue]:
    """Problems with ``prompt`` for ``spec``, errors first."""
    catalog = catalog or get_catalog()
    library = library or load_library()
    dialect = dialect_for(spec, library)
    issues: list[LintIssue] = []
    if not prompt.strip():
        return [LintIssue("error", "empty", "The prompt is empty.", "Describe the image to make.")]
    _check_text(prompt, spec, catalog, issues)
    _check_length(prompt, spec, issues)
    _check_syntax(prompt, spec, dialect, issues)
    _check_negation(prompt, spec, dialect, issues)
    _check_conflicts(prompt, library, issues)
    if negative and not spec.negative_prompt and dialect != "midjourney":
        issues.append(LintIssue(
            "info", "negative-folded", f"{spec.ref} takes no negative prompt; it will be folded in as 'Avoid: ...'.",
        ))  # fmt: skip
    if spec.is_retired():
        issues.append(
            LintIssue(
                "warning",
                "retired",
                f"{spec.ref} is retired.",
                f"Use {spec.successor or 'another model'}.",
            )
        )
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(issues, key=lambda i: order[i.level])
