"""The replicator's own state: the ``replicator`` schema on each database it writes to.

Offsets live beside the rows they produced (same transaction), which is what makes the apply's
effect exactly-once. The other tables are the control plane (ARCHITECTURE.md section 8):
markers and heartbeats seen, the pipeline's desired and observed direction, the cutover journal,
backfill progress and validation results.
"""

from __future__ import annotations

from typing import Any

import psycopg

from connectors.pgsink import PARKED_SQL
from replicator.drift.store import SCHEMA_CHANGES_SQL

SCHEMA_SQL = (
    """
CREATE SCHEMA IF NOT EXISTS replicator;
CREATE TABLE IF NOT EXISTS replicator.offsets (
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    next_offset     bigint      NOT NULL,
    last_commit_lsn bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
-- The source commit time of last_commit_lsn's transaction: what status measures lag from.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'replicator.offsets'::regclass
                   AND attname = 'last_commit_ts' AND NOT attisdropped) THEN
        ALTER TABLE replicator.offsets ADD COLUMN last_commit_ts timestamptz;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS replicator.heartbeats (
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    emitted_at  timestamptz NOT NULL,
    applied_at  timestamptz NOT NULL,
    commit_lsn  bigint      NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS replicator.markers (
    topic       text        NOT NULL,
    marker_id   text        NOT NULL,
    partition   integer     NOT NULL,
    kind        text        NOT NULL,
    commit_lsn  bigint      NOT NULL,
    emitted_at  timestamptz,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, marker_id, partition)
);
CREATE TABLE IF NOT EXISTS replicator.pipeline (
    name               text PRIMARY KEY,
    desired_direction  text NOT NULL DEFAULT 'fwd',
    observed_direction text NOT NULL DEFAULT 'fwd',
    state              text NOT NULL DEFAULT 'sync',
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS replicator.backfill (
    id          text PRIMARY KEY,
    tables      text[] NOT NULL,
    reading     boolean NOT NULL DEFAULT true,  -- until every chunk is in Kafka
    status      text NOT NULL DEFAULT 'pending',  -- apply's phase: pending | snapshot | applied
    truncate    boolean NOT NULL DEFAULT false,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
-- Partitions of the changes topic that reached a backfill's start marker: each holds there
-- until all have, so no change after the marker is applied before the snapshot.
CREATE TABLE IF NOT EXISTS replicator.backfill_barrier (
    backfill_id text NOT NULL,
    partition   integer NOT NULL,
    partitions  integer NOT NULL,  -- how many carry the marker
    reached_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (backfill_id, partition)
);
CREATE TABLE IF NOT EXISTS replicator.backfill_progress (
    backfill_id  text NOT NULL,
    table_name   text NOT NULL,
    rows_total   bigint NOT NULL DEFAULT 0,
    rows_read    bigint NOT NULL DEFAULT 0,
    rows_applied bigint NOT NULL DEFAULT 0,
    chunks       integer NOT NULL DEFAULT 0,
    last_key     jsonb,
    done         boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (backfill_id, table_name)
);
-- How the table is loaded: 'sql' (COPY chunks, compiled INSERT … SELECT) or 'python: <why>'.
-- Added to existing state schemas only when missing: ADD COLUMN IF NOT EXISTS would take an
-- exclusive lock on every call, queueing behind apply's open transactions.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'replicator.backfill_progress'::regclass
                   AND attname = 'path' AND NOT attisdropped) THEN
        ALTER TABLE replicator.backfill_progress ADD COLUMN path text;
    END IF;
END $$;
-- A large table read as key ranges side by side (replicator.backfill.ranges): each range's
-- position; the table's row in backfill_progress sums them.
CREATE TABLE IF NOT EXISTS replicator.backfill_ranges (
    backfill_id text NOT NULL,
    table_name  text NOT NULL,
    range_no    integer NOT NULL,
    last_key    jsonb,           -- where the range resumes (at first: the previous one's end)
    end_key     jsonb,           -- its last key, included (null: the table's end)
    rows_read   bigint NOT NULL DEFAULT 0,
    chunks      integer NOT NULL DEFAULT 0,
    done        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (backfill_id, table_name, range_no)
);
-- Dead letters dealt with (replayed or purged); the rest are what `dlq list` shows.
CREATE TABLE IF NOT EXISTS replicator.dlq_done (
    topic      text NOT NULL,
    partition  integer NOT NULL,
    dlq_offset bigint NOT NULL,
    action     text NOT NULL,  -- replayed | purged
    done_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, dlq_offset)
);
CREATE TABLE IF NOT EXISTS replicator.table_stats (
    topic        text   NOT NULL,
    table_name   text   NOT NULL,
    rows_applied bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, table_name)
);
"""
    + PARKED_SQL  # patches waiting for their rows (connectors.pgsink)
    + """
-- Indexes and foreign keys a first backfill's load goes without, until it rebuilds them
-- (replicator.apply.set_aside).
CREATE TABLE IF NOT EXISTS replicator.set_aside (
    table_name   text NOT NULL,  -- schema.table on this database
    kind         text NOT NULL,  -- index | foreign_key
    name         text NOT NULL,
    definition   text NOT NULL,  -- the statement that restores it
    tablespace   text,           -- an index's, when not the database's default
    backfill_id  text NOT NULL,  -- rebuilt once this backfill's snapshot is loaded
    set_aside_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, kind, name)
);
"""
    + SCHEMA_CHANGES_SQL  # schema drift seen and judged (replicator.drift)
)


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the state tables if missing (idempotent; concurrent callers serialise)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('replicator.ensure_schema'))")
        conn.execute(SCHEMA_SQL)


def load_offsets(conn: psycopg.Connection[Any], topic: str) -> dict[int, tuple[int, int]]:
    """partition -> (next_offset, last_commit_lsn)."""
    rows = conn.execute(
        "SELECT partition, next_offset, last_commit_lsn FROM replicator.offsets WHERE topic = %s",
        (topic,),
    ).fetchall()
    return {int(p): (int(o), int(lsn)) for p, o, lsn in rows}


def store_offset(
    conn: psycopg.Connection[Any],
    topic: str,
    partition: int,
    next_offset: int,
    last_commit_lsn: int,
    expected: int,
    last_commit_ts: str | None = None,
) -> bool:
    """Store a partition's position if it is still ``expected`` (the one this worker last
    committed); False when another worker has committed it since."""
    cur = send_offset(
        conn, topic, partition, next_offset, last_commit_lsn, expected, last_commit_ts
    )
    return cur.rowcount == 1


def send_offset(
    conn: psycopg.Connection[Any],
    topic: str,
    partition: int,
    next_offset: int,
    last_commit_lsn: int,
    expected: int,
    last_commit_ts: str | None = None,
) -> psycopg.Cursor[Any]:
    """:func:`store_offset` for a connection in pipeline mode: the cursor's ``rowcount`` is
    1 once the pipeline is synced if the position was still ``expected``. ``last_commit_ts``
    (the source commit time of ``last_commit_lsn``, ISO 8601) rides the same statement; None
    keeps the stored one (a batch of heartbeats only, or a worker that has not applied a
    transaction since it took the partition)."""
    return conn.execute(
        "INSERT INTO replicator.offsets AS o"
        " (topic, partition, next_offset, last_commit_lsn, last_commit_ts)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (topic, partition) DO UPDATE SET"
        " next_offset = EXCLUDED.next_offset, last_commit_lsn = EXCLUDED.last_commit_lsn,"
        " last_commit_ts = coalesce(EXCLUDED.last_commit_ts, o.last_commit_ts),"
        " updated_at = now() WHERE o.next_offset = %s",
        (topic, partition, next_offset, last_commit_lsn, last_commit_ts, expected),
    )


def store_heartbeat(
    conn: psycopg.Connection[Any], topic: str, partition: int, emitted_at: Any, commit_lsn: int
) -> None:
    """The newest heartbeat applied on a partition (a replayed older one changes nothing): its
    source emission time bounds the lag from above (replicator.status.lag). One dated over a
    minute ahead of the target's clock (forged: any role may emit one) is stored as that
    minute, so the next real ones replace it instead of the lag reading zero until that date."""
    conn.execute(
        "INSERT INTO replicator.heartbeats (topic, partition, emitted_at, applied_at, commit_lsn)"
        " VALUES (%s, %s, LEAST(%s::timestamptz, clock_timestamp() + interval '1 minute'),"
        " clock_timestamp(), %s)"
        " ON CONFLICT (topic, partition) DO UPDATE"
        " SET emitted_at = EXCLUDED.emitted_at, applied_at = EXCLUDED.applied_at,"
        " commit_lsn = EXCLUDED.commit_lsn"
        " WHERE heartbeats.emitted_at < EXCLUDED.emitted_at",
        (topic, partition, emitted_at, commit_lsn),
    )


def add_table_stats(conn: psycopg.Connection[Any], topic: str, rows: dict[str, int]) -> None:
    """Rows applied per target table, added to the running totals."""
    for table, n in sorted(rows.items()):
        conn.execute(
            "INSERT INTO replicator.table_stats AS s (topic, table_name, rows_applied) "
            "VALUES (%s, %s, %s) ON CONFLICT (topic, table_name) DO UPDATE "
            "SET rows_applied = s.rows_applied + EXCLUDED.rows_applied",
            (topic, table, n),
        )


def add_snapshot_progress(
    conn: psycopg.Connection[Any], backfill_id: str, rows: dict[str, int]
) -> None:
    """Snapshot rows applied per source table, added to the backfill's progress."""
    for table, n in rows.items():
        conn.execute(
            "UPDATE replicator.backfill_progress SET rows_applied = rows_applied + %s, "
            "updated_at = now() WHERE backfill_id = %s AND table_name = %s",
            (n, backfill_id, table),
        )


def store_marker(
    conn: psycopg.Connection[Any], topic: str, partition: int, ctl: dict[str, Any], commit_lsn: int
) -> None:
    """A log marker (cutover, parity) applied on a partition, in the batch's transaction: whoever
    emitted it waits for this row to know apply has passed that point."""
    conn.execute(
        "INSERT INTO replicator.markers (topic, marker_id, partition, kind, commit_lsn, emitted_at)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (topic, ctl.get("id"), partition, ctl.get("marker"), commit_lsn, ctl.get("emitted_at")),
    )
