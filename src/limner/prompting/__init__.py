"""The prompt toolkit: structured prompts, keyword libraries, negative presets, per-model
translation, wildcards and lint."""

from __future__ import annotations

from limner.prompting.build import BuiltPrompt, PromptParts, build_prompt
from limner.prompting.keywords import keyword_listing, keywords
from limner.prompting.library import Library, load_library
from limner.prompting.lint import LintIssue, lint_prompt
from limner.prompting.negative import combine_negative
from limner.prompting.translate import dialect_for, translate
from limner.prompting.wildcards import count_variants, expand

__all__ = [
    "BuiltPrompt",
    "Library",
    "LintIssue",
    "PromptParts",
    "build_prompt",
    "combine_negative",
    "count_variants",
    "dialect_for",
    "expand",
    "keyword_listing",
    "keywords",
    "lint_prompt",
    "load_library",
    "translate",
]
