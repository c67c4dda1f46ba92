"""Issue #28, finding 5: the raw log is kept for good, and an apply whose messages were deleted
under it (retention) stops with an error that names them, never skipping them; a backfill of
every table then repairs the target."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from connectors.kafka_io import end_offsets, ensure_topics, finite_retention
from replicator.backfill.reader import Backfill
from replicator.errors import StateError
from replicator.runtime.pipeline import Pipeline
from tests.support import Env, wait_for
from transforms.loader import load_mapping

ITEM = "CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL)"


def _admin(env: Env) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=env.services.kafka)


def _rows(conn: Any) -> list[Any]:
    with conn as c:
        return c.execute("SELECT id, title FROM item ORDER BY id").fetchall()


def test_the_pipelines_topics_keep_their_log_and_a_finite_one_is_named(env: Env) -> None:
    s = env.settings()
    ensure_topics(env.services.kafka, s.topics("fwd"))
    assert finite_retention(env.services.kafka, list(s.topics("fwd"))) == {}
    admin = _admin(env)
    try:
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, s.topic("fwd", "changes"), None)],
            config_filter="all",
        )["topic"][s.topic("fwd", "changes")]
        assert configs["retention.ms"]["value"] == "-1"
        assert configs["retention.bytes"]["value"] == "-1"
        # One made by someone else, with the broker's default (7 days) for its retention.
        admin.create_topics([NewTopic(s.topic("rev", "changes"), 1, 1)])
    finally:
        admin.close()
    rev = s.topic("rev", "changes")
    found = finite_retention(env.services.kafka, [*s.topics("fwd"), rev])
    assert list(found) == [rev]
    assert "retention.ms=" in found[rev]
    # `replicator check` fails on it with the command that fixes it; `status` says so.
    from replicator.check import _kafka
    from replicator.status.overview import collect

    problems = [f for f in _kafka(s, load_mapping("identity:public.item")) if not f.ok]
    assert len(problems) == 1 and rev in problems[0].message
    assert f"--entity-name {rev} --add-config retention.ms=-1" in (problems[0].hint or "")
    st = collect(s)
    assert st.kafka is not None and list(st.kafka.finite_retention) == [rev]
    assert any(f"Kafka topic {rev} deletes its log" in r for r in st.reasons), st.reasons


def _delete_log(env: Env, topic: str) -> int:
    """Delete every message of partition 0, as retention would; returns where it now begins."""
    end = end_offsets(env.services.kafka, topic)[0]
    admin = _admin(env)
    try:
        admin.delete_records({TopicPartition(topic, 0): end})
    finally:
        admin.close()
    return end


def test_apply_stops_on_a_deleted_log_and_a_backfill_repairs_the_target(env: Env) -> None:
    for conn in (env.legacy_conn(), env.target_conn()):
        with conn as c:
            c.execute(ITEM)
    with env.legacy_conn() as c:
        c.execute("INSERT INTO item SELECT g, 'first ' || g FROM generate_series(1, 50) g")
    s = env.settings()
    mapping = load_mapping("identity:public.item")
    topic = s.topic("fwd", "changes")
    pipeline = Pipeline(s, mapping)
    pipeline.start()
    try:
        wait_for(lambda: _rows(env.target_conn()) == _rows(env.legacy_conn()), 60, what="sync")
    finally:
        pipeline.shutdown()
    with env.target_conn() as c:
        row = c.execute(
            "SELECT next_offset FROM replicator.offsets WHERE topic = %s AND partition = 0",
            (topic,),
        ).fetchone()
    assert row is not None
    applied_end = int(row[0])

    # Changes reach Kafka while apply is down, and are deleted before it reads them.
    capture = Pipeline(s, mapping)
    capture.start(run_apply=False, backfill=False)
    try:
        with env.legacy_conn() as c:
            c.execute("INSERT INTO item SELECT g, 'lost ' || g FROM generate_series(51, 60) g")
            c.execute("UPDATE item SET title = 'lost update' WHERE id <= 5")
            c.execute("DELETE FROM item WHERE id BETWEEN 40 AND 45")
        wait_for(
            lambda: end_offsets(env.services.kafka, topic)[0] > applied_end + 2,
            30,
            what="the changes in Kafka",
        )
    finally:
        capture.shutdown()
    begins = _delete_log(env, topic)

    stopped = Pipeline(s, mapping)
    stopped.start()
    with pytest.raises(StateError) as err:
        stopped.wait(60)
    message = str(err.value)
    assert f"{topic} partition 0" in message
    assert f"offset {applied_end}" in message and f"begins at offset {begins}" in message
    assert "replicator backfill" in message  # what to do
    assert (41, "first 41") in _rows(env.target_conn())  # nothing skipped, nothing applied

    # The remedy the error names: a backfill of every table, then run.
    Backfill(s, mapping.forward).run()
    with env.target_conn() as c:
        assert c.execute(
            "SELECT truncate FROM replicator.backfill ORDER BY started_at DESC LIMIT 1"
        ).fetchone() == (True,)
    repaired = Pipeline(s, mapping)
    repaired.start()
    try:
        with env.legacy_conn() as c:
            c.execute("INSERT INTO item VALUES (100, 'after')")
        wait_for(
            lambda: _rows(env.target_conn()) == _rows(env.legacy_conn()) or repaired.stop.is_set(),
            90,
            what="the target repaired",
        )
        assert not repaired.stop.is_set(), repaired.error
        assert _rows(env.target_conn()) == _rows(env.legacy_conn())
    finally:
        repaired.shutdown()


def test_a_rollbacks_read_of_the_whole_reverse_log_stops_where_retention_deleted_it(
    env: Env,
) -> None:
    """ReverseKeys starts with no offsets: the whole reverse log, whose start must be there."""
    from connectors.kafka_io import Producer
    from replicator.errors import PreconditionError
    from replicator.validate.fast import read_range

    s = env.settings()
    topic = s.topic("rev", "changes")
    ensure_topics(env.services.kafka, {topic: 1})
    producer = Producer(env.services.kafka)
    try:
        for _ in range(3):
            producer.send(topic, b"{}", partition=0)
        producer.flush()
    finally:
        producer.close()
    seen: list[bytes] = []
    assert read_range(env.services.kafka, topic, {}, seen.append) == {0: 3}
    assert len(seen) == 3
    _delete_log(env, topic)
    with pytest.raises(PreconditionError, match="no longer holds offset 0"):
        read_range(env.services.kafka, topic, {}, seen.append)


def test_a_lost_forward_slot_is_recreated_with_a_resync_that_keeps_no_deleted_row(
    env: Env,
) -> None:
    """A slot dropped while the pipeline was down (a managed server's failover, an operator's
    cleanup): the changes in between — deletes too — were never captured. The new slot's
    backfill empties the tables first, so a row deleted in the gap is not kept."""
    for conn in (env.legacy_conn(), env.target_conn()):
        with conn as c:
            c.execute(ITEM)
    with env.legacy_conn() as c:
        c.execute("INSERT INTO item SELECT g, 'first ' || g FROM generate_series(1, 50) g")
    s = env.settings()
    mapping = load_mapping("identity:public.item")
    pipeline = Pipeline(s, mapping)
    pipeline.start()
    try:
        wait_for(lambda: _rows(env.target_conn()) == _rows(env.legacy_conn()), 60, what="sync")
    finally:
        pipeline.shutdown()
    with env.legacy_conn() as c:
        c.execute("SELECT pg_drop_replication_slot(%s)", (s.slot("fwd"),))
        c.execute("DELETE FROM item WHERE id BETWEEN 40 AND 45")
        c.execute("UPDATE item SET title = 'gap' WHERE id <= 5")
        c.execute("INSERT INTO item VALUES (60, 'gap insert')")
    again = Pipeline(s, mapping)
    again.start()
    try:
        wait_for(
            lambda: _rows(env.target_conn()) == _rows(env.legacy_conn()) or again.stop.is_set(),
            60,
            what="the target re-synced",
        )
        assert not again.stop.is_set(), again.error
        with env.target_conn() as c:
            assert c.execute(
                "SELECT truncate FROM replicator.backfill ORDER BY started_at DESC LIMIT 1"
            ).fetchone() == (True,)
    finally:
        again.shutdown()


def test_a_forward_slot_lost_before_the_pipeline_follows_a_rollback_is_re_synced(
    env: Env,
) -> None:
    """A rollback armed the forward slot; it is gone when the running pipeline follows the
    switch (a failover, a cleanup). The slot created then starts at the current WAL: what the
    application wrote on legacy meanwhile — a delete too — was kept off the target for good.
    Following the switch re-syncs as a start does."""
    from connectors.pgsource import create_slot
    from replicator.capture import prepare_source
    from replicator.cutover import decision
    from replicator.state import ensure_schema

    for conn in (env.legacy_conn(), env.target_conn()):
        with conn as c:
            c.execute(ITEM)
    with env.legacy_conn() as c:
        c.execute("INSERT INTO item SELECT g, 'first ' || g FROM generate_series(1, 50) g")
    s = env.settings()
    mapping = load_mapping("identity:public.item")
    pipeline = Pipeline(s, mapping)
    pipeline.start()
    try:
        wait_for(lambda: _rows(env.target_conn()) == _rows(env.legacy_conn()), 60, what="sync")
    finally:
        pipeline.shutdown()
    # After a cutover: the reverse stream armed on the target, the target the writer.
    create_slot(s.target.conninfo(), s.slot("rev"))
    prepare_source(s, s.target, mapping.reverse.source_tables, "rev")
    for conn in (env.legacy_conn(), env.target_conn()):
        with conn as c:
            ensure_schema(c)
            decision.ensure_table(c)
            c.execute(decision.finish(s.name, "rev"))
    with env.legacy_conn() as c:
        c.execute("SELECT pg_drop_replication_slot(%s)", (s.slot("fwd"),))
    again = Pipeline(s, mapping)
    again.start()
    try:
        assert again.direction == "rev"
        # The rollback's records, its armed forward slot lost, legacy written since.
        with env.legacy_conn() as c:
            c.execute("DELETE FROM item WHERE id BETWEEN 40 AND 45")
            c.execute("UPDATE item SET title = 'gap' WHERE id <= 5")
        for conn in (env.legacy_conn(), env.target_conn()):
            with conn as c:
                c.execute(decision.finish(s.name, "fwd"))
        wait_for(lambda: again.direction == "fwd", 30, what="the pipeline following")
        wait_for(
            lambda: _rows(env.target_conn()) == _rows(env.legacy_conn()) or again.stop.is_set(),
            40,
            what="the target re-synced",
        )
        assert not again.stop.is_set(), again.error
    finally:
        again.shutdown()
