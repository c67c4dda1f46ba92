"""transforms.testing.InMemoryStore: the sink's write semantics, in memory, for round trips."""

from __future__ import annotations

import pytest

from transforms.api import Delete, Patch, RowChange, Truncate, Upsert
from transforms.declarative import Target, direction, table_mapping
from transforms.testing import InMemoryStore, key_of


def test_each_operation_writes_as_the_sink_does() -> None:
    s = InMemoryStore()
    s.apply([Patch("t", {"id": 1}, {"a": 1})])  # no row yet: nothing
    assert len(s) == 0
    s.apply([Upsert("t", {"id": 1}, {"a": 1}, {"token": "x"})])
    s.apply([Upsert("t", {"id": 1}, {"b": 2}, {"token": "y"})])  # insert-only kept
    s.apply([Patch("t", {"id": 1}, {"c": 3})])
    assert s.rows("t") == [{"id": 1, "a": 1, "b": 2, "c": 3, "token": "x"}]
    assert s.rows("t", ["id", "a", "b", "c", "token", "d"])[0]["d"] is None
    with pytest.raises(KeyError, match="no column"):
        s.rows("t", ["id"])
    s.apply([Upsert("u", {"k1": 1, "k2": 2}), Delete("t", {"id": 1})])
    assert s.rows("t") == [] and key_of({"k2": 2, "k1": 1}) in s.table("u")
    s.apply([Truncate("u")])
    assert s == InMemoryStore()


MERGE = direction(
    table_mapping(
        "public.item",
        [Target("public.items", key={"id": "id"}, columns={"name": "title"})],
        source_key=("id",),
    ),
    table_mapping(
        "public.item_stats",
        [Target("public.items", key={"id": "item_id"}, columns={"views": "views"}, patch=True)],
        source_key=("item_id",),
    ),
)


def test_load_applies_patches_after_upserts_whatever_the_table_order() -> None:
    rows = {
        "public.item_stats": [{"item_id": 1, "views": 7}],
        "public.item": [{"id": 1, "title": "a"}, {"id": 2, "title": "b"}],
    }
    s = InMemoryStore().load(MERGE, rows)
    assert s.rows("public.items") == [
        {"id": 1, "name": "a", "views": 7},
        {"id": 2, "name": "b"},
    ]
    # One change after another, the patch of a row not written yet does nothing.
    stream = [
        RowChange("insert", "public.item_stats", new={"item_id": 3, "views": 1}),
        RowChange("insert", "public.item", new={"id": 3, "title": "c"}),
    ]
    assert InMemoryStore().run(MERGE, stream).rows("public.items") == [{"id": 3, "name": "c"}]
    with pytest.raises(KeyError, match="no transform"):
        InMemoryStore().load(MERGE, {"public.other": [{"id": 1}]})


def test_of_keys_rows_as_the_direction_writes_them() -> None:
    s = InMemoryStore.of(MERGE, {"public.items": [{"id": 1, "name": "a"}]})
    assert s == InMemoryStore().load(MERGE, {"public.item": [{"id": 1, "title": "a"}]})
    assert s.all_rows() == {"public.items": [{"id": 1, "name": "a"}]}
