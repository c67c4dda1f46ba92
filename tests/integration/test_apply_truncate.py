"""A TRUNCATE in the log, applied to target tables that one source table writes alone, and
dead-lettered for those that several write (docs/dlq.md)."""

from __future__ import annotations

import threading

from connectors.envelope import Change, Envelope, RelationInfo
from connectors.kafka_io import Producer, ensure_topics
from replicator.apply.worker import ApplyWorker
from replicator.dlq.letters import DeadLetter
from tests.support import Env, read_topic, wait_for
from transforms.api import (
    Delete,
    Direction,
    RowChange,
    TableTransform,
    TargetOp,
    TargetTable,
    TransformFn,
    Upsert,
)

TEXT, INT4 = 25, 23
RELS = {
    n: RelationInfo("public", name, ("id", "title"), (INT4, TEXT), ("id",))
    for n, name in enumerate(("item_a", "item_b", "note"), 1)
}
ITEM = TargetTable("public.item", ("id",), ("id", "title"))


def _into(*tables: str, offset: int = 0) -> TransformFn:
    """Each row into ``tables`` under the key ``id + offset``."""

    def transform(change: RowChange) -> list[TargetOp]:
        key = {"id": int(change.key_row["id"]) + offset}
        if change.op == "delete":
            return [Delete(t, key) for t in tables]
        assert change.new is not None
        return [Upsert(t, key, {"title": change.new["title"]}) for t in tables]

    return transform


def _table(name: str, *targets: TargetTable, offset: int = 0) -> TableTransform:
    return TableTransform(name, ("id",), _into(*(t.name for t in targets), offset=offset), targets)


# item_a and item_b both write public.item (b's rows from 1000 on); item_a alone writes
# public.a_copy, note alone public.note.
DIRECTION = Direction(
    tables={
        "public.item_a": _table(
            "public.item_a", ITEM, TargetTable("public.a_copy", ("id",), ("id", "title"))
        ),
        "public.item_b": _table("public.item_b", ITEM, offset=1000),
        "public.note": _table("public.note", TargetTable("public.note", ("id",), ("id", "title"))),
    }
)


def _env(lsn: int, *changes: Change) -> bytes:
    return Envelope(
        "t", xid=lsn, commit_lsn=lsn, commit_ts=None, relations=RELS, changes=list(changes)
    ).encode()


def test_a_truncate_of_a_source_sharing_its_target_is_dead_lettered(env: Env) -> None:
    s = env.settings()
    with env.target_conn() as c:
        for t in ("item", "a_copy", "note"):
            c.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, title text)")
    changes, dlq = s.topic("fwd", "changes"), s.topic("fwd", "dlq")
    ensure_topics(env.services.kafka, {changes: 1, dlq: 1})
    producer = Producer(env.services.kafka)
    producer.send(
        changes,
        _env(
            100,
            *(Change("insert", rel, new={"id": "1", "title": f"from {rel}"}) for rel in RELS),
        ),
    )
    producer.send(changes, _env(200, Change("truncate", 1), Change("truncate", 3)))
    producer.flush()
    producer.close()
    stop = threading.Event()
    worker = ApplyWorker(s, DIRECTION)
    t = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    t.start()
    try:
        wait_for(lambda: worker.stats.last_commit_lsn >= 200, what="apply to reach lsn 200")
    finally:
        stop.set()
        t.join(30)
    with env.target_conn() as c:
        counts = {
            t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in ("item", "a_copy", "note")
        }
    # The tables one source writes alone are truncated with it; the shared one keeps item_b's
    # row and item_a's, which the letter is about.
    assert counts == {"item": 2, "a_copy": 0, "note": 0}
    (letter,) = (DeadLetter.decode(v) for v in read_topic(env.services.kafka, dlq, 10))
    assert (letter.table, letter.key, letter.error) == ("public.item_a", None, "TransformError")
    assert letter.reason.startswith(
        "TRUNCATE of public.item_a not applied to public.item (public.a_copy truncated):"
        " public.item_b writes there too"
    )
    assert letter.commit_lsn == 200 and letter.change == {"op": "truncate", "rel": 1}
