"""What validation reads from each server's catalog, in one query per server.

A query per table (its columns, then its enum columns, its key types, its size) cost a round
trip each, a few milliseconds per group on a busy machine, before any row was compared.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from transforms.compile import ENUM
from transforms.sql_twins import category

__all__ = ["TableInfo", "catalog"]


@dataclass(frozen=True)
class TableInfo:
    columns: dict[str, tuple[str, bool]]  # column -> (format_type, a user enum), in order
    rows: float  # the planner's estimate (pg_class.reltuples; -1 before the first ANALYZE)
    bytes: int  # pg_total_relation_size
    defaults: frozenset[str] = frozenset()  # columns with a default (or an identity)

    def categories(self) -> dict[str, str]:
        """Column -> category (transforms.sql_twins.category; ``enum`` for user enums)."""
        return {c: ENUM if enum else category(t) for c, (t, enum) in self.columns.items()}

    def enums(self) -> set[str]:
        return {c for c, (_, enum) in self.columns.items() if enum}

    def types(self, columns: Iterable[str]) -> tuple[str, ...]:
        """The format_type of each column (``text`` for one the table lacks)."""
        return tuple(self.columns.get(c, ("text", False))[0] for c in columns)

    @property
    def rows_guess(self) -> float:
        """Rows, or a guess from the size where the table was never analysed (~100 B a row)."""
        return self.rows if self.rows >= 0 else self.bytes / 100


MISSING = TableInfo({}, 0.0, 0)


def catalog(conn: psycopg.Connection[Any], tables: Iterable[str]) -> dict[str, TableInfo]:
    """Every table of ``tables`` (``schema.name``); one the server lacks has no columns."""
    names = sorted(set(tables))
    rows = conn.execute(
        "SELECT w.t, a.attname, format_type(a.atttypid, a.atttypmod), ty.typtype = 'e',"
        " a.atthasdef OR a.attidentity <> '', c.reltuples, pg_total_relation_size(c.oid)"
        " FROM unnest(%s::text[], %s::text[], %s::text[]) AS w(t, nsp, rel)"
        " JOIN pg_namespace n ON n.nspname = w.nsp"
        " JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.rel"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " JOIN pg_type ty ON ty.oid = a.atttypid ORDER BY w.t, a.attnum",
        (names, [t.partition(".")[0] for t in names], [t.partition(".")[2] for t in names]),
    ).fetchall()
    columns: dict[str, dict[str, tuple[str, bool]]] = {}
    defaults: dict[str, set[str]] = {}
    size: dict[str, tuple[float, int]] = {}
    for t, col, typ, enum, default, n, b in rows:
        columns.setdefault(str(t), {})[str(col)] = (str(typ), bool(enum))
        if default:
            defaults.setdefault(str(t), set()).add(str(col))
        size[str(t)] = (float(n), int(b))
    return {
        t: TableInfo(columns.get(t, {}), *size.get(t, (0.0, 0)), frozenset(defaults.get(t, ())))
        for t in names
    }
