"""Validation's check of the mapping itself: every column it reads exists on legacy.

A mapping that reads a column legacy does not have cannot produce the values the target
should hold; comparing rows would only show the consequence (or nothing, for a column left
NULL on both sides of the comparison). The run names the mistake and is never clean.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from transforms.api import TableTransform
from transforms.reads import absent_columns


def source_columns(conn: psycopg.Connection[Any], table: str) -> list[str] | None:
    schema, _, name = table.partition(".")
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (schema, name),
    ).fetchall()
    return [str(r[0]) for r in rows] if rows else None


def mapping_errors(
    conn: psycopg.Connection[Any], transforms: Iterable[TableTransform]
) -> list[str]:
    """What each transform reads that its legacy table lacks (and tables that do not exist)."""
    out: list[str] = []
    for t in transforms:
        cols = source_columns(conn, t.source)
        if cols is None:
            out.append(f"the mapping reads {t.source}, which does not exist on legacy")
            continue
        out.extend(a.message for a in absent_columns(t, cols))
    return out
