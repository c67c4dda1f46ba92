"""Canonical rows for validation: one text form per value, whichever side it came from.

The expected side holds the Python values a transform produced (what the sink would COPY into
the target); the actual side holds what psycopg loaded back from the target column. Both are
reduced to text by the *target column's type*, so that ``"{\\"a\\": 1}"`` written into a jsonb
column equals ``{"a": 1}`` read back, an aware datetime equals the same instant in UTC, and a
``uuid.UUID`` equals its text id. Pure functions only: unit-tested without a database.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import orjson

Key = tuple[str, ...]
CanonRow = tuple[str | None, ...]
# A column the expectation does not constrain (written by no op, and the target has a default,
# or --fast compares only what the touched source rows write). Never equal to a real value.
SKIP = "\x00skip"

ExpState = Literal["present", "absent", "if_present"]


@dataclass(frozen=True, slots=True)
class TableShape:
    """A target table as validation compares it."""

    name: str
    key: tuple[str, ...]
    columns: tuple[str, ...]  # compared columns, key first, in a fixed order
    types: Mapping[str, str]  # column -> format_type()
    defaults: frozenset[str]  # columns with a default (left unwritten, they are not compared)
    # One converter per column, chosen once by type: canonicalising is the per-value hot path.
    convert: Mapping[str, Callable[[Any], str | None]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        conv = {c: converter(self.types.get(c, "text")) for c in self.columns}
        object.__setattr__(self, "convert", conv)

    def key_of(self, values: Mapping[str, Any]) -> Key:
        return tuple(self.convert[k](values[k]) or "" for k in self.key)

    def key_dict(self, key: Key) -> dict[str, str]:
        return dict(zip(self.key, key, strict=True))


# A legacy row by its source table and its key's (column, value text) pairs.
SourceRow = tuple[str, tuple[tuple[str, str | None], ...]]


@dataclass(frozen=True, slots=True)
class Exp:
    """What one target key must look like: present with ``row``, absent, or — for a row only
    patched (N→1 merge seen alone, in --fast) — ``row`` if the row exists at all.

    ``collides``: two or more legacy rows of one source table write this key (sorted). The
    mapping collides there: whatever the target holds, all but one of them are lost, so the
    key is never right (``verdict`` says ``collides``)."""

    state: ExpState
    row: CanonRow | None = None
    collides: tuple[SourceRow, ...] = ()


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value, option=_ORJSON, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):  # e.g. integers beyond 64 bits
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        )


_ORJSON = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def _text_fast(type_name: str) -> Callable[[Any], str | None]:
    def convert(value: Any) -> str | None:
        # Almost every value of a text column is a str already.
        return value if type(value) is str else canon_value(value, type_name)

    return convert


@functools.lru_cache(maxsize=256)
def converter(type_name: str) -> Callable[[Any], str | None]:
    """``canon_value`` specialised to one column type."""
    t = type_name.lower()
    if t in ("text", "character varying") or t.startswith("character varying("):
        return _text_fast(type_name)
    return functools.partial(_canon_any, type_name=type_name)


def _canon_any(value: Any, type_name: str) -> str | None:
    return canon_value(value, type_name)


def canon_value(value: Any, type_name: str) -> str | None:
    """The canonical text of ``value`` stored in a column of type ``type_name``."""
    if value is None:
        return None
    t = type_name.lower()
    if t in ("json", "jsonb"):
        if isinstance(value, str | bytes):
            # The sink sends JSON text as it is and PostgreSQL parses it: compare the parsed value.
            try:
                value = json.loads(value)
            except ValueError:
                return str(value)
        return _json_text(value)
    if t.endswith("[]"):
        return _json_text(list(value)) if not isinstance(value, str) else value
    if t.startswith("timestamp"):
        if isinstance(value, datetime):
            moment: datetime = value
            if moment.tzinfo is None or moment.utcoffset() is None:
                moment = moment.replace(tzinfo=UTC)  # naive: taken as UTC, as the transforms do
            moment = moment.astimezone(UTC)
            if "without" in t:
                moment = moment.replace(tzinfo=None)
            return moment.isoformat()
        return str(value)
    if t == "uuid" or isinstance(value, uuid.UUID):
        try:
            return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
        except ValueError:
            return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if t in ("boolean", "bool") and isinstance(value, str):
        return "true" if value.lower() in ("t", "true", "1", "yes", "on") else "false"
    if t.startswith("numeric") or isinstance(value, Decimal):
        try:
            d = Decimal(str(value))
        except InvalidOperation:
            return str(value)
        # numeric(10,2) stores 1.5 as 1.50: compare the number, not its scale.
        return format(d.normalize(), "f") if d == d.to_integral_value() else str(d.normalize())
    if isinstance(value, float) or t in ("real", "double precision"):
        return repr(float(value))
    if t in ("smallint", "integer", "bigint"):
        try:
            return str(int(value))
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, dict | list):
        return _json_text(value)
    return str(value)


def canon_row(shape: TableShape, values: Mapping[str, Any]) -> CanonRow:
    """A target row (every compared column present) in canonical form."""
    conv = shape.convert
    return tuple(conv[c](values.get(c)) for c in shape.columns)


def expected_row(shape: TableShape, values: Mapping[str, Any], *, partial: bool) -> CanonRow:
    """An expected row from the columns the transforms wrote.

    A column no op wrote is NULL in the target if the row was created without it and the column
    has no default, so it is compared as NULL; with a default (or ``partial``: only some source
    rows were transformed) it is not compared.
    """
    out: list[str | None] = []
    for c in shape.columns:
        if c in values:
            out.append(shape.convert[c](values[c]))
        elif partial or c in shape.defaults:
            out.append(SKIP)
        else:
            out.append(None)
    return tuple(out)


def masked(actual: CanonRow, expected: CanonRow | None) -> CanonRow:
    """``actual`` with the columns ``expected`` does not constrain blanked the same way."""
    if expected is None or SKIP not in expected:
        return actual
    return tuple(SKIP if e == SKIP else a for a, e in zip(actual, expected, strict=True))


def differing_columns(shape: TableShape, actual: CanonRow, expected: CanonRow) -> list[str]:
    return [
        c for c, a, e in zip(shape.columns, actual, expected, strict=True) if e != SKIP and a != e
    ]


def verdict(actual: CanonRow | None, exp: Exp | None) -> str | None:
    """``missing``/``extra``/``differs``/``collides``, or None when ``actual`` meets the
    expectation."""
    if exp is not None and exp.collides:
        return "collides"
    if exp is None or exp.state == "absent":
        return "extra" if actual is not None else None
    if actual is None:
        return "missing" if exp.state == "present" else None
    assert exp.row is not None
    return None if masked(actual, exp.row) == exp.row else "differs"


def _field(v: str | None) -> str:
    return "-" if v is None else f"{len(v)}:{v}"  # length-prefixed: no separator ambiguity


def _row_bytes(key: Key, row: CanonRow | None) -> bytes:
    fields = "|".join(map(_field, key))
    if row is not None:
        fields += "||" + "|".join(map(_field, row))
    return fields.encode("utf-8", "surrogatepass")


def chunk_digest(
    keys: Sequence[Key], rows: Mapping[Key, CanonRow | None], exp: Mapping[Key, Exp] | None = None
) -> str:
    """md5 over the canonical rows of ``keys`` (in order); a missing key counts as NULL.

    With ``exp`` (the actual side), rows are masked like their expectations, and a row that an
    ``if_present`` expectation allows to be absent is hashed as that expectation's view of it.
    """
    h = hashlib.md5(usedforsecurity=False)
    for k in keys:
        row = rows.get(k)
        if exp is not None:
            e = exp.get(k)
            if e is not None and e.row is not None and row is not None:
                row = masked(row, e.row)
        h.update(_row_bytes(k, row))
        h.update(b"\n")
    return h.hexdigest()


# How a colliding key is hashed: unlike any row (no target value holds a NUL).
_COLLIDES: CanonRow = ("\x00collides",)


def expected_view(exp: Mapping[Key, Exp]) -> dict[Key, CanonRow | None]:
    """The expectation as rows, for hashing: absent and if_present are hashed as no row, a
    collision as no row can be, so that its chunk is looked at row by row."""
    return {
        k: (_COLLIDES if e.collides else e.row if e.state == "present" else None)
        for k, e in exp.items()
    }


def chunks(keys: Iterable[Key], size: int) -> Iterable[list[Key]]:
    batch: list[Key] = []
    for k in keys:
        batch.append(k)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def shown(value: str | None, limit: int = 200) -> str | None:
    """A value for a report: long values (server configs) cut, with their length kept."""
    if value is None or len(value) <= limit:
        return value
    return f"{value[:limit]}… ({len(value)} chars)"
