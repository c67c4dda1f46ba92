"""`status`' end-to-end lag is the lag of the data (issue #29): under a steady writer it follows
the lag measured from the rows themselves, without the heartbeat's sawtooth; with the capture
stopped while the writer goes on, it grows."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from connectors import pg
from connectors.kafka_io import OffsetReader
from replicator.runtime.pipeline import Pipeline
from replicator.status.lag import end_to_end_lag
from replicator.status.overview import collect
from tests.support import Env, wait_for
from transforms.loader import load_mapping

TABLE = "CREATE TABLE item (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL)"
# How far status may be from the rows' own lag (the two are sampled a few ms apart).
BOUND_S = 0.5


def _writer(env: Env, stop: threading.Event, written: list[int]) -> None:
    """~200 single-row transactions a second, each stamped with the source's clock."""
    with env.legacy_conn() as c:
        while not stop.is_set():
            c.execute("INSERT INTO item (created_at) VALUES (now())")
            written[0] += 1
            time.sleep(0.005)


def _rows_lag(legacy: psycopg.Connection[Any], target: psycopg.Connection[Any]) -> float:
    """now - the source time of the newest row on the target, both on the source's clock."""
    row = target.execute("SELECT max(created_at) FROM item").fetchone()
    now = legacy.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None and row[0] is not None and now is not None
    return float((now[0] - row[0]).total_seconds())


class Sampler:
    """status as the web page collects it (kept sessions, one Kafka consumer)."""

    def __init__(self, env: Env, s: Any) -> None:
        self.s = s
        self.sessions = pg.Sessions()
        self.offsets = OffsetReader()
        self.legacy = env.legacy_conn()
        self.target = env.target_conn()

    def pair(self) -> tuple[float, float]:
        """(status' lag, the rows' lag): the rows' lag is read just before and just after
        status (which reads its parts in between), and the nearer of the two is compared."""
        before = _rows_lag(self.legacy, self.target)
        st = collect(self.s, end_offsets=self.offsets, sessions=self.sessions)
        after = _rows_lag(self.legacy, self.target)
        assert st.target is not None and st.target.end_to_end_lag_s is not None, st
        lag = st.target.end_to_end_lag_s
        return lag, min(before, after, key=lambda rows: abs(rows - lag))

    def close(self) -> None:
        self.sessions.close()
        self.offsets.close()
        self.legacy.close()
        self.target.close()


@pytest.fixture
def running(env: Env) -> Iterator[tuple[Env, Any, dict[str, Pipeline], Sampler, list[int]]]:
    for conn in (env.legacy_conn(), env.target_conn()):
        with conn:
            conn.execute(TABLE)
    # The default heartbeat interval: the old figure climbed 0 -> 5 s between heartbeats.
    s = env.settings(capture={"heartbeat_interval_s": 5.0}, mapping="identity:public.item")
    mapping = load_mapping("identity:public.item")
    stages = {"capture": Pipeline(s, mapping), "apply": Pipeline(s, mapping)}
    stages["capture"].start(run_apply=False, backfill=False)
    stages["apply"].start(run_capture=False)
    stop, written = threading.Event(), [0]
    writer = threading.Thread(target=_writer, args=(env, stop, written), daemon=True)
    sampler = Sampler(env, s)
    try:
        writer.start()
        with env.target_conn() as c:

            def arrived() -> bool:
                for p in stages.values():
                    if p.error is not None:
                        raise p.error
                row = c.execute("SELECT count(*) FROM item").fetchone()
                return row is not None and row[0] > 100

            wait_for(arrived, 120, what="rows on the target")
        yield env, s, stages, sampler, written
    finally:
        stop.set()
        writer.join(10)
        sampler.close()
        for p in stages.values():
            p.shutdown()


def test_status_lag_follows_the_rows_under_a_steady_writer(running: Any) -> None:
    _, s, _, sampler, written = running
    before = written[0]
    pairs = []
    started = time.monotonic()
    while time.monotonic() - started < 7.0:  # over a heartbeat interval
        pairs.append(sampler.pair())
        time.sleep(0.1)
    rate = (written[0] - before) / (time.monotonic() - started)
    assert rate > 50, f"the writer managed {rate:.0f} rows/s"
    off = [(round(a, 3), round(b, 3)) for a, b in pairs if abs(a - b) >= BOUND_S]
    assert not off, f"status vs rows lag apart by {BOUND_S} s or more: {off} of {len(pairs)}"
    # The public function the cutover's preflight may report agrees too.
    lag = end_to_end_lag(s, "fwd", s.source, s.target, lambda b, t: sampler.offsets(b, t))
    assert lag is not None and abs(lag - _rows_lag(sampler.legacy, sampler.target)) < BOUND_S


def test_status_lag_grows_while_the_capture_is_stopped(running: Any) -> None:
    _, s, stages, sampler, _ = running
    status, rows = sampler.pair()
    assert status < 2.0 and abs(status - rows) < BOUND_S
    stages["capture"].shutdown()  # the slot has no reader; the writer goes on
    time.sleep(3.0)
    first = sampler.pair()
    time.sleep(1.0)
    second = sampler.pair()
    for status, rows in (first, second):
        assert abs(status - rows) < BOUND_S, (first, second)
    assert first[0] > 2.5 and second[0] > first[0] + 0.5, (first, second)
    st = collect(s, end_offsets=sampler.offsets, sessions=sampler.sessions)
    assert st.target is not None and st.target.changes_waiting
    assert st.source is not None and (st.source.unread_bytes or 0) > 0


def test_apply_stores_the_commit_time_with_the_offsets(env: Env) -> None:
    """The newest applied transaction's source commit time is stored beside the partition's
    offset (the same statement); a later batch of heartbeats only keeps it."""
    import datetime as dt

    from connectors.envelope import Envelope
    from tests.integration.test_apply import ins
    from tests.integration.test_apply_latency import _start, _txn

    s, producer, _, stop = _start(env)
    topic = s.topic("fwd", "changes")
    committed = dt.datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    beat = Envelope(
        "t", 0, 300, None, control={"kind": "heartbeat", "emitted_at": committed.isoformat()}
    )

    def stored() -> tuple[int, Any]:
        with env.target_conn() as c:
            ready = c.execute("SELECT to_regclass('replicator.offsets')").fetchone()
            if ready is None or ready[0] is None:
                return 0, None  # the worker has not made its state schema yet
            row = c.execute(
                "SELECT next_offset, last_commit_ts FROM replicator.offsets WHERE topic = %s",
                (topic,),
            ).fetchone()
        return (int(row[0]), row[1]) if row else (0, None)

    try:
        producer.send(topic, _txn(100, ins(1, "a"), commit_ts=committed.isoformat()))
        producer.send(
            topic, _txn(200, ins(2, "b"), commit_ts=None)
        )  # no time: the last one known stays
        producer.flush()
        wait_for(lambda: stored()[0] == 2, 60, what="the transactions")
        assert stored()[1] == committed
        producer.send(topic, beat.encode())
        producer.flush()
        wait_for(lambda: stored()[0] == 3, 60, what="the heartbeat")
        assert stored()[1] == committed
    finally:
        stop.set()
        producer.close()


def test_an_older_state_schema_is_read_and_then_given_the_column(env: Env) -> None:
    """status reads a state schema an older apply made (no commit time yet), and the next
    apply's ensure_schema adds the column without touching the stored positions."""
    from replicator.state import ensure_schema
    from replicator.status.lag import read_applied

    with env.target_conn() as c:
        c.execute(
            "CREATE SCHEMA replicator; CREATE TABLE replicator.offsets (topic text NOT NULL,"
            " partition integer NOT NULL, next_offset bigint NOT NULL,"
            " last_commit_lsn bigint NOT NULL DEFAULT 0,"
            " updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (topic, partition));"
            " CREATE TABLE replicator.heartbeats (topic text NOT NULL, partition integer NOT NULL,"
            " emitted_at timestamptz NOT NULL, applied_at timestamptz NOT NULL,"
            " commit_lsn bigint NOT NULL, PRIMARY KEY (topic, partition));"
            " INSERT INTO replicator.offsets VALUES ('t', 0, 7, 5, now());"
            " INSERT INTO replicator.heartbeats VALUES ('t', 0, now() - interval '2 s', now(), 4)"
        )
        old = read_applied(c, "t").parts
        assert old[0].next_offset == 7 and old[0].commit_ts is None
        assert old[0].heartbeat_at is not None and old[0].heartbeat_latency_s == 2.0
        ensure_schema(c)
        c.execute("UPDATE replicator.offsets SET last_commit_ts = now()")
        new = read_applied(c, "t").parts
        assert new[0].next_offset == 7 and new[0].commit_ts is not None
