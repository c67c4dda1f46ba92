"""Scale-out routing (issue #28): every image of one row lands on one partition — an insert's
and an update's new row, a delete's old key (all a replica identity's old image holds), the old
row of REPLICA IDENTITY FULL — and a key change goes to the partitions of both its keys, each
applying its half. ``check`` refuses a partition key a row could change under the same key."""

from __future__ import annotations

from typing import Any

from connectors.assembler import Output
from connectors.envelope import Change, Envelope, RelationInfo, decode_envelope
from connectors.kafka_io import Sent
from replicator.apply.rows import RowMapper
from replicator.capture import TableIdentity, _Router, partition_key_problems, routing_columns
from transforms.api import Delete, Direction, Upsert
from transforms.declarative import Target, table_mapping

PARTITIONS = 4
TEXT, INT4 = 25, 23
# Replica identity DEFAULT: old images hold the primary key (org_id, id) only.
MEMBER = RelationInfo(
    "public", "member", ("org_id", "id", "name"), (INT4, INT4, TEXT), ("org_id", "id")
)
# REPLICA IDENTITY FULL: pgoutput flags every column as the key; the primary key is id.
FULL = RelationInfo("public", "note", ("id", "body"), (INT4, TEXT), ("id", "body"))
PKS = {1: ("org_id", "id"), 2: ("id",)}


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    def send(self, topic: str, value: bytes, *, partition: int | None = None, **_: Any) -> Sent:
        assert partition is not None
        self.sent.append((partition, value))
        return Sent(future=None, size=len(value))


def _router(key: str = "") -> tuple[_Router, _Recorder]:
    kafka = _Recorder()
    router = _Router(kafka, "changes", PARTITIONS, key, clock=lambda: 0.0, primary_keys=PKS)  # type: ignore[arg-type]
    return router, kafka


def _send(router: _Router, lsn: int, *changes: Change) -> None:
    env = Envelope("o", lsn, lsn, None, 0, True, {1: MEMBER, 2: FULL}, list(changes))
    router.send(Output(env, lsn + 8))


def _received(kafka: _Recorder) -> list[tuple[int, Change]]:
    """(partition, change) in the order each partition got them."""
    return [(p, ch) for p, value in kafka.sent for ch in decode_envelope(value).changes]


def _partitions_of(kafka: _Recorder, rel: int, ident: str, column: str = "id") -> set[int]:
    return {
        p
        for p, ch in _received(kafka)
        if ch.rel == rel and (ch.new if ch.op != "delete" else ch.old or {}).get(column) == ident
    }


def test_every_image_of_a_row_lands_on_one_partition() -> None:
    for key in ("", "org_id"):
        router, kafka = _router(key)
        for i in range(40):
            org, id_ = str(i % 7), str(i)
            row = {"org_id": org, "id": id_, "name": "n"}
            _send(router, 100 * i + 1, Change("insert", 1, row))
            _send(router, 100 * i + 2, Change("update", 1, {**row, "name": "m"}))
            _send(
                router,
                100 * i + 3,
                Change("update", 1, {"org_id": org, "id": id_}, unchanged=["name"]),
            )
            _send(router, 100 * i + 4, Change("delete", 1, old={"org_id": org, "id": id_}))
            assert len(_partitions_of(kafka, 1, id_)) == 1, (key, id_, _received(kafka)[-4:])


def test_replica_identity_full_rows_are_routed_by_their_primary_key() -> None:
    # pgoutput calls every column of such a table its key: routing by them all would send two
    # updates of one row (different bodies) to different partitions.
    router, kafka = _router()
    for i in range(40):
        id_ = str(i)
        _send(router, 10 * i + 1, Change("insert", 2, {"id": id_, "body": "a"}))
        _send(
            router,
            10 * i + 2,
            Change("update", 2, {"id": id_, "body": "b"}, {"id": id_, "body": "a"}),
        )
        _send(router, 10 * i + 3, Change("delete", 2, old={"id": id_, "body": "b"}))
        assert len(_partitions_of(kafka, 2, id_)) == 1, _received(kafka)[-3:]
        assert all(ch.part is None for _, ch in _received(kafka))


def _apart() -> tuple[str, str]:
    """Two ids whose rows live on different partitions."""
    router, kafka = _router()
    for i in range(2, 50):
        _send(router, i, Change("insert", 1, {"org_id": "1", "id": str(i), "name": "n"}))
    first = {}
    for p, ch in _received(kafka):
        assert ch.new is not None
        first.setdefault(p, ch.new["id"])
    a, b = list(first.values())[:2]
    return a, b


def test_a_key_change_goes_to_both_keys_partitions_each_in_its_order() -> None:
    a, b = _apart()
    router, kafka = _router()
    old_row = {"org_id": "1", "id": a, "name": "n"}
    _send(router, 1, Change("insert", 1, old_row))
    _send(
        router,
        2,
        Change("update", 1, {"org_id": "1", "id": b, "name": "n"}, {"org_id": "1", "id": a}),
    )
    _send(router, 3, Change("insert", 1, old_row))  # the old key is used again
    got = _received(kafka)
    on_a = [ch for p, ch in got if p == got[0][0]]
    on_b = [ch for p, ch in got if p != got[0][0]]
    # The old key's partition: its insert, the key change's "old" half, then its new insert.
    assert [(ch.op, ch.part) for ch in on_a] == [
        ("insert", None),
        ("update", "old"),
        ("insert", None),
    ]
    assert [(ch.op, ch.part) for ch in on_b] == [("update", "new")]
    assert on_b[0].old == {"org_id": "1", "id": a}  # carried whole: FULL's old row has TOAST values


def _mapper_direction() -> Direction:
    member = table_mapping(
        "public.member",
        [Target("public.people", key={"id": "id"}, columns={"org": "org_id", "name": "name"})],
        source_key=("org_id", "id"),
    )
    return Direction(tables={"public.member": member})


def test_apply_writes_the_old_keys_removal_on_one_half_and_the_new_row_on_the_other() -> None:
    direction = _mapper_direction()
    transform = direction.tables["public.member"]
    new, old = {"org_id": "1", "id": "8", "name": "n"}, {"org_id": "1", "id": "7"}
    ops = {}
    for part in (None, "old", "new"):
        env = Envelope(
            "o", 1, 1, None, 0, True, {1: MEMBER}, [Change("update", 1, new, old, part=part)]
        )
        mapper = RowMapper(direction)
        mapper.relation(env, 1)
        ops[part] = mapper.ops(env, env.changes[0], transform)
    assert ops[None] == [
        Delete("public.people", {"id": 7}),
        Upsert("public.people", {"id": 8}, {"org": 1, "name": "n"}),
    ]
    assert ops["old"] == [Delete("public.people", {"id": 7})]
    assert ops["new"] == [Upsert("public.people", {"id": 8}, {"org": 1, "name": "n"})]


def test_a_key_change_that_keeps_a_target_key_writes_it_on_the_new_partition_only() -> None:
    # The target is keyed by id alone: an org move changes the source key, not the target's.
    direction = _mapper_direction()
    transform = direction.tables["public.member"]
    new, old = {"org_id": "2", "id": "7", "name": "n"}, {"org_id": "1", "id": "7"}
    ops = {}
    for part in ("old", "new"):
        env = Envelope(
            "o", 1, 1, None, 0, True, {1: MEMBER}, [Change("update", 1, new, old, part=part)]
        )
        mapper = RowMapper(direction)
        mapper.relation(env, 1)
        ops[part] = mapper.ops(env, env.changes[0], transform)
    assert ops["old"] == []
    assert ops["new"] == [Upsert("public.people", {"id": 7}, {"org": 2, "name": "n"})]


def test_routing_columns() -> None:
    assert routing_columns(MEMBER, PKS[1], "org_id") == ("org_id",)
    assert routing_columns(MEMBER, PKS[1], "tenant") == ("org_id", "id")  # no such column
    assert routing_columns(FULL, PKS[2], "") == ("id",)
    assert routing_columns(FULL, (), "") == ("id", "body")  # no primary key: the whole row


def _ident(
    table: str, columns: tuple[str, ...], pk: tuple[str, ...], replica: tuple[str, ...]
) -> TableIdentity:
    return TableIdentity(1, table, columns, pk, replica)


def test_check_refuses_a_partition_key_outside_the_rows_key() -> None:
    ok = _ident("public.member", ("org_id", "id"), ("org_id", "id"), ("org_id", "id"))
    moving = _ident("public.server", ("id", "org_id"), ("id",), ("id",))
    full = _ident("public.note", ("id", "org_id"), ("id",), ("id", "org_id"))
    other = _ident("public.plain", ("id",), ("id",), ("id",))
    assert partition_key_problems([ok, other], "org_id", 3) == []
    assert partition_key_problems([moving], "org_id", 1) == []  # one partition: no routing
    assert partition_key_problems([moving], "", 3) == []
    problems = partition_key_problems([ok, moving, full, other], "org_id", 3)
    assert [p.message.split(" is not part of the key of ")[1].split(" ")[0] for p in problems] == [
        "public.server",
        "public.note",  # FULL carries it in every image, but a row could still change it
    ]
    assert all("make org_id part of the primary key" in (p.hint or "") for p in problems)
    assert partition_key_problems([ok], "orgid", 3) == []  # the reverse side: may lack it
    (typo,) = partition_key_problems([ok], "orgid", 3, unused=True)
    assert "is a column of no mapped source table" in typo.message
