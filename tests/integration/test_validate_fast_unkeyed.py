"""``validate --fast`` when a delete's old image does not hold the mapping's source key (a
custom ``source_key`` outside the replica identity): the table is checked in full, so the
delete is never missed."""

from __future__ import annotations

from connectors.envelope import Change, Envelope, RelationInfo
from connectors.kafka_io import Producer, ensure_topics
from replicator.validate.run import validate
from tests.support import Env
from transforms.api import MappingSet
from transforms.declarative import Target, direction, table_mapping

INT4, TEXT = 23, 25
ITEM = table_mapping(
    "public.item",
    [Target("public.item", key={"code": "code"}, columns={"name": "name"})],
    source_key=("code",),
)
MAPPING = MappingSet("unkeyed", forward=direction(ITEM), reverse=direction())
REL = RelationInfo("public", "item", ("id", "code", "name"), (INT4, TEXT, TEXT), ("id",))


def test_fast_checks_in_full_a_table_whose_delete_lacks_the_source_key(env: Env) -> None:
    s = env.settings()
    with env.legacy_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, code text UNIQUE NOT NULL, name text)")
        c.execute("INSERT INTO item VALUES (1, 'a', 'one'), (2, 'b', 'two')")
    with env.target_conn() as c:
        c.execute("CREATE TABLE item (code text PRIMARY KEY, name text)")
        c.execute("INSERT INTO item VALUES ('a', 'one'), ('b', 'two')")
    topic = s.topic("fwd", "changes")
    ensure_topics(env.services.kafka, {topic: 1})
    assert validate(s, MAPPING).outcome == "clean"  # the baseline --fast starts from
    # Deleted on legacy; the log has its delete (old image: the replica identity only), the
    # target still has the row.
    with env.legacy_conn() as c:
        c.execute("DELETE FROM item WHERE id = 2")
    producer = Producer(env.services.kafka)
    env_ = Envelope(
        "t", 1, 100, None, relations={1: REL}, changes=[Change("delete", 1, old={"id": "2"})]
    )
    producer.send(topic, env_.encode())
    producer.flush()
    producer.close()
    fast = validate(s, MAPPING, fast=True, save=False)
    assert [(t.table, t.mode) for t in fast.tables] == [("public.item", "full")]
    assert [(d.kind, d.key) for d in fast.differences] == [("extra", {"code": "b"})]
