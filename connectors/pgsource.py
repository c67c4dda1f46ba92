"""The logical replication source: publication, slot and the walsender stream (psycopg 3).

psycopg has no high-level API for COPY_BOTH, so the stream drives libpq through ``pgconn``:
``START_REPLICATION`` then non-blocking ``get_copy_data`` frames, and ``put_copy_data`` for
standby status updates. Framing and pgoutput decoding live in :mod:`connectors.walframe` and
:mod:`connectors.pgoutput` (no I/O); this module only moves bytes.
"""

from __future__ import annotations

import re
import select
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq, sql

from connectors import pg
from connectors.envelope import format_lsn, parse_lsn
from replicator.errors import (
    ConnectionFailed,
    PermissionDenied,
    PreconditionError,
    SchemaError,
)


@dataclass(frozen=True)
class SlotInfo:
    name: str
    exists: bool
    active_pid: int | None = None
    confirmed_flush_lsn: int | None = None
    restart_lsn: int | None = None
    wal_status: str | None = None


def slot_info(conn: psycopg.Connection[Any], slot: str) -> SlotInfo:
    row = conn.execute(
        "SELECT active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status "
        "FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return SlotInfo(slot, exists=False)
    return SlotInfo(
        slot,
        exists=True,
        active_pid=row[0],
        confirmed_flush_lsn=parse_lsn(row[1]) if row[1] else None,
        restart_lsn=parse_lsn(row[2]) if row[2] else None,
        wal_status=row[3],
    )


def source_problems(conn: psycopg.Connection[Any], tables: list[str]) -> list[PreconditionError]:
    """Everything that keeps logical replication of ``tables`` from working, all at once."""
    problems: list[PreconditionError] = []
    wal_level = conn.execute("SHOW wal_level").fetchone()
    if wal_level is None or wal_level[0] != "logical":
        problems.append(
            PreconditionError(
                f"source: wal_level is {wal_level[0] if wal_level else '?'!s}, logical replication needs 'logical'",
                hint="ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL",
            )
        )
    may, role, rds = may_replicate(conn)
    if not may:
        problems.append(
            PermissionDenied(
                f"source: role {role} lacks the REPLICATION attribute",
                hint=replication_statement(role, rds),
            )
        )
    for table in tables:
        schema, _, name = table.partition(".")
        info = conn.execute(
            "SELECT c.relreplident, has_table_privilege(c.oid, 'SELECT'),"
            " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (schema, name),
        ).fetchone()
        if info is None:
            problems.append(
                SchemaError(
                    f"source: mapped table {table} does not exist",
                    hint="fix the mapping or create the table",
                )
            )
            continue
        replident, can_select, has_pk = info
        if not can_select:
            problems.append(
                PermissionDenied(
                    f"source: no SELECT privilege on {table}",
                    hint=f"GRANT SELECT ON {table} TO <replicator role>;",
                )
            )
        if replident == "n" or (replident == "d" and not has_pk):
            problems.append(
                SchemaError(
                    f"source: table {table} has no primary key and no REPLICA IDENTITY FULL; "
                    "updates and deletes could not be replicated",
                    hint=f"add a primary key, or ALTER TABLE {table} REPLICA IDENTITY FULL;",
                )
            )
    return problems


# Amazon RDS/Aurora grant replication through membership of this role, not the attribute
# (ALTER ROLE … REPLICATION is refused there).
RDS_REPLICATION = "rds_replication"


def may_replicate(conn: psycopg.Connection[Any]) -> tuple[bool, str, bool]:
    """(whether the session's role may stream from a slot, its name, whether the server is an
    RDS one: it has ``rds_replication``)."""
    row = conn.execute(
        "SELECT u.rolreplication OR u.rolsuper OR coalesce(pg_has_role(current_user, r.oid,"
        " 'MEMBER'), false), current_user, r.oid IS NOT NULL FROM pg_roles u"
        " LEFT JOIN pg_roles r ON r.rolname = %s WHERE u.rolname = current_user",
        (RDS_REPLICATION,),
    ).fetchone()
    assert row is not None
    return bool(row[0]), str(row[1]), bool(row[2])


def replication_statement(role: str, rds: bool) -> str:
    if rds:
        return f"GRANT {RDS_REPLICATION} TO {ident(role)};"
    return f"ALTER ROLE {ident(role)} REPLICATION;"


_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")


def ident(name: str) -> str:
    """A role or object name as SQL for a statement printed to run: quoted only where it must
    be, so it reads as the operator typed it."""
    return name if _PLAIN.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def ensure_publication(conn: psycopg.Connection[Any], name: str, tables: list[str]) -> None:
    """Create the publication, or add the mapped tables it lacks. Extra tables are kept."""
    idents = [sql.Identifier(*t.split(".", 1)) for t in tables]
    exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    if exists is None:
        conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(name), sql.SQL(", ").join(idents)
            )
        )
        return
    have = {
        f"{s}.{t}"
        for s, t in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,)
        ).fetchall()
    }
    missing = [sql.Identifier(*t.split(".", 1)) for t in tables if t not in have]
    if missing:
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(name), sql.SQL(", ").join(missing)
            )
        )


def create_slot(conninfo: str, slot: str) -> int:
    """Create the logical slot; returns its consistent LSN (changes after it are streamed)."""
    with pg.translated(pg.describe(conninfo)):
        conn = psycopg.connect(conninfo, replication="database", autocommit=True)
        try:
            row = conn.execute(
                sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'nothing')").format(
                    sql.Identifier(slot)
                )
            ).fetchone()
        finally:
            conn.close()
    assert row is not None
    return parse_lsn(row[1])


class ReplicationStream:
    """One walsender session: raw CopyData frames in, standby status updates out."""

    def __init__(self, conninfo: str, slot: str, options: dict[str, str]) -> None:
        self.conninfo = conninfo
        self.where = pg.describe(conninfo)
        self.slot = slot
        self.options = options
        self._conn: psycopg.Connection[Any] | None = None

    def start(self, start_lsn: int = 0) -> None:
        with pg.translated(self.where):
            self._conn = psycopg.connect(self.conninfo, replication="database", autocommit=True)
        opts = ", ".join(f"{k} '{v}'" for k, v in self.options.items())
        cmd = f'START_REPLICATION SLOT "{self.slot}" LOGICAL {format_lsn(start_lsn)} ({opts})'
        pgc = self._conn.pgconn
        pgc.send_query(cmd.encode())
        while True:
            pgc.consume_input()
            if not pgc.is_busy():
                break
            select.select([pgc.socket], [], [], 1.0)
        res = pgc.get_result()
        if res is None or res.status != pq.ExecStatus.COPY_BOTH:
            message = (
                res.error_message.decode(errors="replace").strip() if res else ""
            ) or "no result"
            sqlstate = res.error_field(pq.DiagnosticField.SQLSTATE) if res else None
            self.close()
            exc = (
                psycopg.errors.lookup(sqlstate.decode())(message)
                if sqlstate
                else psycopg.OperationalError(message)
            )
            raise pg.translate(exc, where=self.where)
        pgc.nonblocking = 1

    def read(self, timeout: float) -> bytes | None:
        """The next CopyData frame, or None when nothing arrived within ``timeout`` seconds."""
        assert self._conn is not None
        pgc = self._conn.pgconn
        try:
            nbytes, data = pgc.get_copy_data(1)
            if nbytes == 0:
                ready, _, _ = select.select([pgc.socket], [], [], timeout)
                if not ready:
                    return None
                pgc.consume_input()
                nbytes, data = pgc.get_copy_data(1)
                if nbytes == 0:
                    return None
        except psycopg.OperationalError as exc:
            raise ConnectionFailed(f"{self.where}: replication stream lost ({exc})") from exc
        if nbytes < 0:
            res = pgc.get_result()
            msg = res.error_message.decode(errors="replace").strip() if res else ""
            raise ConnectionFailed(
                f"{self.where}: replication stream ended{': ' + msg if msg else ''}"
            )
        return bytes(data)

    def send(self, frame: bytes) -> None:
        assert self._conn is not None
        pgc = self._conn.pgconn
        try:
            pgc.put_copy_data(frame)
            pgc.flush()
        except psycopg.OperationalError as exc:
            raise ConnectionFailed(f"{self.where}: replication stream lost ({exc})") from exc

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
