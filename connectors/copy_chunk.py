"""A backfill chunk as PostgreSQL's own COPY text output: the snapshot topic's bulk form.

A table whose transform compiles to SQL (transforms.compile) is read with ``COPY (SELECT … WHERE
key > last ORDER BY key LIMIT n) TO STDOUT`` and travels as that output, untouched: the log keeps
one raw, replayable form, and neither the reader nor apply does per-row work in Python. Apply
copies it into a staging table and writes the target with ``INSERT … SELECT``.

Wire form (bytes, no I/O here)::

    MAGIC  (8 bytes: NUL, "RCOPY1", LF — a JSON envelope never starts with NUL)
    header length (4 bytes, big-endian)
    header (orjson): {origin, relid, relation: {schema, table, columns, type_oids,
                      key_columns}, types: [format_type per column], enums: [column…], rows}
    data   (COPY text format, UTF-8, whole lines)

The text format (not binary) keeps the payload readable, lets the last row's key be read without
the types' binary layouts, and costs apply the same parse as the Python path's text values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from connectors.envelope import RelationInfo
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

    def encode(self) -> bytes:
        header = orjson.dumps(
            {
                "origin": self.origin,
                "relid": self.relid,
                "relation": self.relation.to_wire(),
                "types": list(self.types),
                "enums": list(self.enums),
                "rows": self.rows,
            }
        )
        return MAGIC + len(header).to_bytes(_LEN, "big") + header + self.data

    def lines(self) -> list[bytes]:
        return self.data.split(b"\n")[:-1] if self.data else []

    def text_rows(self) -> list[list[str | None]]:
        """Every row as text values (NULL as None): the Python path's input, when the SQL form
        is not used for this chunk."""
        return [copy_fields(line) for line in self.lines()]


def is_copy_chunk(value: bytes) -> bool:
    return value[: len(MAGIC)] == MAGIC


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
