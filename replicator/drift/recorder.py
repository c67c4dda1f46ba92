"""What apply does with a schema change: judge it against the target as it is now, store it in
the batch's transaction, and say so in the log (never silent).

Two ways in: a DDL record from the source's event trigger (:func:`record_ddl`, exact, at its
position in the log), and, where no trigger could be installed, a relation whose columns
changed since apply last saw it (:class:`RelationWatch`, seen when the table is next written:
the fallback, blind to changes of tables nobody writes and to a type's length or precision).
"""

from __future__ import annotations

import logging
import re
import zlib
from typing import Any

import psycopg

from connectors import pg
from connectors.envelope import Envelope, RelationInfo, decode_envelopes
from replicator.check_mapping import live_catalog
from replicator.drift.judge import NEEDS_CHANGE, Judgement, judge
from replicator.drift.store import record
from replicator.drift.target_watch import TargetWatch
from replicator.errors import ReplicatorError
from transforms.api import Direction
from transforms.sqltext import qualified

log = logging.getLogger("replicator.drift")

# Type names of a relation's OIDs (pgoutput's Relation carries OIDs, not format_type's text).
_TYPE_NAMES = {
    16: "boolean", 20: "bigint", 21: "smallint", 23: "integer", 25: "text", 114: "json",
    700: "real", 701: "double precision", 1042: "character", 1043: "character varying",
    1082: "date", 1114: "timestamp without time zone", 1184: "timestamp with time zone",
    1700: "numeric", 2950: "uuid", 3802: "jsonb",
}  # fmt: skip


def record_ddl(
    worker: Any, env: Envelope, partition: int, control: dict[str, Any], batch: Any
) -> Judgement:
    """A DDL record from the log. ``worker`` is the apply worker (replicator.apply.worker):
    its target session, mapping direction and topic; the record joins its open transaction."""
    ddl = control.get("ddl")
    if not isinstance(ddl, dict):
        ddl = {"tag": "unreadable", "query": str(ddl)}
    watch = getattr(worker, "drift_watch", None)
    if isinstance(watch, RelationWatch) and ddl.get("table") and ddl.get("columns") is not None:
        watch.reported(str(ddl["table"]), ddl["columns"])
    replayed = _replay(worker, ddl, batch) if worker.s.drift.apply_ddl else None
    return _record(worker, env.commit_lsn, env.seq, partition, ddl, "event_trigger", replayed)


_ALTER = re.compile(
    r"\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?"
    r'((?:"(?:[^"]|"")+"|[\w$]+)(?:\s*\.\s*(?:"(?:[^"]|"")+"|[\w$]+))?)',
    re.IGNORECASE,
)
# What a replay never does, whoever asked: a DDL record is a logical message any role that may
# connect to the source can forge (replicator.apply.controls), and the replay runs with the
# replicator's own privileges — ownership, schema, names, triggers, rules, policies, security
# and tablespaces stay the target's, and no USING expression is evaluated there.
_NEVER = re.compile(
    r"\b(OWNER|SCHEMA|RENAME|TRIGGER|RULE|POLICY|SECURITY|USING|TABLESPACE|REPLICA|INHERIT"
    r"|ATTACH|DETACH|CLUSTER|LOGGED|UNLOGGED|OPTIONS)\b",
    re.IGNORECASE,
)


def _replay(worker: Any, ddl: dict[str, Any], batch: Any) -> str | None:
    """``drift.apply_ddl``: an identity table's ALTER TABLE, run on the target at its place in
    the stream (after the rows before it, before the rows after it). Only a statement that is
    one ALTER TABLE alone: a multi-statement query would replay its other statements too."""
    transform = worker.direction.tables.get(ddl.get("table"))
    if transform is None or not transform.copies_rows:
        return None  # a reshaping mapping: the mapping, not the DDL, decides the target
    query = str(ddl.get("query") or "").strip().rstrip(";").strip()
    alter = _ALTER.match(query)
    if ddl.get("tag") != "ALTER TABLE" or ";" in query or alter is None:
        return (
            "not replayed on the target (drift.apply_ddl replays one ALTER TABLE statement alone)"
        )
    if _NEVER.search(query):
        return (
            "not replayed on the target (drift.apply_ddl replays column changes only, never"
            " ownership, names, schemas, triggers, rules, policies or a USING expression)"
        )
    worker._flush(batch)  # the rows before it, in the table's old shape
    try:
        with pg.translated(worker.db.masked()), worker.conn.transaction():
            same = worker.conn.execute(
                "SELECT to_regclass(%s) = to_regclass(%s)",
                (alter.group(1), qualified(str(ddl.get("table")))),  # the trigger's raw names
            ).fetchone()
            if not (same and same[0]):
                return (
                    f"not replayed on the target: the statement alters {alter.group(1)}, not"
                    f" {ddl.get('table')}, the table the record names"
                )
            worker.conn.execute(query)
        worker.sink.forget_tables()  # its cached columns are the table's old shape
    except ReplicatorError as exc:
        return f"replaying it on the target failed ({exc.message}): run it there by hand"
    return f"replayed on the target (drift.apply_ddl): {query}"


def _record(
    worker: Any,
    lsn: int,
    seq: int,
    partition: int,
    ddl: dict[str, Any],
    via: str,
    replayed: str | None = None,
) -> Judgement:
    conn: psycopg.Connection[Any] = worker.conn
    direction: Direction = worker.direction
    judged = judge(direction, ddl, live_catalog(conn))
    if replayed:
        judged.reasons.insert(0, replayed)
    record(
        conn,
        topic=worker.topic,
        partition=partition,
        commit_lsn=lsn,
        seq=seq,
        side="legacy" if worker.dir_name == "fwd" else "target",
        via=via,
        ddl=ddl,
        judged=judged,
    )
    level = logging.WARNING if judged.verdict == NEEDS_CHANGE else logging.INFO
    log.log(level, "schema change (%s): %s", judged.verdict, "; ".join(judged.reasons))
    return judged


class RelationWatch:
    """The fallback: a table's relation (column names and types) compared with the last one
    apply saw in this process; a difference no DDL record reported is recorded as ``via
    relation``. Called once per relation per envelope (a tuple comparison)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        worker.drift_watch = self
        self.target = TargetWatch(worker)  # the target's own migrations, on heartbeats
        self._seen: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}
        self._reported: dict[str, frozenset[str]] = {}  # column names a DDL record gave

    def reported(self, table: str, columns: dict[str, str]) -> None:
        self._reported[table] = frozenset(columns)

    def see(self, env: Envelope, info: RelationInfo) -> None:
        table = info.qualname
        now = (info.columns, info.type_oids)
        before = self._seen.get(table)
        if before == now:
            return
        self._seen[table] = now
        if before is None or self._reported.pop(table, None) == frozenset(info.columns):
            return  # first sight in this process, or the event trigger already said so
        old = dict(zip(*before, strict=True))
        types = {c: _TYPE_NAMES.get(o, f"oid {o}") for c, o in zip(*now, strict=True)}
        # What changed, as DDL would say it, so the judgement reads it the same way.
        said = [f"ADD COLUMN {c}" for c in info.columns if c not in old]
        said += [f"ALTER COLUMN {c} TYPE {types[c]}" for c, o in zip(*now, strict=True)
                 if c in old and old[c] != o]  # fmt: skip
        said += [f"DROP COLUMN {c}" for c in old if c not in types]
        ddl = {
            "tag": "RELATION CHANGED",
            "table": table,
            "columns": types,
            "query": f"ALTER TABLE {table} " + ", ".join(said) + " (seen in the stream)",
        }
        partition = self.worker._current[0]
        # Below any DDL record's seq: unique per relation at this commit.
        _record(
            self.worker,
            env.commit_lsn,
            -1 - (zlib.crc32(table.encode()) & 0x3FFFFFFF),
            partition,
            ddl,
            "relation",
        )


def ddl_in(value: bytes) -> list[str]:
    """The DDL records in one Kafka message of the changes topic, as ``TAG table`` (the
    cutover's verification refuses DDL in its window; a substring test first: the pause
    decodes nothing twice)."""
    if b'"ddl"' not in value:
        return []
    out = []
    for env in decode_envelopes(value):
        ctl = env.control or {}
        if ctl.get("kind") == "ddl":
            found = ctl.get("ddl")
            ddl: dict[str, Any] = found if isinstance(found, dict) else {}
            out.append(
                f"{ddl.get('tag', 'DDL')} {ddl.get('table') or ddl.get('identity') or ''}".strip()
            )
    return out
