"""Capture with ``capture.streaming = on``: what a streamed transaction carries besides its rows
(the replication origin that marks our own apply's writes, control messages in their place)."""

from __future__ import annotations

import json
import threading

from replicator.capture import Capture
from tests.integration.test_capture import (
    TABLES,
    _data,
    _schema,
    _slot_active,
    _slot_stat,
    read_log,
)
from tests.support import Env, wait_for

BIG_INSERT = "INSERT INTO doc SELECT g, %s::int, NULL, repeat('b', 200) FROM generate_series(%s::int, %s::int) g"


def test_a_streamed_transaction_keeps_its_origin_and_its_markers(env: Env) -> None:
    _schema(env)
    with env.legacy_conn() as c:
        # Over 64 kB of changes makes the walsender stream the transaction before its commit.
        c.execute(f"ALTER DATABASE {env.legacy.dbname} SET logical_decoding_work_mem = '64kB'")
    s = env.settings(capture={"streaming": True})
    cap = Capture(s, TABLES)
    cap.prepare()
    stop = threading.Event()
    t = threading.Thread(target=cap.run, args=(stop,), daemon=True)
    t.start()
    marker = {"kind": "marker", "marker": "test", "id": "in-the-middle"}
    try:
        wait_for(lambda: _slot_active(env, s), 60, what="capture to stream")
        with env.legacy_conn() as c:
            # Written as the apply writes: under a replication origin of this pipeline.
            c.execute("SELECT pg_replication_origin_create(%s)", (f"replicator_{s.name}_test",))
            c.execute(
                "SELECT pg_replication_origin_session_setup(%s)", (f"replicator_{s.name}_test",)
            )
            c.execute("BEGIN")
            c.execute(BIG_INSERT, (5, 1, 3000))
            c.execute("COMMIT")
            c.execute("SELECT pg_replication_origin_session_reset()")
            c.execute("BEGIN")
            c.execute(BIG_INSERT, (2, 10001, 13000))
            c.execute(
                "SELECT pg_logical_emit_message(true, 'replicator', %s)", (json.dumps(marker),)
            )
            c.execute(BIG_INSERT, (3, 20001, 23000))
            c.execute("COMMIT")
        wait_for(
            lambda: any(
                ch.new and ch.new.get("id") == "23000"
                for e in _data(read_log(s, 0.5))
                for ch in e.changes
            ),
            60,
            what="the transaction in Kafka",
        )
        assert _slot_stat(env, s, "stream_txns") >= 2  # both were streamed
    finally:
        stop.set()
        t.join(30)
    log = [e for e in read_log(s) if not (e.control and e.control.get("kind") == "heartbeat")]
    owners = {ch.new.get("owner") for e in log for ch in e.changes if ch.new}
    assert owners == {"2", "3"}  # the origin's transaction is not echoed
    assert any(e.control == {"kind": "skip"} for e in log)
    txn = [e for e in log if e.xid and e.commit_lsn == log[-1].commit_lsn]
    at = next(i for i, e in enumerate(txn) if e.control == marker)
    assert {ch.new["owner"] for e in txn[:at] for ch in e.changes if ch.new} == {"2"}
    assert {ch.new["owner"] for e in txn[at + 1 :] for ch in e.changes if ch.new} == {"3"}
    assert [e.seq for e in txn] == list(range(len(txn))) and txn[-1].last
