"""``replicator.schema_changes``: every schema change seen, its verdict and its resolution.

Written by apply in the same transaction as the rows around it (so a replay writes it once:
``ON CONFLICT DO NOTHING`` on its position in the log); read by ``status``, ``/metrics``, the
web page and the cutover preflight, which refuses while a change needing a mapping change is
unresolved.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import psycopg

from replicator.drift.judge import NEEDS_CHANGE, VERDICTS, Judgement

SCHEMA_CHANGES_SQL = """
CREATE TABLE IF NOT EXISTS replicator.schema_changes (
    id          bigserial   PRIMARY KEY,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    commit_lsn  bigint      NOT NULL,
    seq         integer     NOT NULL,
    side        text        NOT NULL,            -- where the DDL ran: legacy | target
    via         text        NOT NULL,            -- event_trigger | relation
    tag         text        NOT NULL,
    table_name  text,
    ddl         jsonb       NOT NULL,
    verdict     text        NOT NULL,
    reason      text        NOT NULL,
    fix         text        NOT NULL DEFAULT '',
    seen_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolution  text,
    UNIQUE (topic, partition, commit_lsn, seq)
);
CREATE TABLE IF NOT EXISTS replicator.catalog_seen (  -- replicator.drift.target_watch
    name    text        PRIMARY KEY,
    columns jsonb       NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now()
);
"""


def ensure(conn: psycopg.Connection[Any]) -> None:
    conn.execute(SCHEMA_CHANGES_SQL)


def record(
    conn: psycopg.Connection[Any],
    *,
    topic: str,
    partition: int,
    commit_lsn: int,
    seq: int,
    side: str,
    via: str,
    ddl: Mapping[str, Any],
    judged: Judgement,
) -> None:
    conn.execute(
        "INSERT INTO replicator.schema_changes (topic, partition, commit_lsn, seq, side, via, tag,"
        " table_name, ddl, verdict, reason, fix) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
        " %s, %s) ON CONFLICT DO NOTHING",
        (
            topic,
            partition,
            commit_lsn,
            seq,
            side,
            via,
            str(ddl.get("tag") or "DDL"),
            judged.table,
            json.dumps(dict(ddl), default=str),
            judged.verdict,
            "; ".join(judged.reasons),
            "; ".join(judged.fixes),
        ),
    )


def _exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('replicator.schema_changes') IS NOT NULL").fetchone()
    return bool(row and row[0])


def listed(conn: psycopg.Connection[Any], *, unresolved_only: bool = False) -> list[dict[str, Any]]:
    """Every change, oldest first (LSN as PostgreSQL prints it)."""
    if not _exists(conn):
        return []
    rows = conn.execute(
        "SELECT id, side, via, tag, table_name, commit_lsn::text, seen_at, verdict, reason, fix,"
        " resolved_at, resolution FROM replicator.schema_changes"
        + (" WHERE resolved_at IS NULL" if unresolved_only else "")
        + " ORDER BY commit_lsn, seq, id"
    ).fetchall()
    out = []
    for r in rows:
        lsn = int(r[5])
        out.append(
            {
                "id": r[0],
                "side": r[1],
                "via": r[2],
                "tag": r[3],
                "table": r[4],
                "lsn": f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}",
                "seen_at": r[6].isoformat(),
                "verdict": r[7],
                "reason": r[8],
                "fix": r[9],
                "resolved_at": r[10].isoformat() if r[10] else None,
                "resolution": r[11],
                "blocks_cutover": r[7] == NEEDS_CHANGE and r[10] is None,
            }
        )
    return out


def counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Changes seen per verdict (every verdict present, 0 where none)."""
    out = dict.fromkeys(VERDICTS, 0)
    if _exists(conn):
        for verdict, n in conn.execute(
            "SELECT verdict, count(*) FROM replicator.schema_changes GROUP BY verdict"
        ).fetchall():
            out[str(verdict)] = int(n)
    return out


def blocking(conn: psycopg.Connection[Any]) -> list[str]:
    """One line per unresolved change that blocks the cutover, with its fix."""
    return [
        f"schema change {c['id']} at {c['lsn']} ({c['tag']} {c['table'] or ''}) needs a mapping"
        f" change: {c['reason']}; fix: {c['fix']}; then `replicator drift resolve {c['id']}`"
        for c in listed(conn, unresolved_only=True)
        if c["blocks_cutover"]
    ]


def resolve(conn: psycopg.Connection[Any], ids: list[int] | None, how: str) -> int:
    """Mark changes resolved (all unresolved ones when ``ids`` is None); how many were."""
    if not _exists(conn):
        return 0
    cur = conn.execute(
        "UPDATE replicator.schema_changes SET resolved_at = now(), resolution = %s"
        " WHERE resolved_at IS NULL AND (%s::bigint[] IS NULL OR id = ANY(%s::bigint[]))",
        (how, ids, ids),
    )
    return cur.rowcount
