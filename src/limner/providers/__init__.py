"""Provider registry: a lazy table for built-ins, the ``limner.providers`` entry points for plugins.

Core never imports a provider module until a model of that provider is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from limner import errors

if TYPE_CHECKING:
    from limner.catalog import ModelSpec
    from limner.providers.base import Provider

__all__ = ["BUILTIN_PROVIDERS", "get_provider_class", "provider_names"]

BUILTIN_PROVIDERS: dict[str, str] = {
    "openai": "limner.providers.openai:OpenAIProvider",
    "bfl": "limner.providers.bfl:BFLProvider",
    "replicate": "limner.providers.replicate:ReplicateProvider",
    "fal": "limner.providers.fal:FalProvider",
    "stability": "limner.providers.stability:StabilityProvider",
    "ideogram": "limner.providers.ideogram:IdeogramProvider",
    "gemini": "limner.providers.gemini:GeminiProvider",
    "recraft": "limner.providers.recraft:RecraftProvider",
    "midjourney": "limner.providers.midjourney:MidjourneyProvider",
    "removebg": "limner.providers.removebg:RemoveBgProvider",
    "local": "limner.providers.local:LocalProvider",
    "comfyui": "limner.providers.comfyui:ComfyUIProvider",
}


def _import(target: str) -> type[Provider]:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Provider] = getattr(module, attr)
    return cls


@cache
def _plugin_table() -> dict[str, str]:
    """Entry points in the ``limner.providers`` group; LIMNER_LOAD_PLUGINS="" turns them off."""
    allow = os.environ.get("LIMNER_LOAD_PLUGINS")
    table: dict[str, str] = {}
    for ep in entry_points(group="limner.providers"):
        if allow is not None and ep.name not in {a.strip() for a in allow.split(",") if a.strip()}:
            continue
        table[ep.name] = ep.value
    return table


def provider_names() -> list[str]:
    return sorted({*BUILTIN_PROVIDERS, *_plugin_table()})


def available_builtin(name: str) -> bool:
    """Whether the built-in provider's module exists in this installation."""
    target = BUILTIN_PROVIDERS.get(name)
    if not target:
        return False
    return importlib.util.find_spec(target.partition(":")[0]) is not None


def plugin_catalog_entries() -> list[ModelSpec]:
    """Catalog entries that plugin providers declare (built-ins ship theirs as data files)."""
    specs: list[ModelSpec] = []
    for name in _plugin_table():
        specs.extend(get_provider_class(name).catalog_entries())
    return specs


@cache
def get_provider_class(name: str) -> type[Provider]:
    target = _plugin_table().get(name) or BUILTIN_PROVIDERS.get(name)
    if target is None:
        raise errors.UnknownModelError(
            name, [n + ":" for n in provider_names() if n.startswith(name[:2])]
        )
    try:
        return _import(target)
    except ModuleNotFoundError as exc:
        raise errors.UserError(
            f"Provider {name!r} is not available: {exc}.",
            hint="Install the extra it needs, e.g. pip install 'limner[local]'.",
        ) from exc
