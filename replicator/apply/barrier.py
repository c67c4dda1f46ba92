"""The backfill barrier in the target's state tables (ARCHITECTURE.md section 5).

Each partition of the changes topic stops at a backfill's start marker; once every partition
has, exactly one worker starts the snapshot phase. Every change before the marker is then
applied on every partition before the snapshot, and none after it: why the backfill converges.
"""

from __future__ import annotations

from typing import Any

import psycopg


def held_partitions(conn: psycopg.Connection[Any]) -> set[int]:
    """Partitions stopped at the start marker of a backfill that is not applied yet: no change
    after the marker may land before the snapshot, whichever worker reads it."""
    rows = conn.execute(
        "SELECT b.partition FROM replicator.backfill_barrier b "
        "JOIN replicator.backfill f ON f.id = b.backfill_id "
        "WHERE f.status IN ('pending', 'snapshot')"
    ).fetchall()
    return {int(r[0]) for r in rows}


def reach_marker(conn: psycopg.Connection[Any], control: dict[str, Any], partition: int) -> bool:
    """Record that ``partition`` reached the marker (committed with its offset by the caller);
    False: the marker of a backfill already under way or done (a replay)."""
    backfill_id = control.get("backfill_id")
    row = conn.execute(
        "SELECT status FROM replicator.backfill WHERE id = %s", (backfill_id,)
    ).fetchone()
    if row is None or row[0] != "pending":
        return False
    conn.execute(
        "INSERT INTO replicator.backfill_barrier (backfill_id, partition, partitions) "
        "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        (backfill_id, partition, int(control.get("partitions", 1))),
    )
    return True


def start_snapshot_phase(conn: psycopg.Connection[Any]) -> tuple[bool, list[str], str] | None:
    """Start the snapshot phase of a backfill whose marker every partition has reached: (its
    truncate flag, its source tables, its id), or None. The status condition lets exactly one worker
    switch, whoever runs last."""
    row = conn.execute(
        "UPDATE replicator.backfill f SET status = 'snapshot' WHERE f.status = 'pending' "
        "AND (SELECT count(*) FROM replicator.backfill_barrier b WHERE b.backfill_id = f.id)"
        " >= (SELECT max(partitions) FROM replicator.backfill_barrier b "
        "WHERE b.backfill_id = f.id) RETURNING f.truncate, f.tables, f.id"
    ).fetchone()
    return None if row is None else (bool(row[0]), list(row[1]), str(row[2]))
