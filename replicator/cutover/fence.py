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

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from connectors import pg
from connectors.pgsource import emit_message
from replicator.config import DatabaseSettings
from replicator.cutover import records
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
    """What a fence changed (its record on the fenced side says the same)."""

    marker_id: str
    tables: list[str]
    revoked: list[tuple[str, str, str]] = field(default_factory=list)  # (grantee, table, priv)
    committed_at: float = 0.0  # monotonic time of the fence commit
    lock_attempts: int = 0


def _ident(table: str) -> sql.Identifier:
    return sql.Identifier(*table.split(".", 1))


def emit(
    conn: psycopg.Connection[Any], control: dict[str, Any], *, transactional: bool = True
) -> None:
    conn.execute(
        emit_message(conn.info.server_version, transactional, CONTROL_PREFIX, json.dumps(control))
    )


def fence(
    db: DatabaseSettings,
    tables: list[str],
    *,
    app_roles: list[str],
    lock_timeout_ms: int,
    attempts: int,
    run_id: str = "",
    marker: dict[str, Any] | None = None,
    conn: psycopg.Connection[Any] | None = None,
    strike: Callable[[str, Sequence[str]], None] | None = None,
    calm: Callable[[], AbstractContextManager[None]] | None = None,
) -> Fence:
    """Fence ``tables`` on ``db``; returns what was done. Raises if the locks cannot be had.

    Writes stop at the first revoke (or at the lock): every step from there is one round trip,
    the lock, triggers, record and marker one multi-statement transaction. ``conn``
    (autocommit), opened by the caller ahead of the pause, spares a connection's set-up.

    Whatever stops it — a lock timeout, an error, a signal, a dropped connection — the side is
    left as it was: the session is ended (a lock wait cut short on the client could still
    commit on the server) and the fence dropped from its record, on a fresh connection."""
    f = Fence(marker_id=uuid.uuid4().hex, tables=tables)
    own = conn is None
    c = pg.connect(db.conninfo(), autocommit=True) if conn is None else conn
    pid = c.info.backend_pid  # now: a closed connection no longer says which session it was
    try:
        with pg.translated(db.masked()):
            prepare(c)
            # Second guard first: revoked privileges are checked when a statement executes,
            # so one waiting for the lock below fails even before it meets the trigger.
            f.revoked = _revoke(c, app_roles, tables, run_id)
        if strike is not None:
            strike("fence:locking", tables)
        control = {"kind": "marker", "marker": "fence", "id": f.marker_id, **(marker or {})}
        quoted = sql.Literal([_quoted(t) for t in tables])
        locked = sql.SQL("; ").join(
            [
                sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms")),
                sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(_ident(t) for t in tables)
                ),
                sql.SQL("SELECT replicator._fence_triggers(t) FROM unnest({}::text[]) t").format(
                    quoted
                ),
                sql.SQL(
                    "INSERT INTO replicator.fence_tables (table_name, run_id)"
                    " SELECT t, {} FROM unnest({}::text[]) t ON CONFLICT (table_name)"
                    " DO UPDATE SET run_id = EXCLUDED.run_id, lifted_by = NULL, fenced_at = now()"
                ).format(sql.Literal(run_id), quoted),
                emit_message(c.info.server_version, True, CONTROL_PREFIX, json.dumps(control)),
            ]
        )
        last: Exception | None = None
        for attempt in range(1, attempts + 1):
            f.lock_attempts = attempt
            try:
                # One simple query: its statements are one implicit transaction, so the locks,
                # triggers, record and marker commit together in a single round trip.
                with pg.translated(db.masked()):
                    c.execute(locked)
                f.committed_at = time.monotonic()
                return f
            except TransientDatabaseError as exc:  # lock_timeout: in-flight writes held on
                if c.broken or c.closed:
                    raise  # the session is gone (a network cut): no attempt can succeed
                last = exc
                time.sleep(min(0.05 * attempt, 0.5))
        raise PreconditionError(
            f"could not lock the tables within {lock_timeout_ms} ms after {attempts} attempts ({last})",
            hint="long transactions hold the tables: retry when they are done, or raise --lock-timeout",
        )
    except BaseException:
        with calm() if calm is not None else contextlib.nullcontext():
            undo_failed_fence(db, c, pid, run_id)
        raise
    finally:
        if own:
            c.close()


def undo_failed_fence(
    db: DatabaseSettings, held: psycopg.Connection[Any], pid: int, run_id: str
) -> None:
    """A fence that did not complete, taken back: its session ended first (so a statement
    still running there cannot commit afterwards), then what this run fenced undone from its
    record (a run without an id: every fence of the side)."""
    with contextlib.suppress(Exception):
        held.close()
    with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
        end_sessions(conn, [pid])
        prepare(conn)
        conn.execute(records.drop_run_sql(run_id) if run_id else records.DROP_SQL)


def end_sessions(conn: psycopg.Connection[Any], pids: list[int], timeout_s: float = 10.0) -> None:
    """Terminate backends and wait until they are gone (their transactions rolled back)."""
    if not pids:
        return
    conn.execute("SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) p", (pids,))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s::int[])", (pids,)
        ).fetchone()
        if not row or not row[0]:
            return
        time.sleep(0.01)
    raise PreconditionError(
        f"sessions {pids} did not end within {timeout_s:.0f}s",
        hint="end them with pg_terminate_backend, then run `replicator recover`",
    )


def prepare(conn: psycopg.Connection[Any]) -> None:
    """What a fence (or lifting one) needs in place, created before any write is blocked."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS replicator")
    conn.execute(FENCE_FUNCTION)
    records.prepare(conn)


# The application roles' write privileges as the ACLs hold them: granted to the role itself,
# to a group it writes through, or to PUBLIC — revoked from whoever holds them (revoking from
# the role alone does nothing to a privilege it holds through a group). Never from a role the
# replicator itself uses: its apply writes into the fenced side.
_HOLDERS = """
WITH RECURSIVE mine(oid) AS (
    SELECT oid FROM pg_roles WHERE rolname = current_user
    UNION SELECT am.roleid FROM pg_auth_members am JOIN mine ON am.member = mine.oid
)
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE g.rolname END, t, a.privilege_type,
       bool_or(a.is_grantable)
FROM unnest(%s::text[]) t
JOIN pg_class c ON c.oid = t::regclass
CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
LEFT JOIN pg_roles g ON g.oid = a.grantee
WHERE a.privilege_type = ANY(%s::text[])
  AND a.grantor = c.relowner  -- what a REVOKE as the owner takes away (and a GRANT gives back)
  AND a.grantee NOT IN (SELECT oid FROM mine)
  AND EXISTS (SELECT 1 FROM unnest(%s::text[]) r
              WHERE a.grantee = 0 OR pg_has_role(r, a.grantee, 'USAGE'))
GROUP BY 1, 2, 3
"""


def _revoke(
    conn: psycopg.Connection[Any], roles: list[str], tables: list[str], run_id: str
) -> list[tuple[str, str, str]]:
    """Revoke the roles' write privileges on the tables, recorded in the same transaction, in
    two round trips; returns what was revoked."""
    if not roles:
        return []
    rows = conn.execute(
        _HOLDERS, ([_quoted(t) for t in tables], list(WRITE_PRIVILEGES), roles)
    ).fetchall()
    if not rows:
        return []
    grantee = [str(r[0]) for r in rows]
    conn.execute(
        sql.SQL("; ").join(
            [
                *(
                    sql.SQL("REVOKE {} ON {} FROM {}").format(
                        sql.SQL(str(p)),
                        sql.SQL(str(t)),
                        sql.SQL("PUBLIC") if g == "PUBLIC" else sql.Identifier(g),
                    )
                    for g, (_, t, p, _) in zip(grantee, rows, strict=True)
                ),
                sql.SQL(
                    "INSERT INTO replicator.fence_revoked"
                    " (role_name, table_name, privilege, grantable, run_id)"
                    " SELECT g, t, p, o, {} FROM unnest({}::text[], {}::text[], {}::text[],"
                    " {}::bool[]) AS x(g, t, p, o)"
                    " ON CONFLICT (role_name, table_name, privilege) DO UPDATE"
                    " SET lifted_by = NULL, run_id = EXCLUDED.run_id"
                ).format(
                    sql.Literal(run_id),
                    sql.Literal(grantee),
                    sql.Literal([str(r[1]) for r in rows]),
                    sql.Literal([str(r[2]) for r in rows]),
                    sql.Literal([bool(r[3]) for r in rows]),
                ),
            ]
        )
    )
    by_quoted = {_quoted(t): t for t in tables}
    return [
        (g, by_quoted.get(str(r[1]), str(r[1])), str(r[2]))
        for g, r in zip(grantee, rows, strict=True)
    ]


def unfence(db: DatabaseSettings, run_id: str = "") -> None:
    """Undo a fence — run ``run_id``'s, or every one — no trigger left, every privilege it
    took given back (one round trip)."""
    with pg.connect(db.conninfo(), autocommit=True) as c, pg.translated(db.masked()):
        prepare(c)
        c.execute(records.drop_run_sql(run_id) if run_id else records.DROP_SQL)


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
