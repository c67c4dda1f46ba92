"""Orphans: target rows whose foreign key points at a parent that is not there.

Apply runs with foreign-key triggers off (``session_replication_role = replica``), so the target
accepts a member whose user was dead-lettered or lost; nothing but a check like this one notices.
Every foreign key between two mapped target tables is checked (MATCH SIMPLE: a key with a NULL
column points nowhere and is fine). While live sync runs, each query is one snapshot of the
target at a source commit boundary, and an orphan must still be there after a marker has passed
to be reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg import sql

from replicator.validate.report import MAX_REPORTED, Orphan
from transforms.api import Direction, TargetTable

FK_SQL = """
SELECT c.conname,
       cn.nspname || '.' || cr.relname,
       pn.nspname || '.' || pr.relname,
       ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
       ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
FROM pg_constraint c
JOIN pg_class cr ON cr.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cr.relnamespace
JOIN pg_class pr ON pr.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pr.relnamespace
WHERE c.contype = 'f'
ORDER BY 1
"""


def _ident(table: str) -> sql.Identifier:
    schema, _, name = table.partition(".")
    return sql.Identifier(schema, name)


def _query(
    conn: psycopg.Connection[Any],
    fk: tuple[str, str, str, list[str], list[str]],
    key: tuple[str, ...],
) -> tuple[list[Orphan], int]:
    name, child, parent, cols, refs = fk
    present = sql.SQL(" AND ").join(
        sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(c)) for c in cols
    )
    match = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(r), sql.Identifier(c))
        for c, r in zip(cols, refs, strict=True)
    )
    where = sql.SQL("{} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})").format(
        present, _ident(parent), match
    )
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} c WHERE {}").format(_ident(child), where)
    ).fetchone()
    count = int(row[0]) if row else 0
    if not count:
        return [], 0
    select = sql.SQL(", ").join(
        sql.SQL("c.{}::text").format(sql.Identifier(c)) for c in key + tuple(cols)
    )
    rows = conn.execute(
        sql.SQL("SELECT {} FROM {} c WHERE {} LIMIT {}").format(
            select, _ident(child), where, sql.Literal(MAX_REPORTED)
        )
    ).fetchall()
    n = len(key)
    found = [
        Orphan(
            child,
            name,
            parent,
            dict(zip(key, r[:n], strict=True)),
            dict(zip(cols, r[n:], strict=True)),
        )
        for r in rows
    ]
    return found, count


def find_orphans(
    conn: psycopg.Connection[Any],
    direction: Direction,
    selected: Mapping[str, TargetTable],
    sync: Callable[[], bool] | None,
) -> tuple[list[Orphan], int]:
    """Orphans along foreign keys between mapped target tables touching ``selected``; with
    ``sync`` (live sync), only those still there after a marker has been applied."""
    mapped = direction.target_tables
    fks = [
        (str(r[0]), str(r[1]), str(r[2]), list(r[3]), list(r[4]))
        for r in conn.execute(FK_SQL).fetchall()
        if r[1] in mapped and r[2] in mapped and (r[1] in selected or r[2] in selected)
    ]
    orphans: list[Orphan] = []
    total = 0
    for fk in fks:
        found, count = _query(conn, fk, mapped[fk[1]].key)
        orphans.extend(found)
        total += count
    if orphans and sync is not None and sync():
        again: list[Orphan] = []
        total = 0
        for fk in fks:
            found, count = _query(conn, fk, mapped[fk[1]].key)
            again.extend(found)
            total += count
        before = {(o.constraint, tuple(o.key.items())) for o in orphans}
        orphans = [o for o in again if (o.constraint, tuple(o.key.items())) in before]
        total = min(total, len(orphans)) if len(again) < MAX_REPORTED else total
    return orphans, total
