"""Sequences at the switch: the new writer's sequences set past the old writer's values.

Sequences are not replicated. At a cutover (and a rollback) each :class:`SequenceSync` of the
draining direction reads the highest value in use on its source side (the column's maximum,
and/or the named sequence's current value) and sets its target side's sequence past it and past
the target column's own maximum. A target column that owns no sequence, or a sequence that does
not exist, is an error: a silent ``setval(NULL, …)`` would leave the new writer handing out ids
that are already taken. ``replicator check`` reports both beforehand.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from replicator.errors import SchemaError
from transforms.api import SequenceSync
from transforms.sqltext import qualified


def _ident(table: str) -> sql.Identifier:
    schema, _, name = table.partition(".")
    return sql.Identifier(schema, name)


def _column_max(table: str, column: str) -> sql.Composed:
    return sql.SQL("(SELECT coalesce(max({}), 0) FROM {})").format(
        sql.Identifier(column), _ident(table)
    )


def source_high(conn: psycopg.Connection[Any], seq: SequenceSync) -> int:
    """The highest value ``seq``'s source side has in use."""
    parts: list[sql.Composable] = []
    if seq.table is not None and seq.column is not None:
        parts.append(_column_max(seq.table, seq.column))
    if seq.source_sequence is not None:
        parts.append(sql.SQL("(SELECT last_value FROM {})").format(_ident(seq.source_sequence)))
    row = conn.execute(
        sql.SQL("SELECT GREATEST({}, 0)").format(sql.SQL(", ").join(parts))
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def set_target_past(conn: psycopg.Connection[Any], seq: SequenceSync, high: int) -> int:
    """Set ``seq``'s target-side sequence past ``high`` and its own column's values; the value
    it was set to."""
    if seq.target_sequence is not None:
        name = qualified(seq.target_sequence)
    else:
        assert seq.target_table is not None and seq.target_column is not None
        row = conn.execute(
            "SELECT pg_get_serial_sequence(%s, %s)",
            (qualified(seq.target_table), seq.target_column),
        ).fetchone()
        if row is None or row[0] is None:
            raise SchemaError(
                f"{seq.described}: {seq.target_table}.{seq.target_column} owns no sequence",
                hint="name it in the mapping: SequenceSync(..., target_sequence='schema.name')",
            )
        name = str(row[0])
    floor: sql.Composable = sql.Literal(high)
    if seq.target_table is not None and seq.target_column is not None:
        floor = sql.SQL("{}, {}").format(floor, _column_max(seq.target_table, seq.target_column))
    row = conn.execute(
        sql.SQL("SELECT setval(%s::regclass, GREATEST({}, 1))").format(floor), (name,)
    ).fetchone()
    assert row is not None
    return int(row[0])
