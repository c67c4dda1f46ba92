"""Apply does not hold a change back for nothing: a transaction commits on the target as soon
as the consumer has nothing more at hand, whatever ``batch_max_wait_ms`` says; and the stage
timings (``metrics.stage_timings_dir``) record each transaction it commits."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import psycopg

from connectors.envelope import Change, Envelope
from connectors.kafka_io import Producer, ensure_topics
from replicator.apply import ApplyWorker
from replicator.state import ensure_schema, send_offset
from tests.integration.test_apply import DIRECTION, REL, ins, rows
from tests.support import Env, wait_for


def _txn(lsn: int, *changes: Change, commit_ts: str | None = None) -> bytes:
    return Envelope(
        "t",
        xid=lsn,
        commit_lsn=lsn,
        commit_ts=commit_ts,
        seq=0,
        last=True,
        relations={1: REL},
        changes=list(changes),
    ).encode()


def _start(env: Env, **overrides: Any) -> tuple[Any, Producer, ApplyWorker, threading.Event]:
    s = env.settings(**overrides)
    with env.target_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL, body text)")
    ensure_topics(env.services.kafka, {s.topic("fwd", "changes"): 1, s.topic("fwd", "dlq"): 1})
    stop = threading.Event()
    worker = ApplyWorker(s, DIRECTION)
    threading.Thread(target=worker.run, args=(stop,), daemon=True).start()
    return s, Producer(env.services.kafka), worker, stop


def test_a_lone_transaction_commits_without_waiting_for_the_batch_deadline(env: Env) -> None:
    """With a batch deadline of ten minutes, each of two transactions written apart is on the
    target within the test's patience: the worker committed when the stream paused, not at the
    deadline (which it did before, while the poll waited for more)."""
    s, producer, worker, stop = _start(env, apply={"batch_max_wait_ms": 600_000})
    topic = s.topic("fwd", "changes")
    try:
        producer.send(topic, _txn(100, ins(1, "a")))
        producer.flush()
        wait_for(lambda: rows(env) == [(1, "a", "b")], 60, what="the first transaction")
        producer.send(topic, _txn(200, ins(2, "b")))
        producer.flush()
        wait_for(lambda: len(rows(env)) == 2, 60, what="the second transaction")
        # Two commits (the counter moves just after the second one is visible).
        wait_for(lambda: worker.stats.commits >= 2, 60, what="the second commit's bookkeeping")
    finally:
        stop.set()
        producer.close()


def test_stage_timings_record_each_committed_transaction(env: Env, tmp_path: Path) -> None:
    timings = tmp_path / "timings"
    s, producer, worker, stop = _start(env, metrics={"stage_timings_dir": str(timings)})
    topic = s.topic("fwd", "changes")
    committed_at = dt.datetime.now(dt.UTC)
    try:
        producer.send(topic, _txn(100, ins(1, "a"), commit_ts=committed_at.isoformat()))
        producer.flush()
        wait_for(lambda: worker.stats.last_commit_lsn >= 100, 60, what="the transaction")
    finally:
        stop.set()
        producer.close()
    lines = [ln for f in timings.glob("apply-*.csv") for ln in f.read_text().splitlines()]
    assert len(lines) == 1
    partition, offset, ts, read_at, done_at = lines[0].split(",")
    assert (partition, offset, ts) == ("0", "0", committed_at.isoformat())
    assert committed_at.timestamp() <= float(read_at) <= float(done_at)


def test_a_position_fence_sent_in_a_pipeline_is_read_after_the_sync(env: Env) -> None:
    """Apply sends its positions behind the merges, in pipeline mode: a position another
    worker moved meanwhile still shows (rowcount 0) once the pipeline is synced."""
    with psycopg.connect(env.target.conninfo()) as conn:
        ensure_schema(conn)
        conn.commit()
        with conn.pipeline():
            first = send_offset(conn, "t", 0, 10, 1, 0)
            stale = send_offset(conn, "t", 0, 20, 2, 0)  # expects 0: another worker stored 10
        assert (first.rowcount, stale.rowcount) == (1, 0)
        conn.rollback()
