"""An apply worker's handling of one change, without Kafka or a database (the row path only)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

from connectors.envelope import Change, Envelope, RelationInfo
from connectors.pgsink import Batch
from replicator.apply.rows import RowMapper
from replicator.apply.worker import ApplyWorker
from transforms.api import Direction
from transforms.identity import identity_direction


def _worker(dead: list[str]) -> ApplyWorker:
    w = ApplyWorker.__new__(ApplyWorker)  # the row path needs none of the connections
    w.direction = identity_direction(["public.a"])
    w._rows = RowMapper(w.direction)
    w._snapshot_rows = {}

    def to_dlq(exc: Any, *args: Any) -> None:
        dead.append(exc.message)

    w._dead = to_dlq  # type: ignore[method-assign,assignment]
    return w


def _envelope(rel: RelationInfo, *rows: dict[str, str | None]) -> Envelope:
    changes = [Change("insert", 1, new=row) for row in rows]
    return Envelope("o", 1, 10, None, relations={1: rel}, changes=changes)


def test_identity_rows_stay_text_and_a_malformed_relation_is_dead_lettered_row_by_row() -> None:
    dead: list[str] = []
    w, batch = _worker(dead), Batch()
    bad = _envelope(RelationInfo("public", "a", ("id", "v"), (20,), ("id",)), {"id": "1", "v": "x"})
    good = _envelope(
        RelationInfo("public", "a", ("id", "v"), (20, 25), ("id",)),
        {"id": "2", "v": "y"},
        {"id": "3", "v": None},
    )
    for env in (bad, good):
        for change in env.changes:
            w._change(env, change, 0, 0, batch)
    assert dead == ["2 columns but 1 type oids"]  # a letter, not a stopped worker
    # The identity copies values: with an int8 key (one text form per value) the log's text
    # goes to COPY as it is, never loaded and written back.
    assert {k: st.values for k, st in batch.tables["public.a"].items()} == {
        ("2",): {"id": "2", "v": "y"},
        ("3",): {"id": "3", "v": None},
    }


def test_rows_load_by_type_when_a_key_type_has_several_text_forms() -> None:
    # numeric 1.0 and 1.00 are one key: coalescing by text would keep them apart.
    dead: list[str] = []
    w, batch = _worker(dead), Batch()
    rel = RelationInfo("public", "a", ("id", "n"), (1700, 23), ("id",))
    env = _envelope(rel, {"id": "1.0", "n": "7"}, {"id": "1.00", "n": "8"})
    for change in env.changes:
        w._change(env, change, 0, 0, batch)
    assert dead == []
    assert {k: st.values for k, st in batch.tables["public.a"].items()} == {
        (Decimal("1.0"),): {"id": Decimal("1.00"), "n": 8}
    }


def test_a_value_that_is_not_text_is_dead_lettered_on_the_text_path() -> None:
    dead: list[str] = []
    w, batch = _worker(dead), Batch()
    rel = RelationInfo("public", "a", ("id", "v"), (20, 25), ("id",))
    env = _envelope(rel, {"id": 5, "v": "x"}, {"id": "6", "v": "y"})  # type: ignore[dict-item]
    for change in env.changes:
        w._change(env, change, 0, 0, batch)
    assert len(dead) == 1 and "not text" in dead[0]
    assert list(batch.tables["public.a"]) == [("6",)]


def test_inserts_put_straight_into_the_batch_equal_what_the_transform_makes() -> None:
    """The identity's inserts skip its function (TableTransform.copies_rows): the batch and
    the dead letters are what calling it gives, for every kind of change around them."""
    rel = RelationInfo("public", "a", ("id", "v"), (20, 25), ("id",))
    changes = [
        Change("insert", 1, values=("1", "x"), relation=rel),
        Change("insert", 1, new={"id": "2", "v": None}),
        Change("snapshot", 1, values=("3", "s"), relation=rel),
        Change("update", 1, values=("1", "y"), relation=rel),
        Change("insert", 1, new={"v": "no key"}),
        Change("insert", 1, values=(5, "not text"), relation=rel),  # type: ignore[arg-type]
        Change("delete", 1, old={"id": "2"}),
        Change("insert", 1, values=("2", "again"), relation=rel),
        Change("update", 1, new={"id": "4"}, old={"id": "3"}, unchanged=["v"]),
    ]
    env = Envelope("o", 1, 10, None, relations={1: rel}, changes=changes)
    results = []
    for copies in (True, False):
        dead: list[str] = []
        w, batch = _worker(dead), Batch()
        t = w.direction.tables["public.a"]
        w.direction = Direction({"public.a": dataclasses.replace(t, copies_rows=copies)})
        w._rows = RowMapper(w.direction)
        for change in env.changes:
            w._change(env, change, 0, 0, batch)
        states = {
            k: (st.kind, st.deleted_first, st.values, st.insert_only)
            for k, st in batch.tables["public.a"].items()
        }
        results.append((states, batch.key_columns, len(batch), dead))
    assert results[0] == results[1]
    states, _, size, dead = results[0]
    # No key; a value that is not text; a moved row whose value was not sent.
    assert size == 3 and len(dead) == 3
    assert states[("2",)] == ("upsert", True, {"id": "2", "v": "again"}, {})


def test_a_relation_is_planned_once_across_envelopes_and_again_when_it_changes() -> None:
    """Most envelopes carry one small transaction: a relation's plan outlives its envelope
    (planning per envelope was a tenth of apply's CPU), and a changed relation is a new plan."""
    dead: list[str] = []
    w, batch = _worker(dead), Batch()
    rel = RelationInfo("public", "a", ("id", "v"), (20, 25), ("id",))
    wider = RelationInfo("public", "a", ("id", "v", "w"), (20, 25, 25), ("id",))
    envs = [
        _envelope(rel, {"id": "1", "v": "x"}),
        _envelope(dataclasses.replace(rel), {"id": "2", "v": "y"}),  # equal, not the same object
        _envelope(wider, {"id": "3", "v": "z", "w": "new"}),
    ]
    planned = []
    for env in envs:
        for change in env.changes:
            w._change(env, change, 0, 0, batch)
        planned.append(w._rows._rels[1])
    assert planned[0] is planned[1] and planned[2] is not planned[0]
    assert dead == []
    assert batch.tables["public.a"][("3",)].values == {"id": "3", "v": "z", "w": "new"}
