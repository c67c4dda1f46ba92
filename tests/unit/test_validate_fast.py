"""``validate --fast``'s reading of the changes topic: which legacy keys a change touched, and
when a change cannot be narrowed to keys (replicator.validate.fast)."""

from __future__ import annotations

import logging

import pytest

from connectors.envelope import Change, Envelope, RelationInfo
from connectors.pgtypes import TextLoader
from replicator.validate.fast import Touched, _collect
from transforms.api import Direction, RowChange, TableTransform, TargetOp, TargetTable, Upsert

INT4, TEXT = 23, 25
# Keyed by ``id`` on legacy (its replica identity); the mapping's source key is ``code``.
REL = RelationInfo("public", "item", ("id", "code", "name"), (INT4, TEXT, TEXT), ("id",))


def _item(change: RowChange) -> list[TargetOp]:
    return [Upsert("public.item", {"code": change.key_row["code"]})]


def _direction(source_key: tuple[str, ...]) -> Direction:
    target = TargetTable("public.item", ("code",), ("code", "name"))
    return Direction(
        tables={"public.item": TableTransform("public.item", source_key, _item, (target,))}
    )


def _touched(direction: Direction, *changes: Change) -> Touched:
    out = Touched()
    env = Envelope("o", 1, 100, None, relations={1: REL}, changes=list(changes))
    _collect(env.encode(), direction, TextLoader(), out)
    return out


def test_the_keys_of_every_image_are_collected() -> None:
    out = _touched(
        _direction(("id",)),
        Change("insert", 1, new={"id": "1", "code": "a", "name": "n"}),
        Change("update", 1, new={"id": "3", "code": "c", "name": "n"}, old={"id": "2"}),
        Change("delete", 1, old={"id": "4"}),
    )
    assert out.keys == {"public.item": {(1,), (2,), (3,), (4,)}}
    assert out.truncated == set() and out.changes == 3


def test_a_delete_without_the_custom_source_key_checks_the_table_in_full(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The old image holds the replica identity only: which ``code`` went is unknown, so the
    delete cannot be narrowed to a key, and is never skipped: the table is checked in full."""
    direction = _direction(("code",))
    with caplog.at_level(logging.WARNING, "replicator.validate.fast"):
        out = _touched(
            direction,
            Change("insert", 1, new={"id": "1", "code": "a", "name": "n"}),
            Change("delete", 1, old={"id": "2"}),
        )
    assert out.keys == {"public.item": {("a",)}} and out.truncated == {"public.item"}
    assert "public.item: the old image of a delete does not hold its source key (code)" in (
        caplog.text
    )
    # A key change of the replica identity: the old code is unknown too.
    moved = Change("update", 1, new={"id": "3", "code": "c", "name": "n"}, old={"id": "2"})
    assert _touched(direction, moved).truncated == {"public.item"}
    # Under REPLICA IDENTITY FULL the old image has every column: narrowed to its key.
    full = _touched(direction, Change("delete", 1, old={"id": "2", "code": "b", "name": "n"}))
    assert full.keys == {"public.item": {("b",)}} and full.truncated == set()
