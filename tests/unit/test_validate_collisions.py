"""The fold of legacy rows into expected target rows names a mapping collision: two rows of one
source table that write one target key (replicator.validate.expect, canon, print)."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from replicator.validate.canon import Exp, TableShape, expected_view, verdict
from replicator.validate.expect import Folder
from replicator.validate.print import print_report
from replicator.validate.report import Difference, Report, TableResult
from transforms.api import Delete, Patch, RowChange, TableTransform, TargetOp, TargetTable, Upsert

SHAPE = TableShape("public.item", ("code",), ("code", "name", "note"), {}, frozenset())
ITEM = TargetTable("public.item", ("code",), ("code", "name", "note"))


def _upsert(change: RowChange) -> list[TargetOp]:
    assert change.new is not None
    if change.new["name"] is None:
        return [Delete("public.item", {"code": change.new["code"]})]
    return [Upsert("public.item", {"code": change.new["code"]}, {"name": change.new["name"]})]


def _patch(change: RowChange) -> list[TargetOp]:
    assert change.new is not None
    return [Patch("public.item", {"code": change.new["code"]}, {"note": change.new["note"]})]


def _by_tens(change: RowChange) -> list[TargetOp]:
    """Ids 10 to 19 all become code "c1": a key derived from the source key alone."""
    key = {"code": f"c{change.key_row['id'] // 10}"}
    if change.op == "delete":
        return [Delete("public.item", key)]
    assert change.new is not None
    return [Upsert("public.item", key, {"name": change.new["name"]})]


ROWS = TableTransform("public.legacy_item", ("id",), _upsert, (ITEM,))
NOTES = TableTransform("public.legacy_note", ("id",), _patch, (ITEM,))
TENS = TableTransform("public.legacy_ten", ("id",), _by_tens, (ITEM,))


def test_two_rows_of_one_source_writing_one_key_collide() -> None:
    folder = Folder({"public.item": SHAPE}, partial=False)
    folder.add(ROWS, {"id": 1, "code": "a", "name": "first"})
    folder.add(ROWS, {"id": 2, "code": "a", "name": "second"})
    folder.add(ROWS, {"id": 3, "code": "b", "name": "third"})
    rows = folder.finish().rows["public.item"]
    assert rows[("a",)].collides == (
        ("public.legacy_item", (("id", "1"),)),
        ("public.legacy_item", (("id", "2"),)),
    )
    assert rows[("b",)].collides == ()
    # Whatever the target holds for it, a colliding key is never right, and its chunk never
    # hashes equal.
    actual = ("a", "second", None)
    assert verdict(actual, rows[("a",)]) == "collides"
    assert expected_view(rows)[("a",)] != actual


def test_a_merge_a_gone_row_and_a_delete_are_no_collision() -> None:
    folder = Folder({"public.item": SHAPE}, partial=True)
    folder.add(ROWS, {"id": 1, "code": "a", "name": "row"})
    folder.add(NOTES, {"id": 7, "code": "a", "note": "merged in"})  # another source: N→1
    folder.add_deleted(TENS, {"id": 12})  # looked up by key and gone: not a row
    folder.add(TENS, {"id": 11, "name": "eleven"})
    folder.add(ROWS, {"id": 3, "code": "b", "name": "row"})
    folder.add(ROWS, {"id": 4, "code": "b", "name": None})  # its transform deletes "b"
    rows = folder.finish().rows["public.item"]
    assert all(e.collides == () for e in rows.values())
    assert rows[("a",)] == Exp("present", ("a", "row", "merged in"))
    assert rows[("c1",)].state == "present"
    # Two present rows that both become "c1" do collide.
    both = Folder({"public.item": SHAPE}, partial=True)
    both.add(TENS, {"id": 11, "name": "eleven"})
    both.add(TENS, {"id": 12, "name": "twelve"})
    assert [s for s, _ in both.finish().rows["public.item"][("c1",)].collides] == [
        "public.legacy_ten",
        "public.legacy_ten",
    ]


def test_a_collision_is_reported_with_its_legacy_keys() -> None:
    r = Report("full", None, datetime(2024, 1, 1, tzinfo=UTC))
    r.tables = [TableResult("public.item", "full", 2, 1, 2, 1, 1, collides=1)]
    sources = [{"table": "public.legacy_item", "key": {"id": str(i)}} for i in (1, 2)]
    r.differences = [Difference("public.item", "collides", {"code": "a"}, sources=sources)]
    assert (r.outcome, r.to_json()["counts"]["differences"]) == ("different", 1)
    assert r.to_json()["differences"][0]["sources"] == sources
    console = Console(record=True, width=200)
    print_report(r, console)
    text = console.export_text()
    assert (
        "collides public.item (code=a): written by public.legacy_item (id=1) and by"
        " public.legacy_item (id=2)"
    ) in text
    assert "1 collide" in text
