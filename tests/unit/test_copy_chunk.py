"""The snapshot topic's COPY chunk: wire form and PostgreSQL's COPY text format (byte fixtures)."""

from __future__ import annotations

import pytest

from connectors.copy_chunk import (
    MAGIC,
    SIGNATURE,
    TRAILER,
    CopyChunk,
    copy_fields,
    decode_copy_chunk,
    field_text,
    is_copy_chunk,
    strip_binary_header,
)
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


# ---- the binary format ----------------------------------------------------------------------

BREL = RelationInfo(
    "public",
    "t",
    ("id", "who", "body", "doc", "at", "state"),
    (20, 2950, 25, 3802, 1184, 16385),
    ("id",),
)
# Two tuples as `COPY … TO STDOUT (FORMAT binary)` sends them (header and trailer cut off):
# (7, 0f2c…, 'a<TAB>b', {"a": 1}, 2000-01-01 00:00:01.5+00, 'happy') and (8, four NULLs, 'sad').
ROW_1 = (
    b"\x00\x06"
    + b"\x00\x00\x00\x08" + (7).to_bytes(8, "big")
    + b"\x00\x00\x00\x10" + bytes.fromhex("0f2c8a3e6f7d4e1b9a0c1d2e3f405162")
    + b"\x00\x00\x00\x03a\tb"
    + b"\x00\x00\x00\x09\x01{\"a\": 1}"
    + b"\x00\x00\x00\x08" + (1_500_000).to_bytes(8, "big")
    + b"\x00\x00\x00\x05happy"
)  # fmt: skip
ROW_2 = (
    b"\x00\x06" + b"\x00\x00\x00\x08" + (8).to_bytes(8, "big") + b"\xff\xff\xff\xff" * 4
    + b"\x00\x00\x00\x03sad"
)  # fmt: skip


def _binary(data: bytes, rows: int) -> CopyChunk:
    types = ("bigint", "uuid", "text", "jsonb", "timestamp with time zone", "mood")
    return CopyChunk("pipe", 16384, BREL, types, ("state",), rows, data, binary=True)


def test_a_binary_chunk_round_trips_and_reads_back_as_text() -> None:
    value = _binary(ROW_1 + ROW_2, 2).encode()
    got = decode_copy_chunk(value)
    assert got == _binary(ROW_1 + ROW_2, 2) and got.binary
    assert got.copy_data() == SIGNATURE + ROW_1 + ROW_2 + TRAILER
    assert got.text_rows() == [
        ["7", "0f2c8a3e-6f7d-4e1b-9a0c-1d2e3f405162", "a\tb", '{"a": 1}',
         "2000-01-01 00:00:01.5+00", "happy"],
        ["8", None, None, None, None, "sad"],
    ]  # fmt: skip
    # A text chunk says nothing of its format (the form older readers wrote).
    assert b'"format"' not in _chunk(b"1\ta\tb\n", 1).encode()


def test_a_damaged_binary_chunk_is_malformed_when_read_back() -> None:
    with pytest.raises(MalformedMessage, match="ends inside"):
        _binary(ROW_1[:-2], 1).text_rows()
    with pytest.raises(MalformedMessage, match="fields"):
        _binary(b"\x00\x01\x00\x00\x00\x01x", 1).text_rows()
    value = _binary(ROW_1, 1).encode().replace(b'"binary"', b'"binarx"')
    with pytest.raises(MalformedMessage, match="binarx"):
        decode_copy_chunk(value)


def test_the_binary_header_is_checked_and_cut() -> None:
    assert strip_binary_header(SIGNATURE + ROW_1) == ROW_1
    with pytest.raises(MalformedMessage, match="signature"):
        strip_binary_header(b"COPY\n" + ROW_1)


@pytest.mark.parametrize(
    ("oid", "raw", "text"),
    [
        (1184, (2**63 - 1).to_bytes(8, "big"), "infinity"),
        (1114, (-(2**63)).to_bytes(8, "big", signed=True), "-infinity"),
        (1114, (-1).to_bytes(8, "big", signed=True), "1999-12-31 23:59:59.999999"),
        (1082, (-730485 - 365).to_bytes(4, "big", signed=True), "0002-01-01 BC"),
        (1082, (366).to_bytes(4, "big"), "2001-01-01"),
        (16, b"\x00", "f"),
        (21, (-5).to_bytes(2, "big", signed=True), "-5"),
        (114, "Zoë".encode(), "Zoë"),
    ],
)
def test_binary_values_print_as_postgresql_prints_them(oid: int, raw: bytes, text: str) -> None:
    assert field_text(oid, raw) == text


def test_a_type_without_a_text_form_is_named() -> None:
    with pytest.raises(MalformedMessage, match="1700"):
        field_text(1700, b"\x00\x00")
