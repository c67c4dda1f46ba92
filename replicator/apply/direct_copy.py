"""Which backfill chunks may be COPYed straight into their target, and what staged values are
cast to (the bulk path, replicator.apply.bulk).

A chunk of an ``identity:`` table loaded into an empty target needs no staging table: COPY into
the target writes each row once, where staging and ``INSERT … SELECT`` write it twice. COPY is
not INSERT everywhere, so the target is checked first: an ordinary (or partitioned) table, no
row-level security on the session, no INSERT rule (COPY skips rules), no ``GENERATED ALWAYS``
identity among the written columns (COPY fills it, INSERT refuses).

The staged path casts each value to its column's type. An explicit cast to ``varchar(n)``,
``char(n)`` or ``bit(n)`` — a domain over one too — cuts a value to size without a word, where
the column's own assignment refuses it (as COPY and the live path's insert do): the cast goes to
the base type without its length, and the store into the column checks the rest.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from connectors.copy_chunk import BINARY_TEXT_OIDS, CopyChunk
from transforms.compile import CompiledTable
from transforms.sql_twins import ident
from transforms.sqltext import qualified

# A column's type, a domain followed down to its base type (and that type's typmod).
_BASE_TYPES = """
WITH RECURSIVE d(name, typ, mod, depth) AS (
    SELECT a.attname, a.atttypid, a.atttypmod, 0 FROM pg_attribute a
    WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
    SELECT d.name, t.typbasetype, t.typtypmod, d.depth + 1 FROM d JOIN pg_type t ON t.oid = d.typ
    WHERE t.typtype = 'd' AND d.depth < 32
)
SELECT d.name, format_type(d.typ, d.mod) FROM d JOIN pg_type t ON t.oid = d.typ
WHERE t.typtype <> 'd'
"""

_COPY_CAN_WRITE = """
SELECT c.relkind IN ('r', 'p') AND NOT row_security_active(c.oid)
   AND NOT EXISTS (SELECT FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.ev_type = '3')
   AND NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND NOT a.attisdropped
                   AND a.attidentity = 'a' AND a.attname = ANY(%s))
FROM pg_class c WHERE c.oid = %s::regclass
"""

_SIZED = re.compile(r"^(character varying|character|bit varying|bit)\(\d+\)")
_UNSIZED = {"character varying": "varchar", "character": "bpchar", "bit varying": "varbit"}


def unsized(type_: str) -> str:
    """``type_`` without a string's or bit string's length (``varchar(3)[]`` → ``varchar[]``)."""
    m = _SIZED.match(type_)
    if m is None:
        return type_
    return _UNSIZED.get(m.group(1), "varbit") + type_[m.end() :]


def cast_types(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    """Column → what a staged value is cast to before it is stored in ``table``'s column."""
    rows = conn.execute(_BASE_TYPES, (qualified(table),)).fetchall()
    return {str(name): unsized(str(typ)) for name, typ in rows}


def direct_columns(
    conn: psycopg.Connection[Any],
    c: CompiledTable,
    chunk: CopyChunk,
    target_types: dict[str, dict[str, str]],
    *,
    as_text: bool,
) -> tuple[str, ...] | None:
    """The target columns that take the chunk's columns in order, when its one target is
    written with each source column as it is (what ``identity:`` does: a declared mapping's
    key checks keep it on the staged path) and COPY can write that target; else None.

    The staged path casts each staged value to the target column's type. COPY does what that
    cast does where the staged value is text (``as_text``: the identity stages the log's text,
    and COPY's input is the cast's, except that a value too long is refused instead of cut, as
    the live path's insert refuses it); otherwise only where both types are the same. A binary
    chunk only of built-in scalar types: binary COPY checks an array's or a user type's oid,
    which differ between two databases."""
    if len(c.targets) != 1 or c.checks or c.derived:
        return None
    t = c.targets[0]
    if t.patch or t.when is not None:
        return None
    by_source: dict[str, list[str]] = {}
    for name, e in t.key + t.columns + t.insert_only:
        by_source.setdefault(e.sql, []).append(name)
    types = target_types[t.table]
    names: list[str] = []
    r = chunk.relation
    for col, typ, oid in zip(r.columns, chunk.types, r.type_oids, strict=True):
        found = by_source.pop(ident(col), [])
        if len(found) != 1 or found[0] not in types:
            return None
        if not (as_text and not chunk.binary) and types[found[0]] != typ:
            return None
        if chunk.binary and oid not in BINARY_TEXT_OIDS:
            return None
        names.append(found[0])
    if by_source:
        return None  # something else is computed into the target
    row = conn.execute(_COPY_CAN_WRITE, (names, qualified(t.table))).fetchone()
    return tuple(names) if row is not None and row[0] else None
