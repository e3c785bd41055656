"""Base64 and JSON for image-sized payloads.

A 2 MiB base64 image takes the standard library about 7 ms to decode and as long again to put
in a JSON body; pybase64 (SIMD) and orjson do each in well under a millisecond. Every image that
passes through limner is decoded or encoded at least once, so the whole package uses these.
"""

from __future__ import annotations

import binascii
import functools
import json
import re
from collections.abc import Callable
from typing import Any

import orjson
import pybase64

__all__ = [
    "b64decode", "b64encode", "json_dumps", "json_loads", "json_loads_exact", "json_loads_lifting",
]  # fmt: skip

# orjson reads integers up to 64 bits exactly and wider ones as floats; a run of 20 digits is
# where a wider one may start (2**64 - 1 has 20).
_LONG_DIGITS = re.compile(rb"\d{20}")


def b64decode(data: str | bytes | memoryview, *, validate: bool = False) -> bytes:
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
    """Compact UTF-8 JSON, as the json module writes it with ``separators=(",", ":")`` and
    ``ensure_ascii=False`` (and so as httpx sends ``json=``); keys that are not strings are
    converted, and other values it cannot encode are passed to ``default``. orjson writes it,
    except for what it refuses (integers wider than 64 bits), which the json module writes."""
    try:
        return orjson.dumps(value, default=default, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        text = json.dumps(value, default=default, ensure_ascii=False, separators=(",", ":"))
        return text.encode()


def json_loads(data: bytes | str) -> Any:
    """Parse JSON (a provider's response body carrying base64 images, say)."""
    return orjson.loads(data)


def json_loads_exact(data: bytes | str) -> Any:
    """Parse a small JSON document (a log row's column) keeping every integer exact: one that
    may be wider than 64 bits sends the document to the json module."""
    raw = data.encode() if isinstance(data, str) else data
    return json.loads(raw) if _LONG_DIGITS.search(raw) else orjson.loads(raw)


@functools.lru_cache(maxsize=16)
def _lifted_keys(fields: tuple[str, ...]) -> re.Pattern[bytes]:
    names = b"|".join(re.escape(json.dumps(f).encode()) for f in fields)
    return re.compile(rb"(?:" + names + rb")\s*:\s*\"")


def json_loads_lifting(data: bytes, *fields: str) -> Any:
    """Parse JSON whose ``fields`` hold base64 images, handing those values back as views of
    ``data`` (bytes-like, for :func:`b64decode`) rather than as ``str``.

    A parser has to copy and check each character of a string it builds, which for a 2 MiB
    image is most of the parse; base64 has no character that JSON escapes, so such a value runs
    from its opening quote to the next one. Each value is cut out and parsed as a short
    placeholder. Where that does not hold (an escape in a value, a key spelled with escapes),
    the whole body is parsed the ordinary way and the values come back as ``str``.
    """
    pattern = _lifted_keys(fields)
    view = memoryview(data)
    pieces: list[bytes | memoryview] = []
    blobs: list[memoryview] = []
    pos = 0
    while (match := pattern.search(data, pos)) is not None:
        start = match.end()
        end = data.find(b'"', start)
        if end < 0 or data.find(b"\\", start, end) >= 0:
            return json_loads(data)
        pieces += (view[pos:start], b"\\u0000%d" % len(blobs))
        blobs.append(view[start:end])
        pos = end
    if not blobs:
        return json_loads(data)
    pieces.append(view[pos:])
    parsed = json_loads(b"".join(pieces))
    try:
        if _put_back(parsed, frozenset(fields), blobs) == len(blobs):
            return parsed
    except (ValueError, IndexError):
        pass
    return json_loads(data)  # a value under one of the fields was not ours: trust no cut


def _put_back(node: Any, fields: frozenset[str], blobs: list[memoryview]) -> int:
    """Swap the placeholders under ``fields`` for their values; how many were swapped."""
    swapped = 0
    if isinstance(node, dict):
        for key, value in node.items():
            if key in fields and isinstance(value, str) and value[:1] == "\x00":
                node[key] = blobs[int(value[1:])]
                swapped += 1
            elif isinstance(value, dict | list):
                swapped += _put_back(value, fields, blobs)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, dict | list):
                swapped += _put_back(value, fields, blobs)
    return swapped
