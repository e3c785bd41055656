"""``codec.json_loads_lifting`` reads the same values as a plain JSON parse, whatever the body."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from limner import codec


def as_plain(node: Any) -> Any:
    """``node`` with every lifted value turned back into the ``str`` a parser would give."""
    if isinstance(node, memoryview):
        return node.tobytes().decode()
    if isinstance(node, dict):
        return {key: as_plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [as_plain(value) for value in node]
    return node


def test_an_image_answer_is_lifted_without_a_str() -> None:
    raw = os.urandom(300_000)
    body = orjson.dumps(
        {
            "created": 1,
            "data": [{"b64_json": base64.b64encode(raw).decode(), "revised_prompt": "a"}],
        }
    )
    parsed = codec.json_loads_lifting(body, "b64_json")
    value = parsed["data"][0]["b64_json"]
    assert isinstance(value, memoryview)
    assert codec.b64decode(value, validate=True) == raw
    assert parsed["data"][0]["revised_prompt"] == "a"
    assert as_plain(parsed) == orjson.loads(body)


def test_spaced_keys_and_several_fields() -> None:
    body = b'{"candidates": [{"inlineData" : {"data" :\n "QUJD"}}], "bytesBase64Encoded":"REVG"}'
    parsed = codec.json_loads_lifting(body, "data", "bytesBase64Encoded")
    assert isinstance(parsed["candidates"][0]["inlineData"]["data"], memoryview)
    assert isinstance(parsed["bytesBase64Encoded"], memoryview)
    assert as_plain(parsed) == json.loads(body)


def test_bodies_the_cut_cannot_read_are_parsed_whole() -> None:
    cases = [
        b'{"b64_json": "QU\\/C"}',  # an escaped slash, as some encoders write base64
        b'{"s\\"b64_json": "QUJD", "n": 1}',  # the field's name inside another key
        b'{"b64\\u005fjson": "\\u00001", "b64_json": "QUJD"}',  # a key spelled with an escape
        b'{"b64_json": "QUJD", "b64\\u005fjson": "\\u0000x"}',  # ... whose value wins
        b'{"b64_json": "QUJD", "b64\\u005fjson": "\\u00009"}',
        b'{"b64_json": "\\u0000x"}',
        b'{"b64_json": null, "data": [1]}',
        b'{"b64_json": 5}',
    ]
    for body in cases:
        assert as_plain(codec.json_loads_lifting(body, "b64_json")) == json.loads(body), body


def test_a_body_that_is_not_json_is_refused_as_json_is() -> None:
    for body in (b'{"b64_json": "QUJD"', b'{"b64_json": "QUJD}', b"<html>"):
        try:
            codec.json_loads_lifting(body, "b64_json")
        except json.JSONDecodeError:
            continue
        raise AssertionError(f"{body!r} was parsed")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["b64_json", "data", "x", 'q"b64_json', "\x00"]), children, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_lifting_agrees_with_a_plain_parse(value: Any, spaced: bool) -> None:
    body = json.dumps(value, separators=(", ", ": ") if spaced else (",", ":")).encode()
    assert as_plain(codec.json_loads_lifting(body, "b64_json", "data")) == json.loads(body)


def test_integers_wider_than_64_bits_are_written_and_read_exactly() -> None:
    value = {"seed": 2**70 + 1, "low": -(2**64) - 1, "text": "héllo", 3: [1.5, None]}
    text = codec.json_dumps(value)
    assert text == json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    back = codec.json_loads_exact(text)
    assert back["seed"] == 2**70 + 1 and isinstance(back["seed"], int)
    assert back["low"] == -(2**64) - 1
    assert codec.json_loads_exact(text.decode()) == back
    # Within 64 bits orjson reads it, exactly as well.
    assert codec.json_loads_exact(b'{"a": 18446744073709551615}') == {"a": 2**64 - 1}
