"""A backfill chunk as PostgreSQL's own COPY output: the snapshot topic's bulk form.

A table whose transform compiles to SQL (transforms.compile) is read with ``COPY (SELECT … WHERE
key > last ORDER BY key LIMIT n) TO STDOUT`` and travels as that output, untouched: the log keeps
one raw, replayable form, and neither the reader nor apply does per-row work in Python. Apply
copies it into a staging table and writes the target with ``INSERT … SELECT``.

Wire form (bytes, no I/O here)::

    MAGIC  (8 bytes: NUL, "RCOPY1", LF — a JSON envelope never starts with NUL)
    header length (4 bytes, big-endian)
    header (orjson): {origin, relid, relation: {schema, table, columns, type_oids,
                      key_columns}, types: [format_type per column], enums: [column…], rows,
                      format: "text" | "binary" (absent: text)}
    data   (COPY text format, UTF-8, whole lines; or COPY binary tuples, whole ones, without
            the binary format's file header and trailer)

The binary format is used where every column's type is one of :data:`BINARY_TEXT_OIDS` (or an
enum): it spares both servers printing and parsing timestamps, uuids and integers (half the cost of
staging a row), and this module reads it back as the same text the text format holds, for the
rows that take the Python path (a refused chunk, ``dlq replay``). Other tables travel as text.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from connectors.envelope import Change, Envelope, RelationInfo, decode_envelopes
from replicator.errors import MalformedMessage

MAGIC = b"\x00RCOPY1\n"
_LEN = 4


@dataclass(frozen=True, slots=True)
class CopyChunk:
    origin: str
    relid: int
    relation: RelationInfo
    types: tuple[str, ...]  # format_type() of each column on the source
    enums: tuple[str, ...]  # columns of a user-defined enum type (their labels are staged as text)
    rows: int
    data: bytes
    binary: bool = False  # COPY binary tuples (see the module's doc), not text lines

    def encode(self) -> bytes:
        doc = {
            "origin": self.origin,
            "relid": self.relid,
            "relation": self.relation.to_wire(),
            "types": list(self.types),
            "enums": list(self.enums),
            "rows": self.rows,
        }
        if self.binary:
            doc["format"] = "binary"
        header = orjson.dumps(doc)
        return MAGIC + len(header).to_bytes(_LEN, "big") + header + self.data

    def lines(self) -> list[bytes]:
        return self.data.split(b"\n")[:-1] if self.data else []

    def copy_data(self) -> bytes:
        """What ``COPY … FROM STDIN`` in the chunk's format reads."""
        return SIGNATURE + self.data + TRAILER if self.binary else self.data

    def text_rows(self) -> list[list[str | None]]:
        """Every row as text values (NULL as None): the Python path's input, when the SQL form
        is not used for this chunk. A binary chunk that does not parse raises
        :class:`MalformedMessage`."""
        if not self.binary:
            return [copy_fields(line) for line in self.lines()]
        enums = set(self.enums)
        kinds = [
            (oid, c in enums)
            for c, oid in zip(self.relation.columns, self.relation.type_oids, strict=True)
        ]
        rows = []
        for fields in binary_tuples(self.data):
            if len(fields) != len(kinds):
                raise MalformedMessage(
                    f"COPY chunk of {self.relation.qualname}: a row of {len(fields)} fields,"
                    f" {len(kinds)} columns"
                )
            rows.append(
                [
                    None if f is None else field_text(oid, f, enum=e)
                    for f, (oid, e) in zip(fields, kinds, strict=True)
                ]
            )
        return rows

    def envelope(self, rows: Sequence[Sequence[str | None]] | None = None) -> Envelope:
        """The chunk (or ``rows`` of it) as snapshot changes of an envelope: the Python path's
        form of the same rows."""
        relation = self.relation
        return Envelope(
            origin=self.origin,
            xid=0,
            commit_lsn=0,
            commit_ts=None,
            relations={self.relid: relation},
            changes=[
                Change("snapshot", self.relid, values=list(r), relation=relation)
                for r in (self.text_rows() if rows is None else rows)
            ],
        )


def is_copy_chunk(value: bytes) -> bool:
    return value[: len(MAGIC)] == MAGIC


def decode_message(value: bytes) -> list[Envelope]:
    """Any message of the change or snapshot topics as envelopes (a COPY chunk as its rows)."""
    if is_copy_chunk(value):
        return [decode_copy_chunk(value).envelope()]
    return decode_envelopes(value)


def decode_copy_chunk(value: bytes) -> CopyChunk:
    """Parse a message value that :func:`is_copy_chunk`; anything malformed raises
    :class:`MalformedMessage`."""
    start = len(MAGIC) + _LEN
    if not is_copy_chunk(value) or len(value) < start:
        raise MalformedMessage("not a COPY chunk (no header)")
    size = int.from_bytes(value[len(MAGIC) : start], "big")
    if len(value) < start + size:
        raise MalformedMessage(f"COPY chunk header of {size} bytes is cut short")
    try:
        doc = orjson.loads(value[start : start + size])
        r = doc["relation"]
        relation = RelationInfo(
            schema=str(r["schema"]),
            table=str(r["table"]),
            columns=tuple(str(c) for c in r["columns"]),
            type_oids=tuple(int(o) for o in r["type_oids"]),
            key_columns=tuple(str(c) for c in r["key_columns"]),
        )
        chunk = CopyChunk(
            origin=str(doc["origin"]),
            relid=int(doc["relid"]),
            relation=relation,
            types=tuple(str(t) for t in doc["types"]),
            enums=tuple(str(e) for e in doc["enums"]),
            rows=int(doc["rows"]),
            data=bytes(value[start + size :]),
            binary=_binary_format(doc.get("format", "text")),
        )
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"COPY chunk header is not JSON: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedMessage(
            f"COPY chunk header is missing or mistypes a field: {exc!r}"
        ) from None
    if len(chunk.types) != len(relation.columns) or len(relation.type_oids) != len(
        relation.columns
    ):
        raise MalformedMessage(
            f"COPY chunk of {relation.qualname}: {len(relation.columns)} columns but"
            f" {len(chunk.types)} types and {len(relation.type_oids)} type oids"
        )
    if chunk.binary:
        # Its tuples are not walked here (that is per-row work): a damaged one fails the
        # staging COPY, and text_rows (the Python path) names it.
        if chunk.data[:2] == TRAILER[:2] and chunk.rows:
            raise MalformedMessage(f"COPY chunk of {relation.qualname} starts with a trailer")
        return chunk
    if chunk.data and not chunk.data.endswith(b"\n"):
        raise MalformedMessage(f"COPY chunk of {relation.qualname} ends inside a row")
    held = chunk.data.count(b"\n")
    if held != chunk.rows:
        raise MalformedMessage(
            f"COPY chunk of {relation.qualname} holds {held} rows, its header says {chunk.rows}"
        )
    return chunk


_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.DOTALL)
_SIMPLE = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def _unescape(m: re.Match[bytes]) -> bytes:
    octal, hexa, other = m.groups()
    if octal is not None:
        return bytes([int(octal, 8) & 0xFF])
    if hexa is not None:
        return bytes([int(hexa, 16)])
    return _SIMPLE.get(other, other)


def copy_fields(line: bytes) -> list[str | None]:
    """One line of COPY text format → its fields (``\\N`` is NULL). Data tabs and newlines are
    escaped in this format, so splitting on the raw bytes is exact."""
    out: list[str | None] = []
    for field in line.split(b"\t"):
        if field == b"\\N":
            out.append(None)
        elif b"\\" in field:
            out.append(_ESCAPE.sub(_unescape, field).decode("utf-8"))
        else:
            out.append(field.decode("utf-8"))
    return out


def _binary_format(fmt: object) -> bool:
    if fmt not in ("text", "binary"):
        raise ValueError(f"unknown format {fmt!r}")
    return fmt == "binary"


# ---- the binary format ----------------------------------------------------------------------

# The file header (signature, flags 0, no extension) and trailer of COPY's binary format.
SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
TRAILER = b"\xff\xff"

# Types whose binary form field_text prints as their text output (session in UTC, ISO dates):
# bool, int8, int2, int4, text, json, bpchar, varchar, date, timestamp, timestamptz, uuid, jsonb.
BINARY_TEXT_OIDS = frozenset({16, 20, 21, 23, 25, 114, 1042, 1043, 1082, 1114, 1184, 2950, 3802})
_TEXTUAL = frozenset({25, 114, 1042, 1043})
_I16, _I32, _I64 = struct.Struct(">h"), struct.Struct(">i"), struct.Struct(">q")
_INT32_MAX, _INT32_MIN = 2**31 - 1, -(2**31)
_INT64_MAX, _INT64_MIN = 2**63 - 1, -(2**63)
_EPOCH_DAYS = 730425  # 2000-01-01 as days after 0000-03-01 (see _civil)


def strip_binary_header(block: bytes) -> bytes:
    """The first block of a binary ``COPY … TO STDOUT`` without its file header."""
    if not block.startswith(SIGNATURE[:11]) or len(block) < 19:
        raise MalformedMessage("binary COPY output without its signature")
    (extension,) = _I32.unpack_from(block, 15)
    return block[19 + extension :]


def binary_tuples(data: bytes) -> list[list[bytes | None]]:
    """The tuples of binary COPY data (no header, no trailer) as their fields' raw bytes."""
    out: list[list[bytes | None]] = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            (count,) = _I16.unpack_from(data, pos)
            pos += 2
            if count < 0:
                raise MalformedMessage("binary COPY data holds a trailer inside")
            fields: list[bytes | None] = []
            for _ in range(count):
                (size,) = _I32.unpack_from(data, pos)
                pos += 4
                if size < 0:
                    fields.append(None)
                    continue
                if pos + size > end:
                    raise MalformedMessage("binary COPY data ends inside a field")
                fields.append(data[pos : pos + size])
                pos += size
            out.append(fields)
    except struct.error:
        raise MalformedMessage("binary COPY data ends inside a tuple") from None
    return out


def field_text(oid: int, raw: bytes, *, enum: bool = False) -> str:
    """A binary field of type ``oid`` as PostgreSQL prints it in text (UTC, ISO)."""
    try:
        if enum or oid in _TEXTUAL:
            return raw.decode("utf-8")
        if oid == 3802:
            if raw[:1] != b"\x01":
                raise MalformedMessage(f"jsonb of binary version {raw[:1]!r}")
            return raw[1:].decode("utf-8")
        if oid in (20, 21, 23):
            return str(int.from_bytes(raw, "big", signed=True))
        if oid == 16:
            return "t" if raw == b"\x01" else "f"
        if oid == 2950:
            h = raw.hex()
            if len(h) != 32:
                raise MalformedMessage(f"a uuid of {len(raw)} bytes")
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        if oid == 1082:
            (days,) = _I32.unpack(raw)
            if days in (_INT32_MAX, _INT32_MIN):
                return "infinity" if days > 0 else "-infinity"
            year, month, day = _civil(days)
            return _dated(f"{{y}}-{month:02}-{day:02}", year)
        if oid in (1114, 1184):
            (micros,) = _I64.unpack(raw)
            if micros in (_INT64_MAX, _INT64_MIN):
                return "infinity" if micros > 0 else "-infinity"
            days, us = divmod(micros, 86_400_000_000)
            year, month, day = _civil(days)
            secs, frac = divmod(us, 1_000_000)
            clock = f"{secs // 3600:02}:{secs // 60 % 60:02}:{secs % 60:02}"
            if frac:
                clock += f".{frac:06}".rstrip("0")
            zone = "+00" if oid == 1184 else ""
            return _dated(f"{{y}}-{month:02}-{day:02} {clock}{zone}", year)
    except (struct.error, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"a binary value of type {oid} does not parse: {exc}") from None
    raise MalformedMessage(f"no text form for binary values of type {oid}")


def _dated(pattern: str, year: int) -> str:
    # ISO years have at least four digits; year 0 and before print as 1 BC and before.
    if year > 0:
        return pattern.format(y=f"{year:04}")
    return pattern.format(y=f"{1 - year:04}") + " BC"


def _civil(days: int) -> tuple[int, int, int]:
    """Days after 2000-01-01 → proleptic Gregorian (year, month, day); year 0 is 1 BC."""
    z = days + _EPOCH_DAYS
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day
