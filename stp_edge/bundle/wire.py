"""The protobuf wire format, read without `onnx` or protobuf: enough to walk an ONNX file's messages.

A message is a run of (field number, wire type, value) records; `fields` yields them, giving a length-delimited
value (a nested message, a string, a packed array, raw tensor bytes) as its (start, end) span in the buffer, so
a reader descends only into the messages it needs and skips weights by their length. Every read is bounds-checked:
a truncated or corrupt file raises `Malformed`, never an IndexError or an endless loop.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

Span = tuple[int, int]


class Malformed(ValueError):
    """The bytes are not a well-formed protobuf message (truncated, corrupt, or not protobuf at all)."""


def varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at `pos`."""
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise Malformed("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: Any, pos: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) of one message; value is an int, or a (start, end) span for bytes.

    Fixed-size values (wire types 1 and 5) are yielded as their span too.
    """
    while pos < end:
        key, pos = varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos, end)
        elif wire == 2:
            n, pos = varint(buf, pos, end)
            if pos + n > end:
                raise Malformed(f"field {field} runs past its message ({n} bytes at offset {pos})")
            value, pos = (pos, pos + n), pos + n
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise Malformed("truncated fixed-size field")
            value, pos = (pos, pos + size), pos + size
        else:
            raise Malformed(f"unsupported wire type {wire} (field {field})")
        if field == 0:
            raise Malformed("field number 0")
        yield field, wire, value


def string(buf: Any, span: Span) -> str:
    """A UTF-8 string field."""
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed("a name is not UTF-8") from exc


def signed(value: int) -> int:
    """An int64 field's value: varints carry negative numbers as their 64-bit two's complement."""
    return value - (1 << 64) if value >= 1 << 63 else value


def packed_varints(buf: Any, span: Span) -> list[int]:
    """The int64 values of a packed repeated varint field."""
    out, pos = [], span[0]
    while pos < span[1]:
        value, pos = varint(buf, pos, span[1])
        out.append(signed(value))
    return out


def repeated_ints(buf: Any, wire: int, value: Any) -> list[int]:
    """One record of a repeated int64 field, packed (wire type 2) or not (wire type 0)."""
    return packed_varints(buf, value) if wire == 2 else [signed(value)]


def unpack_le(buf: Any, span: Span, code: str) -> list[Any]:
    """Little-endian fixed-size values (struct `code`: "i", "q", "f", "d") of a span.

    The span is a tensor's raw data, a packed float/double field, or one fixed-size record.
    """
    start, end = span
    size = struct.calcsize(code)
    if (end - start) % size:
        raise Malformed(f"{end - start} bytes is not a whole number of {size}-byte values")
    return list(struct.unpack(f"<{(end - start) // size}{code}", bytes(buf[start:end])))
