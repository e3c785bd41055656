"""Base64 and JSON for image-sized payloads.

A 2 MiB base64 image takes the standard library about 7 ms to decode and as long again to put
in a JSON body; pybase64 (SIMD) and orjson do each in well under a millisecond. Every image that
passes through limner is decoded or encoded at least once, so the whole package uses these.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable
from typing import Any

import orjson
import pybase64

__all__ = ["b64decode", "b64encode", "json_body", "json_dumps", "json_loads"]


def b64decode(data: str | bytes, *, validate: bool = False) -> bytes:
    """Decode standard base64. ``validate`` refuses characters outside the alphabet; without it,
    line breaks and other stray characters are skipped (on a slower path, tried second)."""
    try:
        return pybase64.b64decode(data, validate=True)
    except binascii.Error:
        if validate:
            raise
        return pybase64.b64decode(data)


def b64encode(data: bytes) -> str:
    return pybase64.b64encode_as_string(data)


def json_dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact UTF-8 JSON; keys that are not strings are converted as the json module would,
    and other values it cannot encode are passed to ``default``."""
    return orjson.dumps(value, default=default, option=orjson.OPT_NON_STR_KEYS)


def json_body(value: Any) -> bytes:
    """A request body as httpx's ``json=`` would send it (compact, UTF-8), without the standard
    library's encoder where orjson can: integers wider than 64 bits take the slow path."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def json_loads(data: bytes | str) -> Any:
    """Parse JSON (a provider's response body carrying base64 images, say)."""
    return orjson.loads(data)
