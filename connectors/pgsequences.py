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


def source_high_sql(seq: SequenceSync) -> sql.Composed:
    """An expression: the highest value ``seq``'s source side has in use."""
    parts: list[sql.Composable] = []
    if seq.table is not None and seq.column is not None:
        parts.append(_column_max(seq.table, seq.column))
    if seq.source_sequence is not None:
        parts.append(sql.SQL("(SELECT last_value FROM {})").format(_ident(seq.source_sequence)))
    return sql.SQL("GREATEST({}, 0)").format(sql.SQL(", ").join(parts))


def source_high(conn: psycopg.Connection[Any], seq: SequenceSync) -> int:
    """The highest value ``seq``'s source side has in use."""
    row = conn.execute(sql.SQL("SELECT {}").format(source_high_sql(seq))).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def sources_high(conn: psycopg.Connection[Any], seqs: list[SequenceSync]) -> list[int]:
    """:func:`source_high` of every one of ``seqs``, in one round trip (a switch's pause)."""
    if not seqs:
        return []
    row = conn.execute(
        sql.SQL("SELECT {}").format(sql.SQL(", ").join(source_high_sql(q) for q in seqs))
    ).fetchone()
    return [int(v) if v is not None else 0 for v in row] if row else [0] * len(seqs)


def set_target_past(conn: psycopg.Connection[Any], seq: SequenceSync, high: int) -> int:
    """Set ``seq``'s target-side sequence past ``high`` and its own column's values; the value
    it was set to."""
    row = conn.execute(
        sql.SQL("SELECT {}").format(set_past_sql(seq, target_name(conn, seq), high))
    ).fetchone()
    assert row is not None
    return int(row[0])


def target_name(conn: psycopg.Connection[Any], seq: SequenceSync) -> str:
    """The target-side sequence of ``seq``; :class:`SchemaError` when the column owns none.
    A switch resolves it before its pause."""
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
    return name


def set_past_sql(seq: SequenceSync, name: str, high: int) -> sql.Composed:
    """An expression that sets sequence ``name`` past ``high`` and ``seq``'s target column."""
    floor: sql.Composable = sql.Literal(high)
    if seq.target_table is not None and seq.target_column is not None:
        floor = sql.SQL("{}, {}").format(floor, _column_max(seq.target_table, seq.target_column))
    return sql.SQL("setval({}::regclass, GREATEST({}, 1))").format(sql.Literal(name), floor)
