"""A minimal protobuf rewrite of TensorFlow super-resolution graphs for OpenCV 5.

OpenCV 5's TensorFlow importer builds its DepthToSpace layer from a ``blocksize`` parameter but
copies the graph's ``block_size`` attribute under its own name, so FSRCNN and ESPCN graphs fail to
run. Adding a ``blocksize`` copy of the attribute to each DepthToSpace node fixes that; OpenCV 4
ignores the extra attribute. Only the protobuf wire format is touched: nothing is executed.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["add_blocksize_attr"]

Field = tuple[int, int, bytes]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _fields(buf: bytes) -> Iterator[Field]:
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        start = pos
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, start = _varint(buf, pos)
            pos = start + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf message")
        yield number, wire, buf[start:pos]


def _emit(number: int, wire: int, payload: bytes) -> bytes:
    head = _encode_varint(number << 3 | wire)
    return head + (_encode_varint(len(payload)) + payload if wire == 2 else payload)


def _blocksize_entry(node: list[Field]) -> bytes:
    for number, wire, payload in node:
        if number != 5 or wire != 2:  # NodeDef.attr map entries
            continue
        entry = list(_fields(payload))
        if any(n == 1 and p == b"block_size" for n, _, p in entry):
            value = next(e for e in entry if e[0] == 2)
            return _emit(5, 2, _emit(1, 2, b"blocksize") + _emit(*value))
    return b""


def add_blocksize_attr(graph: bytes) -> bytes:
    """``graph`` (a serialized GraphDef) with ``blocksize`` added to its DepthToSpace nodes."""
    out = bytearray()
    for number, wire, payload in _fields(graph):
        if number == 1 and wire == 2:  # GraphDef.node
            node = list(_fields(payload))
            if any(n == 2 and p == b"DepthToSpace" for n, _, p in node):
                payload = payload + _blocksize_entry(node)
        out += _emit(number, wire, payload)
    return bytes(out)
