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
# What a fence revoked, kept on the fenced side: the switch that later makes this side the writer
# again (a rollback after a cutover, or the reverse) gives exactly that back, whichever process
# runs it.
REVOKED_TABLE = """
CREATE TABLE IF NOT EXISTS replicator.fence_revoked (
    role_name  text NOT NULL,
    table_name text NOT NULL,  -- quoted and qualified, as GRANT takes it
    privilege  text NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role_name, table_name, privilege)
)
"""


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
    conn: psycopg.Connection[Any] | None = None,
) -> Fence:
    """Fence ``tables`` on ``db``; returns what was done. Raises if the locks cannot be had.

    Writes stop at the first revoke (or at the lock): every step from there is one round trip,
    the lock, triggers and marker one multi-statement transaction. ``conn`` (autocommit), opened
    by the caller ahead of the pause, spares a connection's set-up; it is left open."""
    f = Fence(marker_id=uuid.uuid4().hex, tables=tables)
    own = conn is None
    c = pg.connect(db.conninfo(), autocommit=True) if conn is None else conn
    try:
        with pg.translated(db.masked()):
            prepare(c)
            # Second guard first: revoked privileges are checked when a statement executes,
            # so one waiting for the lock below fails even before it meets the trigger.
            f.revoked = _revoke(c, app_roles, tables)
        control = {"kind": "marker", "marker": "fence", "id": f.marker_id, **(marker or {})}
        locked = sql.SQL("; ").join(
            [
                sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms")),
                sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(_ident(t) for t in tables)
                ),
                *(
                    sql.SQL(
                        "CREATE OR REPLACE TRIGGER replicator_fence BEFORE INSERT OR UPDATE OR DELETE"
                        " ON {t} FOR EACH ROW EXECUTE FUNCTION replicator.fenced(); "
                        "CREATE OR REPLACE TRIGGER replicator_fence_truncate BEFORE TRUNCATE ON {t}"
                        " FOR EACH STATEMENT EXECUTE FUNCTION replicator.fenced()"
                    ).format(t=_ident(t))
                    for t in tables
                ),
                sql.SQL("SELECT pg_logical_emit_message(true, {}, {})").format(
                    sql.Literal(CONTROL_PREFIX), sql.Literal(json.dumps(control))
                ),
            ]
        )
        last: Exception | None = None
        for attempt in range(1, attempts + 1):
            f.lock_attempts = attempt
            try:
                # One simple query: its statements are one implicit transaction, so the locks,
                # triggers and marker commit together in a single round trip.
                with pg.translated(db.masked()):
                    c.execute(locked)
                f.committed_at = time.monotonic()
                return f
            except TransientDatabaseError as exc:  # lock_timeout: in-flight writes held on
                last = exc
                time.sleep(min(0.05 * attempt, 0.5))
        _restore_privileges(c, f, db)
        raise PreconditionError(
            f"could not lock the tables within {lock_timeout_ms} ms after {attempts} attempts ({last})",
            hint="long transactions hold the tables: retry when they are done, or raise --lock-timeout",
        )
    finally:
        if own:
            c.close()


def prepare(conn: psycopg.Connection[Any]) -> None:
    """What a fence needs in place, created before any write is blocked."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS replicator")
    conn.execute(FENCE_FUNCTION)
    conn.execute(REVOKED_TABLE)


def _revoke(
    conn: psycopg.Connection[Any], roles: list[str], tables: list[str]
) -> list[tuple[str, str, str]]:
    """Revoke the roles' write privileges on the tables, in two round trips; returns what was
    revoked, so that an unfence gives back exactly that."""
    if not roles:
        return []
    rows = conn.execute(
        "SELECT r, t, p FROM unnest(%s::text[]) r, unnest(%s::text[]) t, unnest(%s::text[]) p"
        " WHERE has_table_privilege(r, t, p)",
        (roles, [_quoted(t) for t in tables], list(WRITE_PRIVILEGES)),
    ).fetchall()
    by_quoted = {_quoted(t): t for t in tables}
    revoked = [(str(r), by_quoted[str(t)], str(p)) for r, t, p in rows]
    if revoked:
        conn.execute(
            sql.SQL("; ").join(
                [
                    *(
                        sql.SQL("REVOKE {} ON {} FROM {}").format(
                            sql.SQL(p), _ident(t), sql.Identifier(r)
                        )
                        for r, t, p in revoked
                    ),
                    sql.SQL(
                        "INSERT INTO replicator.fence_revoked (role_name, table_name, privilege)"
                        " SELECT * FROM unnest({}::text[], {}::text[], {}::text[])"
                        " ON CONFLICT DO NOTHING"
                    ).format(
                        sql.Literal([r for r, _, _ in revoked]),
                        sql.Literal([_quoted(t) for _, t, _ in revoked]),
                        sql.Literal([p for _, _, p in revoked]),
                    ),
                ]
            )
        )
    return revoked


def unfence(db: DatabaseSettings, f: Fence) -> None:
    """Undo a fence: drop the triggers, give the privileges back (one round trip each)."""
    with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
        if f.tables:
            conn.execute(
                sql.SQL("; ").join(
                    sql.SQL(
                        "DROP TRIGGER IF EXISTS replicator_fence ON {t}; "
                        "DROP TRIGGER IF EXISTS replicator_fence_truncate ON {t}"
                    ).format(t=_ident(t))
                    for t in f.tables
                )
            )
        _restore_privileges(conn, f, db)


# Every fence trigger of the database dropped, and the write privileges its fence took from
# application roles given back, in one round trip: the new writer's fence left by an earlier
# switch the other way, removed in the write pause.
DROP_ALL_FENCES = """
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT t.tgname, t.tgrelid::regclass AS rel FROM pg_trigger t
             WHERE t.tgname IN ('replicator_fence', 'replicator_fence_truncate') LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.rel);
    END LOOP;
    IF to_regclass('replicator.fence_revoked') IS NOT NULL THEN
        FOR r IN DELETE FROM replicator.fence_revoked RETURNING role_name, table_name, privilege LOOP
            EXECUTE format('GRANT %s ON %s TO %I', r.privilege, r.table_name, r.role_name);
        END LOOP;
    END IF;
END $$
"""


def drop_fence(db: DatabaseSettings) -> list[str]:
    """Remove every fence trigger from ``db`` (it becomes the writer); returns the tables."""
    with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
        tables = fenced_tables(conn)
        conn.execute(DROP_ALL_FENCES)
    return tables


def fenced_tables(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT n.nspname || '.' || c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = 'replicator_fence' ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def _restore_privileges(conn: psycopg.Connection[Any], f: Fence, db: DatabaseSettings) -> None:
    if f.revoked:
        with pg.translated(db.masked()):
            conn.execute(
                sql.SQL("; ").join(
                    [
                        *(
                            sql.SQL("GRANT {} ON {} TO {}").format(
                                sql.SQL(priv), _ident(table), sql.Identifier(role)
                            )
                            for role, table, priv in f.revoked
                        ),
                        sql.SQL(
                            "DELETE FROM replicator.fence_revoked WHERE (role_name, table_name,"
                            " privilege) IN (SELECT * FROM unnest({}::text[], {}::text[], {}::text[]))"
                        ).format(
                            sql.Literal([r for r, _, _ in f.revoked]),
                            sql.Literal([_quoted(t) for _, t, _ in f.revoked]),
                            sql.Literal([p for _, _, p in f.revoked]),
                        ),
                    ]
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


def wait_drained(
    conn: psycopg.Connection[Any], topic: str, marker_id: str, partitions: int, timeout: float
) -> dict[int, int] | None:
    """Wait until apply recorded the marker on every partition (one query per poll, on a held
    connection); returns apply's next offset per partition as of then (everything before the
    marker is below them), or None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(
            "SELECT (SELECT count(DISTINCT partition) FROM replicator.markers"
            " WHERE topic = %s AND marker_id = %s),"
            " (SELECT coalesce(json_object_agg(partition, next_offset), '{}')::text"
            " FROM replicator.offsets WHERE topic = %s)",
            (topic, marker_id, topic),
        ).fetchone()
        if row and row[0] >= partitions:
            return {int(p): int(o) for p, o in json.loads(row[1]).items()}
        if time.monotonic() > deadline:
            return None
        time.sleep(0.002)


def _quoted(table: str) -> str:
    schema, _, name = table.partition(".")
    return '"' + schema.replace('"', '""') + '"."' + name.replace('"', '""') + '"'
