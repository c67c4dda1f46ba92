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

from replicator.errors import DataError

_HINT = (
    "a control message the replicator did not emit (any role that may connect to the source"
    " can emit one with its prefix): find who sent it (the letter's position in the source's"
    " WAL), then `replicator dlq purge` it"
)


def control_problem(ctl: dict[str, Any], on_snapshot_topic: bool) -> DataError | None:
    """Why apply must not act on the control ``ctl`` read from the changes topic (or, with
    ``on_snapshot_topic``, the snapshot topic), as a dead letter's error; None: act on it."""
    why = _why(ctl, on_snapshot_topic)
    return None if why is None else DataError(why, hint=_HINT)


def _why(ctl: dict[str, Any], on_snapshot_topic: bool) -> str | None:
    kind = ctl.get("kind")
    if kind == "unreadable":
        return f"a control message apply cannot read ({ctl.get('why', 'not a JSON object')})"
    if kind == "heartbeat":
        return _heartbeat(ctl.get("emitted_at"))
    if kind in ("backfill_started", "snapshot_done") and not isinstance(
        ctl.get("backfill_id"), str
    ):
        return f"a {kind} marker without a backfill id"
    if kind == "snapshot_done" and not on_snapshot_topic:
        return "a snapshot_done marker on the changes topic (the backfill sends it to Kafka alone)"
    if kind == "marker" and not (
        isinstance(ctl.get("id"), str) and isinstance(ctl.get("marker"), str)
    ):
        return "a marker without an id and a kind"
    if kind == "ddl":
        ddl = ctl.get("ddl")
        if isinstance(ddl, dict) and not (
            isinstance(ddl.get("tag", ""), str)
            and isinstance(ddl.get("table") or "", str)
            and isinstance(ddl.get("query") or "", str)
            and isinstance(ddl.get("columns") or {}, dict)
        ):
            return "a DDL record whose tag, table, query or columns are of the wrong type"
    return None


def _heartbeat(emitted_at: Any) -> str | None:
    try:
        at = dt.datetime.fromisoformat(str(emitted_at))
    except ValueError:
        return f"a heartbeat whose time is not a time ({str(emitted_at)[:40]!r})"
    if at.tzinfo is None:
        return f"a heartbeat whose time has no time zone ({emitted_at!r})"
    return None  # one dated ahead is stored as the target's now (replicator.state)
