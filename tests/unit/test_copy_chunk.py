"""The snapshot topic's COPY chunk: wire form and PostgreSQL's COPY text format (byte fixtures)."""

from __future__ import annotations

import pytest

from connectors.copy_chunk import MAGIC, CopyChunk, copy_fields, decode_copy_chunk, is_copy_chunk
from connectors.envelope import RelationInfo
from replicator.errors import MalformedMessage

REL = RelationInfo("public", "t", ("id", "body", "state"), (20, 25, 16385), ("id",))


def _chunk(data: bytes, rows: int) -> CopyChunk:
    return CopyChunk("pipe", 16384, REL, ("bigint", "text", "mood"), ("state",), rows, data)


def test_round_trip() -> None:
    data = b"1\thello\thappy\n2\t\\N\tsad\n"
    value = _chunk(data, 2).encode()
    assert is_copy_chunk(value) and value.startswith(MAGIC)
    got = decode_copy_chunk(value)
    assert got == _chunk(data, 2)
    assert got.text_rows() == [["1", "hello", "happy"], ["2", None, "sad"]]


def test_a_json_envelope_is_not_a_chunk() -> None:
    assert not is_copy_chunk(b'{"v": 2}')
    assert not is_copy_chunk(b"")


@pytest.mark.parametrize(
    ("line", "fields"),
    [
        (b"a\\tb\tc\\nd", ["a\tb", "c\nd"]),  # data tabs and newlines are escaped
        (b"back\\\\slash\t\\N", ["back\\slash", None]),
        (b"\\\\N\t", ["\\N", ""]),  # the text \N is not NULL; an empty string is
        (b"\\b\\f\\r\\v", ["\b\f\r\v"]),
        (b"\\101\\x42", ["AB"]),  # octal and hex, which COPY accepts on input
        ("Zoë\t王芳".encode(), ["Zoë", "王芳"]),
        (b'{"k": "v\\\\u0000"}', ['{"k": "v\\u0000"}']),
    ],
)
def test_copy_fields(line: bytes, fields: list[str | None]) -> None:
    assert copy_fields(line) == fields


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (MAGIC + b"\x00\x00", "no header"),
        (MAGIC + (100).to_bytes(4, "big") + b"{}", "cut short"),
        (MAGIC + (2).to_bytes(4, "big") + b"{]", "not JSON"),
        (MAGIC + (2).to_bytes(4, "big") + b"{}", "missing"),
        (_chunk(b"1\tx\ty", 1).encode(), "ends inside a row"),
        (_chunk(b"1\tx\ty\n", 2).encode(), "holds 1 rows, its header says 2"),
    ],
)
def test_malformed(value: bytes, says: str) -> None:
    with pytest.raises(MalformedMessage, match=says):
        decode_copy_chunk(value)


def test_columns_and_types_must_agree() -> None:
    bad = CopyChunk("pipe", 1, REL, ("bigint",), (), 0, b"").encode()
    with pytest.raises(MalformedMessage, match="3 columns but 1 types"):
        decode_copy_chunk(bad)
