"""Emulators of the providers' HTTP APIs, served on loopback for offline tests.

Each module has ``create_app(state=None)`` returning an ASGI app, and ``BASE_PATH``: the path
prefix to append to the server URL to get the provider's base URL.
"""

from __future__ import annotations

import importlib
from typing import Any

from limner import errors

__all__ = ["EMULATORS", "base_url", "create_app"]

EMULATORS: dict[str, str] = {
    "openai": "limner.emulators.openai",
    "bfl": "limner.emulators.bfl",
    "replicate": "limner.emulators.replicate",
    "fal": "limner.emulators.fal",
    "stability": "limner.emulators.stability",
    "ideogram": "limner.emulators.ideogram",
    "gemini": "limner.emulators.gemini",
    "recraft": "limner.emulators.recraft",
    "midjourney": "limner.emulators.midjourney",
    "removebg": "limner.emulators.removebg",
    "comfyui": "limner.emulators.comfyui",
}


def _module(name: str) -> Any:
    if name not in EMULATORS:
        raise errors.UserError(
            f"No emulator for {name!r}.", hint=f"Emulators: {', '.join(sorted(EMULATORS))}."
        )
    try:
        return importlib.import_module(EMULATORS[name])
    except ModuleNotFoundError as exc:
        raise errors.UserError(
            f"The {name} emulator is not available in this installation."
        ) from exc


def create_app(name: str, state: Any = None) -> Any:
    return _module(name).create_app(state)


def base_url(name: str, server_url: str) -> str:
    """The provider base URL (what LIMNER_<PROVIDER>_BASE_URL should hold) for a running emulator."""
    return server_url.rstrip("/") + getattr(_module(name), "BASE_PATH", "")
