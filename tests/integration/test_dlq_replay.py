"""``dlq replay`` called directly on hand-made letters (fast; the CLI's path is in
tests/integration/test_dlq.py): what a replay writes for a key-changing update and refuses for
a TRUNCATE."""

from __future__ import annotations

import datetime as dt
from typing import Any

from connectors.envelope import Change, Envelope, RelationInfo
from connectors.kafka_io import Producer, ensure_topics
from replicator.config import Settings
from replicator.dlq.letters import DeadLetter, Letter
from replicator.dlq.replay import replay
from tests.support import Env
from transforms.loader import load_mapping

TEXT, INT4 = 25, 23
REL = RelationInfo("public", "item", ("id", "title"), (INT4, TEXT), ("id",))
ITEM = "CREATE TABLE item (id int PRIMARY KEY, title text)"


def _letter(s: Settings, offset: int, lsn: int, change: Change, **fields: Any) -> Letter:
    return Letter(
        0,
        offset,
        DeadLetter(
            **{
                "reason": "refused",
                "error": "TargetRejected",
                "table": "public.item",
                "key": None,
                "column": None,
                **fields,
            },
            commit_lsn=lsn,
            source_topic=s.topic("fwd", "changes"),
            source_partition=0,
            source_offset=offset,
            change=change.to_wire(),
            at=dt.datetime.now(dt.UTC).isoformat(),
        ),
    )


def _log(s: Settings, env: Env, *changes: tuple[int, Change]) -> None:
    """One message per change, at offsets 0, 1, …"""
    topic = s.topic("fwd", "changes")
    ensure_topics(env.services.kafka, {topic: 1})
    producer = Producer(env.services.kafka)
    for lsn, ch in changes:
        producer.send(
            topic,
            Envelope(
                "t", xid=lsn, commit_lsn=lsn, commit_ts=None, relations={1: REL}, changes=[ch]
            ).encode(),
        )
    producer.flush()
    producer.close()


def _rows(env: Env) -> list[tuple[Any, ...]]:
    with env.target_conn() as c:
        return c.execute("SELECT id, title FROM item ORDER BY id").fetchall()


def test_replaying_a_key_change_removes_the_old_keys_row(env: Env) -> None:
    s = env.settings()
    with env.legacy_conn() as c:
        c.execute(ITEM)
        # 1 moved to 2 (its letter's update refused); 3 moved to 4, then 3 was written again.
        c.execute("INSERT INTO item VALUES (2, 'moved'), (4, 'moved too'), (3, 'back again')")
    with env.target_conn() as c:
        c.execute(ITEM)
        c.execute("INSERT INTO item VALUES (1, 'before the move'), (3, 'before the move')")
    moves = [
        (100, Change("update", 1, new={"id": "2", "title": "moved"}, old={"id": "1"})),
        (200, Change("update", 1, new={"id": "4", "title": "moved too"}, old={"id": "3"})),
    ]
    _log(s, env, *moves)
    letters = [
        # The target refused the new row (named by its key), or a transform the change.
        _letter(s, 0, 100, moves[0][1], key={"id": "2"}),
        _letter(s, 1, 200, moves[1][1], error="TransformError", key={"id": "3"}),
    ]
    results = replay(s, load_mapping("identity:public.item").forward, s.source, s.target, letters)
    assert [r.error for r in results] == [None, None]
    # 1 is gone as the update made it go; 3 keeps its current source state.
    assert _rows(env) == [(2, "moved"), (3, "back again"), (4, "moved too")]


def test_a_truncate_letter_is_not_replayed(env: Env) -> None:
    s = env.settings()
    with env.legacy_conn() as c:
        c.execute(ITEM)
    with env.target_conn() as c:
        c.execute(ITEM)
    truncate = Change("truncate", 1)
    _log(s, env, (100, truncate))
    letter = _letter(s, 0, 100, truncate, error="TransformError")
    (result,) = replay(
        s, load_mapping("identity:public.item").forward, s.source, s.target, [letter]
    )
    assert result.error == (
        "a TRUNCATE of public.item is not replayed (other source tables write its target tables"
        " too): undo its effect by hand as its reason says, then purge it"
    )
