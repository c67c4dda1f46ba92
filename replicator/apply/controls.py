"""Control messages checked before apply acts on them.

Controls (heartbeats, markers, backfill phases, DDL records) travel in the source's WAL as
logical messages with the replicator's prefix, and any role that may connect to the source can
emit one (``pg_logical_emit_message`` is PUBLIC's on PostgreSQL 14 and later). What a forged
one can do is bounded elsewhere (markers match random ids the switch chose; a backfill's marker
a pending row's id); here, a control whose fields do not have the types its kind needs, or that
could only be forged, goes to the dead-letter queue with the reason. Acted on, it would raise
inside apply's transaction, and apply would stop at the same offset on every restart.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from connectors.assembler import CONTROL_MAX_DEPTH
from connectors.envelope import Envelope
from replicator.apply.rows import repair_delete
from replicator.drift.recorder import record_ddl
from replicator.errors import DataError
from replicator.state import store_heartbeat, store_marker

_HINT = (
    "a control message the replicator did not emit (any role that may connect to the source"
    " can emit one with its prefix): find who sent it (the letter's position in the source's"
    " WAL), then `replicator dlq purge` it"
)


def act_on_control(worker: Any, env: Envelope, partition: int, batch: Any) -> None:
    """What apply does with a control read from its topic (``worker``: the apply worker).
    A control it must not act on, or one the target refuses (a value its checks did not
    foresee), is a dead letter; what else fails (a connection lost) is raised as always."""
    ctl = env.control or {}
    kind, offset = ctl.get("kind"), worker._current[1]
    if (refused := control_problem(ctl, worker.topic == worker.snapshot_topic)) is not None:
        worker._dead(refused, partition, offset, env.commit_lsn, ctl)
    elif kind == "ddl":  # a schema change on the source, judged through the mapping
        record_ddl(worker, env, partition, ctl, batch)
    elif kind == "repair_delete" and worker.topic == worker.snapshot_topic:
        try:  # a target row validation found without a source (validate/repair.py)
            batch.add(repair_delete(worker.direction, ctl))
        except DataError as exc:
            worker._dead(exc, partition, offset, None, ctl)
    else:
        # A savepoint, so that a refusal leaves the batch whole. Not conn.transaction(): on a
        # session with no transaction open yet (the batch's rows not flushed) that block is a
        # transaction of its own, committed at once — a fence marker committed before the
        # rows ahead of it, and the cutover's drain then saw it too early (caught by verify).
        conn = worker.conn
        conn.execute("SAVEPOINT replicator_control")
        try:
            _act(worker, env, partition, ctl)
        except (psycopg.DataError, psycopg.IntegrityError, TypeError, ValueError) as exc:
            conn.execute("ROLLBACK TO SAVEPOINT replicator_control")
            why = f"a {kind} control the target refused ({str(exc).splitlines()[0]})"
            worker._dead(DataError(why, hint=_HINT), partition, offset, env.commit_lsn, ctl)
        else:
            conn.execute("RELEASE SAVEPOINT replicator_control")


def _act(worker: Any, env: Envelope, partition: int, ctl: dict[str, Any]) -> None:
    kind = ctl.get("kind")
    if kind == "heartbeat":
        at = _time(ctl.get("emitted_at"))
        store_heartbeat(worker.conn, worker.topic, partition, at, env.commit_lsn)
        worker._drift.target.tick(env.commit_lsn, partition)
    elif kind == "backfill_started" and worker.topic == worker.changes_topic:
        worker._reach_backfill_marker(ctl, partition)
    elif kind == "snapshot_done" and ctl.get("backfill_id") == worker._backfill_id:
        worker.conn.execute(
            "UPDATE replicator.backfill SET status = 'applied', finished_at = clock_timestamp()"
            " WHERE id = %s",
            (worker._backfill_id,),
        )
        worker._switch = True
    elif kind == "marker":
        worker._marker_waiting = True
        store_marker(worker.conn, worker.topic, partition, ctl, env.commit_lsn)


def control_problem(ctl: dict[str, Any], on_snapshot_topic: bool) -> DataError | None:
    """Why apply must not act on the control ``ctl`` read from the changes topic (or, with
    ``on_snapshot_topic``, the snapshot topic), as a dead letter's error; None: act on it."""
    why = _why(ctl, on_snapshot_topic)
    return None if why is None else DataError(why, hint=_HINT)


def _why(ctl: dict[str, Any], on_snapshot_topic: bool) -> str | None:
    kind = ctl.get("kind")
    if _has_nul(ctl):
        return "a control message with a NUL character (no text column takes one)"
    if kind == "unreadable":
        return f"a control message apply cannot read ({ctl.get('why', 'not a JSON object')})"
    if kind == "heartbeat" and _time(at := ctl.get("emitted_at")) is None:  # ahead: state.py
        return f"a heartbeat whose time is not a time with its zone ({str(at)[:40]!r})"
    if kind in ("backfill_started", "snapshot_done") and not isinstance(
        ctl.get("backfill_id"), str
    ):
        return f"a {kind} marker without a backfill id"
    if kind == "snapshot_done" and not on_snapshot_topic:
        return "a snapshot_done marker on the changes topic (the backfill sends it to Kafka alone)"
    if kind == "marker":
        if not (isinstance(ctl.get("id"), str) and isinstance(ctl.get("marker"), str)):
            return "a marker without an id and a kind"
        if ctl.get("emitted_at") is not None and _time(ctl["emitted_at"]) is None:
            return f"a marker whose time is not a time ({str(ctl['emitted_at'])[:40]!r})"
    if kind == "ddl" and isinstance(ctl.get("ddl"), dict) and not _ddl_ok(ctl["ddl"]):
        return "a DDL record whose fields are not of the types the event trigger writes"
    return None


def _ddl_ok(ddl: dict[str, Any]) -> bool:
    """The fields replicator.drift.trigger writes, of its types (judge.py reads them)."""
    columns = ddl.get("columns")
    table = ddl.get("table")
    return (
        isinstance(ddl.get("tag"), str)
        and (table is None or (isinstance(table, str) and "." in table))
        and all(ddl.get(f) is None or isinstance(ddl[f], str) for f in _DDL_TEXT)
        and (ddl.get("dropped") is None or isinstance(ddl["dropped"], bool))
        and (
            columns is None
            or (isinstance(columns, dict) and all(isinstance(t, str) for t in columns.values()))
        )
    )


_DDL_TEXT = ("query", "identity", "object_type", "at")


def _has_nul(value: Any, depth: int = 0) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if depth > CONTROL_MAX_DEPTH:
        return False  # the capture forwards nothing nested this deep
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    return isinstance(value, list) and any(_has_nul(v, depth + 1) for v in value)


def _time(value: Any) -> dt.datetime | None:
    """A control's time as a UTC datetime (None: not an ISO time with its zone)."""
    try:
        at = dt.datetime.fromisoformat(str(value))
        return None if at.tzinfo is None else at.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return None
