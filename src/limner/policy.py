"""Usage policy: licence terms and a pre-generation check of the prompt.

Configured in the ``policy`` table of ``config.json``::

    {"commercial_only": true,                 # or LIMNER_COMMERCIAL_ONLY=1
     "policy": {"deny": ["word", "re:regex"], # refused prompts
                "hooks": ["package.module:function"],
                "moderation": true}}          # OpenAI's moderation endpoint (or LIMNER_MODERATION=openai)

A hook is ``hook(request, spec) -> str | None``: a reason to refuse, or None. Hooks also come
from the ``limner.policy`` entry-point group and from ``PolicyGuard(client, hooks=[...])``.
A refused request is never sent; the client logs it with status ``refused``.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from limner.catalog import ModelSpec
from limner.config import UserConfig
from limner.errors import UsagePolicyError, UserError
from limner.types import ImageRequest

if TYPE_CHECKING:
    from limner.client import Limner, Plan

__all__ = [
    "PolicyGuard",
    "PolicyHook",
    "PolicySettings",
    "check_licence",
    "load_policy",
    "moderate",
]

PolicyHook = Callable[[ImageRequest, ModelSpec], "str | None"]
TRUE = {"1", "true", "yes", "on"}
MODERATION_MODEL = "omni-moderation-latest"


@dataclass
class PolicySettings:
    commercial_only: bool = False
    deny: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    moderation: bool = False


def load_policy(config: UserConfig) -> PolicySettings:
    data = config.load()
    section = data.get("policy") or {}
    commercial_env = os.environ.get("LIMNER_COMMERCIAL_ONLY", "")
    moderation_env = os.environ.get("LIMNER_MODERATION", "")
    return PolicySettings(
        commercial_only=commercial_env.lower() in TRUE
        or bool(data.get("commercial_only") or section.get("commercial_only")),
        deny=[str(d) for d in section.get("deny", [])],
        hooks=[str(h) for h in section.get("hooks", [])],
        moderation=moderation_env.lower() in TRUE | {"openai"} or bool(section.get("moderation")),
    )


def check_licence(spec: ModelSpec, commercial: bool) -> None:
    """Refuse a model whose licence forbids commercial use when the use is commercial."""
    if commercial and not spec.commercial_use:
        raise UsagePolicyError(
            f"{spec.ref} may not be used commercially: its licence is {spec.licence}.",
            hint="Pick a model that allows commercial use (`limner recommend --commercial`), "
            "or drop --commercial / commercial_only for non-commercial work.",
        )


def _deny_match(prompt: str, entries: list[str]) -> str | None:
    for entry in entries:
        if entry.startswith("re:"):
            try:
                if re.search(entry[3:], prompt, re.IGNORECASE):
                    return entry
            except re.error as exc:
                raise UserError(
                    f"Deny-list pattern {entry!r} is not a valid regular expression: {exc}."
                ) from exc
        elif re.search(rf"(?<!\w){re.escape(entry)}(?!\w)", prompt, re.IGNORECASE):
            return entry
    return None


def _import_hook(target: str) -> PolicyHook:
    module_name, _, attr = target.partition(":")
    try:
        hook = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserError(
            f"Policy hook {target!r} cannot be loaded: {exc}.",
            hint="Hooks are 'package.module:function'.",
        ) from exc
    if not callable(hook):
        raise UserError(f"Policy hook {target!r} is not callable.")
    return hook


def _entry_point_hooks() -> list[PolicyHook]:
    allow = os.environ.get("LIMNER_LOAD_PLUGINS")
    names = {a.strip() for a in allow.split(",") if a.strip()} if allow is not None else None
    return [
        ep.load() for ep in entry_points(group="limner.policy") if names is None or ep.name in names
    ]


def moderate(client: Limner, text: str) -> list[str]:
    """Ask OpenAI's moderation endpoint about ``text``; return the flagged categories."""
    from limner.http import map_http_error

    provider = client.provider("openai")
    if not provider.api_key:
        raise type(provider).missing_key_error()
    response = client.http.post(
        f"{provider.base_url}/moderations",
        json={"model": MODERATION_MODEL, "input": text},
        headers={"Authorization": f"Bearer {provider.api_key}"},
    )
    if response.status_code != 200:
        raise map_http_error("openai", response, "the moderation check failed")
    flagged: list[str] = []
    for result in response.json().get("results", []):
        if result.get("flagged"):
            categories = result.get("categories") or {}
            flagged.extend(name for name, hit in categories.items() if hit)
            flagged = flagged or ["unspecified"]
    return flagged


class PolicyGuard:
    """The ``Guard`` that checks licence, deny list, hooks and (optionally) moderation."""

    def __init__(self, client: Limner, hooks: list[PolicyHook] | None = None) -> None:
        self.client = client
        self.hooks = list(hooks or [])
        self._plugin_hooks: list[PolicyHook] | None = None

    def _all_hooks(self, settings: PolicySettings) -> list[PolicyHook]:
        if self._plugin_hooks is None:
            self._plugin_hooks = _entry_point_hooks()
        return [*self.hooks, *self._plugin_hooks, *(_import_hook(h) for h in settings.hooks)]

    def before_send(self, plan: Plan) -> None:
        settings = load_policy(self.client.config)
        check_licence(
            plan.spec, settings.commercial_only or getattr(self.client, "commercial", False)
        )
        text = " ".join(filter(None, [plan.request.prompt]))
        denied = _deny_match(text, settings.deny)
        if denied:
            raise UsagePolicyError(
                f"The prompt matches {denied!r} on the deny list.",
                hint="Rephrase the prompt, or change policy.deny in config.json.",
            )
        for hook in self._all_hooks(settings):
            reason = hook(plan.request, plan.spec)
            if reason:
                name = getattr(hook, "__name__", type(hook).__name__)
                raise UsagePolicyError(f"The usage policy refused the request ({name}): {reason}")
        if settings.moderation and text.strip():
            flagged = moderate(self.client, text)
            if flagged:
                raise UsagePolicyError(
                    f"The moderation check flagged the prompt: {', '.join(sorted(set(flagged)))}.",
                    hint="Rephrase the prompt.",
                )

    def settle(self, plan: Plan, token: Any, cost: float | None) -> None:
        return None

    def release(self, plan: Plan, token: Any) -> None:
        return None
