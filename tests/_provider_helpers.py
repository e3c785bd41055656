"""Helpers shared by the provider tests that drive one warm client against an emulator."""

from __future__ import annotations

from typing import Any

import httpx

import limner
from limner.emulators.common import EmulatorServer
from limner.types import ImageRequest, Operation


def generate(client: limner.Limner, prompt: str, **params: Any) -> limner.Result:
    return client.run(Operation.GENERATE, ImageRequest(prompt=prompt, **params))


def emulator_stats(server: EmulatorServer) -> dict[str, int]:
    return dict(httpx.get(server.url + "/_emulator/stats").json())
