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
class ServerFeatures:
    """What a source server's logical decoding offers, by major (``server_version_num``)."""

    version: int  # e.g. 130023

    @property
    def major(self) -> int:
        return self.version // 10000

    @property
    def max_proto(self) -> int:
        # 1 (13); 2 streaming and logical messages (14); 3 two-phase (15); 4 parallel (16).
        return min(4, max(1, self.major - 12))

    @property
    def logical_messages(self) -> bool:
        """pgoutput sends ``pg_logical_emit_message`` (14+); on 13 a row of ours carries them."""
        return self.major >= 14

    @property
    def failover_slots(self) -> bool:
        return self.major >= 17

    @property
    def invalidation_reason(self) -> bool:
        return self.major >= 17

    def lacks(self) -> list[tuple[str, str]]:
        """(what this server lacks, what that costs), for ``check``; empty from 17 on."""
        out: list[tuple[str, str]] = []
        if not self.logical_messages:
            out.append(
                (
                    "pgoutput carries no logical messages",
                    f"heartbeats, fence markers and watermarks travel as rows of {CARRIER_TABLE}"
                    " (in the publication; a little WAL per heartbeat)",
                )
            )
            out.append(
                (
                    "no streaming of in-progress transactions (pgoutput protocol 1)",
                    "a large transaction spills to the source's pg_replslot and is sent at commit"
                    " (capture.streaming is ignored)",
                )
            )
        if not self.failover_slots:
            out.append(
                (
                    "no failover slots (they came with 17)",
                    "after a failover of a managed primary the slot is gone: a new slot and a"
                    " new backfill",
                )
            )
        return out


# On PostgreSQL 13 pgoutput drops logical messages: the controls go as rows of this table,
# published with the mapped tables; the capture turns them back into messages (CarrierRows).
CARRIER_TABLE = "replicator.wal_message"
CARRIER_DDL = """
CREATE SCHEMA IF NOT EXISTS replicator;
CREATE TABLE IF NOT EXISTS replicator.wal_message (
    id bigserial PRIMARY KEY,
    transactional boolean NOT NULL,
    prefix text NOT NULL,
    content text NOT NULL,
    emitted_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def features(conn: psycopg.Connection[Any]) -> ServerFeatures:
    return ServerFeatures(conn.info.server_version)


def emit_message(
    server_version: int,
    transactional: bool,
    prefix: str,
    content: str | sql.Composable,
) -> sql.Composed:
    """The statement that puts a logical message into the source's WAL, on every major."""
    body = content if isinstance(content, sql.Composable) else sql.Literal(content)
    args = (sql.Literal(transactional), sql.Literal(prefix), body)
    if ServerFeatures(server_version).logical_messages:
        return sql.SQL("SELECT pg_logical_emit_message({}, {}, {})").format(*args)
    # A heartbeat also clears carrier rows older than an hour (their deletes are not relayed).
    prune = sql.SQL(
        "WITH pruned AS (DELETE FROM replicator.wal_message"
        " WHERE emitted_at < now() - interval '1 hour') "
        if not transactional
        else ""
    )
    return sql.SQL(
        "{}INSERT INTO replicator.wal_message (transactional, prefix, content) VALUES ({}, {}, {})"
    ).format(prune, *args)


def heartbeat_statement(server_version: int, prefix: str, origin: str) -> sql.Composed:
    """A non-transactional heartbeat: the slot moves while idle, and lag is measured by it."""
    content = sql.SQL(
        "json_build_object('kind', 'heartbeat', 'emitted_at', clock_timestamp(),"
        " 'origin', {}::text)::text"
    ).format(sql.Literal(origin))
    return emit_message(server_version, False, prefix, content)


def stream_options(
    server: ServerFeatures, publication: str, proto_version: int, streaming: bool
) -> dict[str, str]:
    """START_REPLICATION's options: what was asked for, within what the server offers."""
    proto = min(proto_version, server.max_proto, 2)  # the decoder reads protocols 1 and 2
    options = {"proto_version": str(proto), "publication_names": publication}
    if server.logical_messages:
        options["messages"] = "true"
    if proto >= 2 and streaming:
        options["streaming"] = "on"
    return options


@dataclass(frozen=True)
class SlotInfo:
    name: str
    exists: bool
    active_pid: int | None = None
    confirmed_flush_lsn: int | None = None
    restart_lsn: int | None = None
    wal_status: str | None = None
    invalidation_reason: str | None = None  # 17+: why the server invalidated it
    failover: bool | None = None  # 17+: a failover slot


def slot_info(conn: psycopg.Connection[Any], slot: str) -> SlotInfo:
    extra = "invalidation_reason, failover" if features(conn).invalidation_reason else "NULL, NULL"
    row = conn.execute(
        "SELECT active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status, "
        f"{extra} FROM pg_replication_slots WHERE slot_name = %s",
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
        invalidation_reason=row[4],
        failover=row[5],
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
    if not features(conn).logical_messages:
        conn.execute(CARRIER_DDL)
        tables = [*tables, CARRIER_TABLE]
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
            server = features(conn)
            # From 17 a failover slot: a managed primary's standby keeps a synced copy
            # (sync_replication_slots), so a failover does not lose the slot's position.
            options = (
                "(SNAPSHOT 'nothing', FAILOVER true)"
                if server.failover_slots
                # The parenthesised options are 15+; 13 and 14 know only the keyword.
                else "(SNAPSHOT 'nothing')"
                if server.major >= 15
                else "NOEXPORT_SNAPSHOT"
            )
            row = conn.execute(
                sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {}").format(
                    sql.Identifier(slot), sql.SQL(options)
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
