"""Apply against real Kafka and PostgreSQL, fed with hand-made envelopes (no capture)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from connectors.envelope import Change, Envelope, RelationInfo, group_envelopes
from connectors.kafka_io import Producer, ensure_topics
from replicator.apply.worker import ApplyWorker
from replicator.dlq.letters import DeadLetter
from replicator.errors import TransientDatabaseError
from tests.support import Env, read_topic, wait_for
from transforms.api import (
    Delete,
    Direction,
    RowChange,
    TableTransform,
    TargetOp,
    TargetTable,
    Upsert,
)

TEXT, INT4 = 25, 23
REL = RelationInfo("public", "item", ("id", "title", "body"), (INT4, TEXT, TEXT), ("id",))


def _items(change: RowChange) -> list[TargetOp]:
    key = {"id": change.key_row["id"]}
    if change.op == "delete":
        return [Delete("public.item", key)]
    assert change.new is not None
    if change.new.get("title") == "poison":
        from replicator.errors import TransformError

        raise TransformError(
            "title may not be 'poison'", table=change.table, key=key, column="title"
        )
    return [Upsert("public.item", key, {k: v for k, v in change.new.items() if k != "id"})]


DIRECTION = Direction(
    tables={
        "public.item": TableTransform(
            "public.item",
            ("id",),
            _items,
            (TargetTable("public.item", ("id",), ("id", "title", "body")),),
        )
    }
)


def _env(lsn: int, *changes: Change, seq: int = 0, last: bool = True) -> bytes:
    return Envelope(
        "t",
        xid=lsn,
        commit_lsn=lsn,
        commit_ts=None,
        seq=seq,
        last=last,
        relations={1: REL},
        changes=list(changes),
    ).encode()


def ins(i: int, title: str, body: str | None = "b") -> Change:
    return Change("insert", 1, new={"id": str(i), "title": title, "body": body})


@pytest.fixture
def setup(env: Env) -> Any:
    s = env.settings()
    with env.target_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL, body text)")
    ensure_topics(env.services.kafka, {s.topic("fwd", "changes"): 1, s.topic("fwd", "dlq"): 1})
    producer = Producer(env.services.kafka)
    stop = threading.Event()
    worker = ApplyWorker(s, DIRECTION)
    t = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    yield s, producer, worker, t, stop
    stop.set()
    t.join(30)
    producer.close()


def rows(env: Env) -> list[tuple[Any, ...]]:
    with env.target_conn() as c:
        return c.execute("SELECT id, title, body FROM item ORDER BY id").fetchall()


def test_grouped_transactions_apply_once_each(env: Env, setup: Any) -> None:
    """A capture with a backlog sends several whole transactions as one message: each is
    applied once, and a replayed one inside a group is skipped on its own."""
    s, producer, worker, thread, _stop = setup
    topic = s.topic("fwd", "changes")
    producer.send(topic, group_envelopes([_env(100, ins(1, "a")), _env(200, ins(2, "b"))]))
    # A replay after a capture restart, grouped differently: 200 again, then new ones.
    producer.send(topic, group_envelopes([_env(200, ins(2, "replayed")), _env(300, ins(3, "c"))]))
    producer.send(topic, _env(400, Change("delete", 1, old={"id": "1"})))
    producer.flush()
    thread.start()
    wait_for(lambda: worker.stats.last_commit_lsn >= 400, what="apply to reach lsn 400")
    assert rows(env) == [(2, "b", "b"), (3, "c", "b")]
    assert worker.stats.skipped_duplicates == 1 and worker.stats.messages == 3


def test_apply_is_idempotent_and_keeps_unchanged_toast(env: Env, setup: Any) -> None:
    s, producer, worker, thread, _stop = setup
    topic = s.topic("fwd", "changes")
    producer.send(topic, _env(100, ins(1, "a"), ins(2, "b")))
    producer.send(topic, _env(100, ins(1, "a"), ins(2, "b")))  # a capture replay: skipped
    # A sliced transaction: applied only as a whole.
    producer.send(topic, _env(200, ins(3, "c"), seq=0, last=False))
    producer.send(topic, _env(200, ins(3, "c"), seq=0, last=False))  # replayed slice
    producer.send(topic, _env(200, ins(4, "d"), seq=1, last=True))
    # Update with an unchanged TOASTed column: body must keep its value.
    producer.send(
        topic, _env(300, Change("update", 1, new={"id": "1", "title": "a2"}, unchanged=["body"]))
    )
    producer.send(topic, _env(400, Change("delete", 1, old={"id": "2"})))
    producer.flush()
    thread.start()
    wait_for(lambda: worker.stats.last_commit_lsn >= 400, what="apply to reach lsn 400")
    assert rows(env) == [(1, "a2", "b"), (3, "c", "b"), (4, "d", "b")]
    assert worker.stats.skipped_duplicates >= 2


def test_poison_row_goes_to_dlq_and_stream_goes_on(env: Env, setup: Any) -> None:
    s, producer, worker, thread, _stop = setup
    topic = s.topic("fwd", "changes")
    producer.send(topic, _env(100, ins(1, "ok")))
    producer.send(topic, _env(200, ins(2, "poison"), ins(3, "fine")))
    # The target refuses this one (NOT NULL): isolated and dead-lettered alone.
    producer.send(
        topic,
        _env(300, Change("insert", 1, new={"id": "4", "title": None, "body": "x"}), ins(5, "five")),
    )
    producer.send(topic, _env(400, ins(6, "six")))
    producer.flush()
    thread.start()
    wait_for(lambda: worker.stats.last_commit_lsn >= 400, what="apply to reach lsn 400")
    assert [r[0] for r in rows(env)] == [1, 3, 5, 6]
    assert worker.stats.dead_letters == 2


def test_truncate_is_applied(env: Env, setup: Any) -> None:
    s, producer, worker, thread, _stop = setup
    topic = s.topic("fwd", "changes")
    producer.send(topic, _env(100, ins(1, "a"), ins(2, "b")))
    producer.send(topic, _env(200, Change("truncate", 1), ins(7, "after")))
    producer.flush()
    thread.start()
    wait_for(lambda: worker.stats.last_commit_lsn >= 200, what="apply to reach lsn 200")
    assert rows(env) == [(7, "after", "b")]


def test_a_session_lost_before_its_commit_is_applied_again_from_the_stored_offsets(
    env: Env, setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection fails after the rows were written, before the commit (a target restart):
    the transaction is lost, so the new session must start from the stored offsets — never
    store the failed session's positions while its new consumer is still joining the group."""
    s, producer, worker, thread, _stop = setup
    topic = s.topic("fwd", "changes")
    producer.send(topic, _env(100, ins(1, "a"), ins(2, "b")))
    producer.send(topic, _env(200, ins(3, "c")))
    producer.flush()
    real = worker._store_positions
    failures: list[int] = []

    def fail_once(held: dict[int, int]) -> None:
        if not failures:
            failures.append(1)
            raise TransientDatabaseError("target: server closed the connection unexpectedly")
        real(held)

    monkeypatch.setattr(worker, "_store_positions", fail_once)
    thread.start()
    wait_for(lambda: len(rows(env)) == 3, 60, what="every row, after the failed commit")
    assert failures and rows(env) == [(1, "a", "b"), (2, "b", "b"), (3, "c", "b")]


def test_a_merge_refused_after_its_flush_returned_is_isolated_and_dead_lettered(
    env: Env,
) -> None:
    """Inside a large source transaction a flush returns while the target still merges (the
    next rows are prepared meanwhile): the refusal surfaces at the next statement, and the
    refused row alone is dead-lettered."""
    s = env.settings(apply={"batch_max_changes": 2})
    with env.target_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL, body text)")
    ensure_topics(env.services.kafka, {s.topic("fwd", "changes"): 1, s.topic("fwd", "dlq"): 1})
    refused = Change("insert", 1, new={"id": "2", "title": None, "body": "x"})  # NOT NULL
    slices = [
        _env(500, ins(1, "one"), refused, seq=0, last=False),
        _env(500, ins(3, "three"), ins(4, "four"), seq=1, last=False),
        _env(500, ins(5, "five"), seq=2, last=True),
    ]
    producer = Producer(env.services.kafka)
    for value in [*slices, _env(600, ins(6, "six"))]:
        producer.send(s.topic("fwd", "changes"), value)
    producer.flush()
    producer.close()
    stop = threading.Event()
    worker = ApplyWorker(s, DIRECTION)
    t = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    t.start()
    try:
        wait_for(lambda: worker.stats.last_commit_lsn >= 600, what="apply to reach lsn 600")
    finally:
        stop.set()
        t.join(30)
    assert [r[0] for r in rows(env)] == [1, 3, 4, 5, 6]
    assert worker.stats.dead_letters == 1


def test_a_deferred_merge_is_waited_for_and_its_error_raised_translated(env: Env) -> None:
    from connectors.pgsink import Batch, Sink
    from replicator.errors import TargetRejected

    with env.target_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL, body text)")
    with env.target_conn() as conn:
        conn.autocommit = False  # as an apply session: the staging tables live per transaction
        sink = Sink(conn)
        ok = Batch()
        ok.add(Upsert("public.item", {"id": 1}, {"title": "a", "body": None}))
        sink.flush(ok, defer=True)
        sink.settle()
        conn.commit()
        bad = Batch()
        bad.add(Upsert("public.item", {"id": 2}, {"title": None, "body": None}))
        sink.flush(bad, defer=True)  # sent; the refusal is not waited for here
        with pytest.raises(TargetRejected):
            sink.settle()
        conn.rollback()
    assert [r[0] for r in rows(env)] == [1]


def test_a_row_refused_inside_a_group_is_dead_lettered_under_its_own_transaction(
    env: Env, setup: Any
) -> None:
    s, producer, worker, thread, _stop = setup
    refused = Change("insert", 1, new={"id": "2", "title": None, "body": "x"})  # NOT NULL
    producer.send(
        s.topic("fwd", "changes"),
        group_envelopes([_env(100, ins(1, "one"), refused), _env(200, ins(3, "three"))]),
    )
    producer.flush()
    thread.start()
    wait_for(lambda: worker.stats.last_commit_lsn >= 200, what="apply to reach lsn 200")
    wait_for(lambda: worker.stats.dead_letters == 1, what="the dead letter")
    assert [r[0] for r in rows(env)] == [1, 3]
    (letter,) = [
        DeadLetter.decode(v) for v in read_topic(env.services.kafka, s.topic("fwd", "dlq"), 10)
    ]
    # `dlq replay` finds the row in the message by this LSN.
    assert (letter.error, letter.key, letter.commit_lsn) == ("TargetRejected", {"id": "2"}, 100)
