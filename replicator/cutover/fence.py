"""Fencing a side's writes, and the markers that travel through the log.

The fence is one short transaction on the fenced side: table locks (bounded ``lock_timeout``,
retried a few times) so that every write in flight commits *before* it, a trigger on each mapped
table that refuses any later write, and the fence marker — all committed together. A statement
queued behind the lock proceeds after the commit, meets the trigger and fails: no write can
commit after the marker. Sessions with ``session_replication_role = replica`` (the apply of the
other direction) do not fire ordinary triggers, so replication into the fenced side goes on.
Application roles also lose their write privileges as a second guard.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from connectors import pg
from replicator.config import DatabaseSettings
from replicator.errors import PreconditionError, TransientDatabaseError

CONTROL_PREFIX = "replicator"
FENCE_FUNCTION = """
CREATE OR REPLACE FUNCTION replicator.fenced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'replicator: % is fenced: this database is no longer the writer', TG_TABLE_NAME
        USING ERRCODE = 'read_only_sql_transaction',
              HINT = 'writes go to the other database since the cutover (or rollback)';
END $$;
"""
WRITE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")


@dataclass
class Fence:
    """What a fence changed, so that :func:`unfence` can undo exactly that."""

    marker_id: str
    tables: list[str]
    revoked: list[tuple[str, str, str]] = field(default_factory=list)  # (role, table, privilege)
    committed_at: float = 0.0  # monotonic time of the fence commit
    lock_attempts: int = 0


def _ident(table: str) -> sql.Identifier:
    return sql.Identifier(*table.split(".", 1))


def emit(
    conn: psycopg.Connection[Any], control: dict[str, Any], *, transactional: bool = True
) -> None:
    conn.execute(
        "SELECT pg_logical_emit_message(%s, %s, %s)",
        (transactional, CONTROL_PREFIX, json.dumps(control)),
    )


def fence(
    db: DatabaseSettings,
    tables: list[str],
    *,
    app_roles: list[str],
    lock_timeout_ms: int,
    attempts: int,
    marker: dict[str, Any] | None = None,
) -> Fence:
    """Fence ``tables`` on ``db``; returns what was done. Raises if the locks cannot be had."""
    f = Fence(marker_id=uuid.uuid4().hex, tables=tables)
    conn = pg.connect(db.conninfo(), autocommit=True)
    try:
        with pg.translated(db.masked()):
            conn.execute("CREATE SCHEMA IF NOT EXISTS replicator")
            conn.execute(FENCE_FUNCTION)
            # Second guard first: revoked privileges are checked when a statement executes,
            # so one waiting for the lock below fails even before it meets the trigger.
            for role in app_roles:
                for table in tables:
                    for priv in WRITE_PRIVILEGES:
                        row = conn.execute(
                            "SELECT has_table_privilege(%s, %s, %s)", (role, _quoted(table), priv)
                        ).fetchone()
                        if row and row[0]:
                            conn.execute(
                                sql.SQL("REVOKE {} ON {} FROM {}").format(
                                    sql.SQL(priv), _ident(table), sql.Identifier(role)
                                )
                            )
                            f.revoked.append((role, table, priv))
        last: Exception | None = None
        for attempt in range(1, attempts + 1):
            f.lock_attempts = attempt
            try:
                with pg.translated(db.masked()), conn.transaction():
                    conn.execute(
                        sql.SQL("SET LOCAL lock_timeout = {}").format(
                            sql.Literal(f"{lock_timeout_ms}ms")
                        )
                    )
                    conn.execute(
                        sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                            sql.SQL(", ").join(_ident(t) for t in tables)
                        )
                    )
                    for table in tables:
                        conn.execute(
                            sql.SQL(
                                "CREATE OR REPLACE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE ON {} "
                                "FOR EACH ROW EXECUTE FUNCTION replicator.fenced()"
                            ).format(sql.Identifier("replicator_fence"), _ident(table))
                        )
                        conn.execute(
                            sql.SQL(
                                "CREATE OR REPLACE TRIGGER {} BEFORE TRUNCATE ON {} "
                                "FOR EACH STATEMENT EXECUTE FUNCTION replicator.fenced()"
                            ).format(sql.Identifier("replicator_fence_truncate"), _ident(table))
                        )
                    emit(
                        conn,
                        {"kind": "marker", "marker": "fence", "id": f.marker_id, **(marker or {})},
                    )
                f.committed_at = time.monotonic()
                return f
            except TransientDatabaseError as exc:  # lock_timeout: in-flight writes held on
                last = exc
                time.sleep(min(0.05 * attempt, 0.5))
        _restore_privileges(conn, f, db)
        raise PreconditionError(
            f"could not lock the tables within {lock_timeout_ms} ms after {attempts} attempts ({last})",
            hint="long transactions hold the tables: retry when they are done, or raise --lock-timeout",
        )
    finally:
        conn.close()


def unfence(db: DatabaseSettings, f: Fence) -> None:
    """Undo a fence: drop the triggers, give the privileges back."""
    with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
        for table in f.tables:
            conn.execute(
                sql.SQL("DROP TRIGGER IF EXISTS replicator_fence ON {}").format(_ident(table))
            )
            conn.execute(
                sql.SQL("DROP TRIGGER IF EXISTS replicator_fence_truncate ON {}").format(
                    _ident(table)
                )
            )
        _restore_privileges(conn, f, db)


def drop_fence(db: DatabaseSettings) -> list[str]:
    """Remove every fence trigger from ``db`` (it becomes the writer); returns the tables."""
    with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
        tables = fenced_tables(conn)
    unfence(db, Fence(marker_id="", tables=tables))
    return tables


def fenced_tables(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT n.nspname || '.' || c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = 'replicator_fence' ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def _restore_privileges(conn: psycopg.Connection[Any], f: Fence, db: DatabaseSettings) -> None:
    with pg.translated(db.masked()):
        for role, table, priv in f.revoked:
            conn.execute(
                sql.SQL("GRANT {} ON {} TO {}").format(
                    sql.SQL(priv), _ident(table), sql.Identifier(role)
                )
            )
    f.revoked = []


def wait_marker(
    db: DatabaseSettings, topic: str, marker_id: str, partitions: int, timeout: float
) -> float | None:
    """Seconds until apply recorded the marker on every partition, or None on timeout."""
    start = time.monotonic()
    with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
        while time.monotonic() - start < timeout:
            row = conn.execute(
                "SELECT count(DISTINCT partition) FROM replicator.markers WHERE topic = %s AND marker_id = %s",
                (topic, marker_id),
            ).fetchone()
            if row and row[0] >= partitions:
                return time.monotonic() - start
            time.sleep(0.005)
    return None


def _quoted(table: str) -> str:
    schema, _, name = table.partition(".")
    return '"' + schema.replace('"', '""') + '"."' + name.replace('"', '""') + '"'
