"""What apply does with a DDL record from the log: judge it against the target as it is now,
store it in the batch's transaction, and say so in the log (never silent)."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from connectors.envelope import Envelope
from replicator.check_mapping import live_catalog
from replicator.drift.judge import NEEDS_CHANGE, Judgement, judge
from replicator.drift.store import record
from transforms.api import Direction

log = logging.getLogger("replicator.drift")


def record_ddl(worker: Any, env: Envelope, partition: int, control: dict[str, Any]) -> Judgement:
    """``worker`` is the apply worker (replicator.apply.worker): its target session, mapping
    direction and topic; the record joins its open transaction."""
    conn: psycopg.Connection[Any] = worker.conn
    direction: Direction = worker.direction
    ddl = control.get("ddl")
    if not isinstance(ddl, dict):
        ddl = {"tag": "unreadable", "query": str(ddl)}
    judged = judge(direction, ddl, live_catalog(conn))
    record(
        conn,
        topic=worker.topic,
        partition=partition,
        commit_lsn=env.commit_lsn,
        seq=env.seq,
        side="legacy" if worker.dir_name == "fwd" else "target",
        via="event_trigger",
        ddl=ddl,
        judged=judged,
    )
    level = logging.WARNING if judged.verdict == NEEDS_CHANGE else logging.INFO
    log.log(level, "schema change (%s): %s", judged.verdict, "; ".join(judged.reasons))
    return judged
