"""Capture against real PostgreSQL and Kafka: what reaches the log, in what order, after faults."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.envelope import Envelope, decode_envelopes
from replicator.capture import Capture
from replicator.config import Settings
from tests.e2e.cli import Background
from tests.support import Env, read_topic, wait_for

TABLES = ["public.account", "public.doc"]


def _schema(env: Env) -> None:
    with env.legacy_conn() as c:
        c.execute("CREATE TABLE account (id int PRIMARY KEY, name text NOT NULL, balance numeric)")
        c.execute("CREATE TABLE doc (id bigint PRIMARY KEY, owner int, big text, note text)")
        c.execute("ALTER TABLE doc ALTER COLUMN big SET STORAGE EXTERNAL")  # TOASTed, uncompressed


def read_log(s: Settings, timeout: float = 2.0) -> list[Envelope]:
    return [
        env
        for v in read_topic(s.kafka.bootstrap_servers, s.topic("fwd", "changes"), timeout)
        for env in decode_envelopes(v)
    ]


@pytest.fixture
def capture(env: Env) -> Iterator[tuple[Settings, Capture, threading.Event]]:
    _schema(env)
    s = env.settings()
    cap = Capture(s, TABLES)
    cap.prepare()
    stop = threading.Event()
    t = threading.Thread(target=cap.run, args=(stop,), daemon=True)
    t.start()
    yield s, cap, stop
    stop.set()
    t.join(30)


def _data(envs: list[Envelope]) -> list[Envelope]:
    # Rows only: a DDL's transaction (replicator.drift) is a control and an empty last slice.
    return [e for e in envs if e.control is None and e.changes]


def test_changes_arrive_in_commit_order_with_values_and_unchanged_toast(
    env: Env, capture: Any
) -> None:
    s, _cap, _stop = capture
    big = os.urandom(6000).hex()  # 12 KB of incompressible text: stored out of line
    with env.legacy_conn() as c:
        c.execute("INSERT INTO account VALUES (1, 'Zoë', 10.5), (2, 'b', NULL)")
        c.execute("INSERT INTO doc VALUES (10, 1, %s, 'n')", (big,))
        c.execute("UPDATE doc SET note = 'edited' WHERE id = 10")  # big stays unchanged
        c.execute("UPDATE account SET id = 3 WHERE id = 2")  # key change: old key travels
        c.execute("DELETE FROM account WHERE id = 1")
        c.execute("TRUNCATE account, doc")
    wait_for(lambda: len(_data(read_log(s, 0.5))) >= 6, 30, what="six transactions in Kafka")
    txns = _data(read_log(s))
    lsns = [e.commit_lsn for e in txns]
    assert lsns == sorted(lsns)
    ins, doc, upd, key, dele, trunc = txns[:6]
    assert [c.new for c in ins.changes] == [
        {"id": "1", "name": "Zoë", "balance": "10.5"},
        {"id": "2", "name": "b", "balance": None},
    ]
    assert doc.changes[0].new == {"id": "10", "owner": "1", "big": big, "note": "n"}
    u = upd.changes[0]
    assert u.op == "update" and u.unchanged == ["big"] and "big" not in (u.new or {})
    assert u.new == {"id": "10", "owner": "1", "note": "edited"}
    assert key.changes[0].old == {"id": "2"} and (key.changes[0].new or {})["id"] == "3"
    assert dele.changes[0].op == "delete" and dele.changes[0].old == {"id": "1"}
    assert sorted(trunc.relations[c.rel].table for c in trunc.changes) == ["account", "doc"]
    assert {c.op for c in trunc.changes} == {"truncate"}
    assert ins.relations[ins.changes[0].rel].key_columns == ("id",)


def test_idle_database_keeps_advancing_the_slot(env: Env, capture: Any) -> None:
    s, cap, _stop = capture

    def confirmed() -> int:
        with env.legacy_conn() as c:
            row = c.execute(
                "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = %s",
                (s.slot("fwd"),),
            ).fetchone()
            return int(row[0]) if row and row[0] is not None else 0

    wait_for(lambda: cap.stats.heartbeats >= 1, 20, what="a heartbeat")
    first = confirmed()
    wait_for(lambda: confirmed() > first, 20, what="the slot's confirmed position to advance")
    beats = [e for e in read_log(s) if e.control and e.control.get("kind") == "heartbeat"]
    assert beats and "emitted_at" in beats[0].control  # type: ignore[operator]


def test_kill_9_mid_load_loses_no_committed_transaction(env: Env, tmp_path: Path) -> None:
    _schema(env)
    s = env.settings()
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:" + ",".join(TABLES),
        "REPLICATOR_CAPTURE__STATUS_INTERVAL_S": "0.2",
    }
    committed: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        with env.legacy_conn() as c:
            i = 0
            while not stop.is_set() and i < 3000:
                i += 1
                c.execute("INSERT INTO account VALUES (%s, 'w', %s)", (i, i))
                committed.append(i)

    proc = Background(["capture"], vars_, tmp_path / "cap1.log")
    wait_for(lambda: _slot_active(env, s), 60, what="capture to stream")
    w = threading.Thread(target=writer)
    w.start()
    for _ in range(3):
        time.sleep(1.0)
        proc.kill9()
        proc = Background(["capture"], vars_, tmp_path / "cap.log")
        wait_for(lambda: _slot_active(env, s), 60, what="capture to stream again")
    stop.set()
    w.join()
    want = set(committed)
    wait_for(lambda: want <= _ids(read_log(s, 1.0)), 60, what="every committed insert in Kafka")
    proc.stop()
    assert "Traceback" not in proc.output()


def _ids(envs: list[Envelope]) -> set[int]:
    return {int((c.new or {})["id"]) for e in envs for c in e.changes if c.op == "insert"}


def _slot_active(env: Env, s: Settings) -> bool:
    with env.legacy_conn() as c:
        row = c.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (s.slot("fwd"),)
        ).fetchone()
        return bool(row and row[0])


def test_large_transaction_is_sliced_with_bounded_memory(env: Env, tmp_path: Path) -> None:
    """A ~200 MB transaction: the capture's peak RSS stays under 300 MB."""
    _schema(env)
    s = env.settings()
    vars_ = {**env.env_vars(), "REPLICATOR_MAPPING": "identity:" + ",".join(TABLES)}
    proc = Background(["capture"], vars_, tmp_path / "big.log")
    wait_for(lambda: _slot_active(env, s), 60, what="capture to stream")
    with env.legacy_conn() as c:
        # 200k rows x ~1 KB = ~200 MB of row data in one transaction.
        c.execute(
            "INSERT INTO doc SELECT g, 1, NULL, repeat(md5(g::text), 32) FROM generate_series(1, 200000) g"
        )
        end = int(c.execute("SELECT pg_current_wal_lsn() - '0/0'").fetchone()[0])  # type: ignore[index]
    # The slot is confirmed past the transaction only once Kafka has acknowledged all of it.
    wait_for(
        lambda: _confirmed(env, s) >= end,
        240,
        interval=1.0,
        what="the slot to pass the transaction",
    )
    peak_kb = _peak_rss_kb(proc.proc.pid)
    proc.stop()
    logged = [e for e in read_log(s, 120) if e.control is None]
    # Only the big transaction's slices (a fresh slot's backfill marker has its own).
    big = max(
        {e.xid for e in logged}, key=lambda x: sum(len(e.changes) for e in logged if e.xid == x)
    )
    envs = [e for e in logged if e.xid == big]
    assert sum(len(e.changes) for e in envs) == 200_000
    assert len(envs) > 10 and [e.seq for e in envs] == list(range(len(envs)))
    assert len({e.commit_lsn for e in envs}) == 1
    assert peak_kb < 300 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"


def _slot_stat(env: Env, s: Settings, column: str) -> int:
    with env.legacy_conn() as c:
        row = c.execute(
            f"SELECT {column} FROM pg_stat_replication_slots WHERE slot_name = %s",
            (s.slot("fwd"),),
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0


def _confirmed(env: Env, s: Settings) -> int:
    with env.legacy_conn() as c:
        row = c.execute(
            "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = %s",
            (s.slot("fwd"),),
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_relation_changed_mid_stream_is_forwarded_and_flagged(env: Env, capture: Any) -> None:
    s, cap, _stop = capture
    with env.legacy_conn() as c:
        c.execute("INSERT INTO account VALUES (1, 'before', 1)")
        c.execute("ALTER TABLE account ADD COLUMN email text")
        c.execute("INSERT INTO account VALUES (2, 'after', 2, 'a@example.com')")
    wait_for(lambda: len(_data(read_log(s, 0.5))) >= 2, 30, what="both inserts in Kafka")
    before, after = _data(read_log(s))[:2]
    assert before.relations[before.changes[0].rel].columns == ("id", "name", "balance")
    assert after.relations[after.changes[0].rel].columns == ("id", "name", "balance", "email")
    assert after.changes[0].new == {
        "id": "2",
        "name": "after",
        "balance": "2",
        "email": "a@example.com",
    }
    wait_for(lambda: cap.stats.relation_changes == 1, 10, what="the change to be flagged")


@pytest.mark.parametrize("streaming", [True, False], ids=["streamed", "spilled"])
def test_a_large_transaction_arrives_whole_at_its_commit_without_its_rolled_back_parts(
    env: Env, streaming: bool
) -> None:
    """Streamed to the capture while it runs (``capture.streaming``), or spilled by the source
    and sent at commit (the default): the log is the same either way."""
    _schema(env)
    with env.legacy_conn() as c:
        # Over 64 kB of changes makes the walsender stream (or spill) the transaction.
        c.execute(f"ALTER DATABASE {env.legacy.dbname} SET logical_decoding_work_mem = '64kB'")
    s = env.settings(capture={"streaming": streaming})
    cap = Capture(s, TABLES)
    cap.prepare()
    stop = threading.Event()
    t = threading.Thread(target=cap.run, args=(stop,), daemon=True)
    t.start()
    try:
        wait_for(lambda: _slot_active(env, s), 60, what="capture to stream")
        with env.legacy_conn() as c:
            c.execute("BEGIN")
            c.execute(
                "INSERT INTO doc SELECT g, 2, NULL, repeat('b', 200) FROM generate_series(10001, 13000) g"
            )
            c.execute("SAVEPOINT s1")
            c.execute(
                "INSERT INTO doc SELECT g, 3, NULL, repeat('c', 200) FROM generate_series(20001, 22000) g"
            )
            c.execute("ROLLBACK TO SAVEPOINT s1")
            c.execute("INSERT INTO account VALUES (1, 'after the savepoint', 1)")
            c.execute("COMMIT")
            c.execute("BEGIN")  # aborted whole: never in the log
            c.execute(
                "INSERT INTO doc SELECT g, 4, NULL, repeat('d', 200) FROM generate_series(30001, 33000) g"
            )
            c.execute("ROLLBACK")
        wait_for(
            lambda: any(
                ch.new is not None and ch.new.get("name") == "after the savepoint"
                for e in _data(read_log(s, 0.5))
                for ch in e.changes
            ),
            60,
            what="the transaction in Kafka",
        )
        kind = "stream_txns" if streaming else "spill_txns"
        wait_for(lambda: _slot_stat(env, s, kind) > 0, 30, what=f"the walsender to use {kind}")
    finally:
        stop.set()
        t.join(30)
    envs = [e for e in _data(read_log(s)) if any(ch.op == "insert" for ch in e.changes)]
    owners: dict[str | None, list[int]] = {}
    for e in envs:
        for ch in e.changes:
            if ch.op == "insert" and ch.new and "owner" in ch.new:
                owners.setdefault(ch.new["owner"], []).append(int(ch.new["id"]))
    assert sorted(o or "" for o in owners) == ["2"]  # 3: rolled back to the savepoint; 4: aborted
    assert owners["2"] == list(range(10001, 13001))
    txn = [e for e in envs if any(ch.new and ch.new.get("owner") == "2" for ch in e.changes)]
    assert len({e.commit_lsn for e in txn}) == 1 and txn[-1].last
    assert [e.seq for e in txn] == list(range(len(txn)))
