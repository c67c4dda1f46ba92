"""The mapping API: declarative table mappings, converters, identity mapping, loader."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import AfterValidator, BaseModel, ConfigDict

from replicator.errors import ConfigError, TransformError
from transforms.api import Delete, MappingSet, Patch, RowChange, TargetTable, Upsert
from transforms.converters import (
    LocalTimestamps,
    ValueMap,
    jsonb_safe,
    negate,
    text_to_uuid,
    to_utc,
    utc_to_naive,
    uuid_to_text,
)
from transforms.declarative import (
    Target,
    col,
    const,
    custom,
    direction,
    table_mapping,
    target_ops,
)
from transforms.identity import identity_mapping
from transforms.loader import load_mapping

U1 = uuid.UUID("00000000-0000-4000-8000-000000000001")
U2 = uuid.UUID("00000000-0000-4000-8000-000000000002")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _positive(v: int) -> int:
    if v <= 0:
        raise ValueError("must be positive")
    return v


class Thing(BaseModel):
    model_config = ConfigDict(strict=True)
    id: uuid.UUID
    size: Annotated[int, AfterValidator(_positive)]
    blob: Any


THING = table_mapping(
    "public.thing",
    [
        Target(
            "public.item",
            key={"id": col("id", convert=uuid_to_text)},
            columns={
                "label": "name",
                "size_x2": col("size", convert=lambda v: v * 2),
                "blob": "blob",
                "kind": const("thing"),
                "both": col("name", "size", convert=lambda n, s: f"{n}:{s}"),
            },
        ),
        Target(
            "public.item_extra",
            key={"item_id": col("id", convert=uuid_to_text)},
            columns={"blob_copy": "blob"},
            patch=True,
            on_delete="clear",
        ),
    ],
    source_key=("id",),
    model=Thing,
)


def change(op: str, new: dict[str, Any] | None = None, **kw: Any) -> RowChange:
    return RowChange(op, "public.thing", new=new, key_columns=("id",), **kw)  # type: ignore[arg-type]


def test_insert_renames_converts_and_splits() -> None:
    ops = THING(change("insert", {"id": U1, "name": "n", "size": 2, "blob": {"a": 1}}))
    assert ops == [
        Upsert(
            "public.item",
            {"id": str(U1)},
            {"label": "n", "size_x2": 4, "blob": {"a": 1}, "kind": "thing", "both": "n:2"},
        ),
        Patch("public.item_extra", {"item_id": str(U1)}, {"blob_copy": {"a": 1}}),
    ]


def test_unchanged_toast_columns_are_left_out() -> None:
    ops = THING(change("update", {"id": U1, "name": "n", "size": 3}, unchanged=frozenset({"blob"})))
    assert ops == [
        Upsert(
            "public.item",
            {"id": str(U1)},
            {"label": "n", "size_x2": 6, "kind": "thing", "both": "n:3"},
        )
    ]  # and no Patch: every column of the merged target was unchanged


def test_null_passes_through_single_source_converters() -> None:
    ops = THING(change("insert", {"id": U1, "name": None, "size": 1, "blob": None}))
    first = ops[0]
    assert isinstance(first, Upsert) and first.values["label"] is None
    assert col("x", convert=lambda v: "was null", none=True).compute({"x": None}) == "was null"


def test_delete_removes_or_clears_each_target() -> None:
    ops = THING(change("delete", old={"id": U1}))
    assert ops == [
        Delete("public.item", {"id": str(U1)}),
        Patch("public.item_extra", {"item_id": str(U1)}, {"blob_copy": None}),
    ]


def test_key_change_moves_the_row_and_fills_from_the_old_row() -> None:
    old = {"id": U1, "name": "n", "size": 1, "blob": [1, 2]}
    new = {"id": U2, "name": "n", "size": 1}
    ops = THING(change("update", new, old=old, unchanged=frozenset({"blob"})))
    assert ops[0] == Delete("public.item", {"id": str(U1)})
    assert ops[1] == Upsert(
        "public.item",
        {"id": str(U2)},
        {"label": "n", "size_x2": 2, "blob": [1, 2], "kind": "thing", "both": "n:1"},
    )
    assert ops[2] == Patch("public.item_extra", {"item_id": str(U1)}, {"blob_copy": None})
    assert ops[3] == Patch("public.item_extra", {"item_id": str(U2)}, {"blob_copy": [1, 2]})


def test_key_change_without_the_unchanged_value_is_an_error() -> None:
    with pytest.raises(TransformError) as e:
        THING(
            change(
                "update",
                {"id": U2, "name": "n", "size": 1},
                old={"id": U1},
                unchanged=frozenset({"blob"}),
            )
        )
    assert e.value.column == "blob"
    assert e.value.hint is not None and "REPLICA IDENTITY FULL" in e.value.hint


def test_converter_error_names_table_key_and_source_column() -> None:
    t = table_mapping(
        "public.thing",
        [Target("public.item", key={"id": "id"}, columns={"x": col("size", convert=int)})],
        source_key=("id",),
    )
    with pytest.raises(TransformError) as e:
        t(change("insert", {"id": U1, "size": "big"}))
    assert (e.value.table, e.value.key, e.value.column) == ("public.thing", {"id": U1}, "size")


def test_model_validation_checks_present_columns_only() -> None:
    with pytest.raises(TransformError) as e:
        THING(change("insert", {"id": U1, "name": "n", "size": -1, "blob": None}))
    assert e.value.column == "size" and "must be positive" in e.value.message
    with pytest.raises(TransformError) as e:  # strict: a str is not a UUID
        THING(change("insert", {"id": str(U1), "name": "n", "size": 1, "blob": None}))
    assert e.value.column == "id"
    # blob unchanged: nothing to check, nothing fails
    THING(change("update", {"id": U1, "name": "n", "size": 1}, unchanged=frozenset({"blob"})))


def test_when_filters_and_ignore_skips_deletes() -> None:
    t = table_mapping(
        "public.thing",
        [
            Target(
                "public.item",
                key={"id": "id"},
                columns={"v": "v"},
                when=lambda r: r["kind"] == "a",
                on_delete="ignore",
            )
        ],
        source_key=("id",),
    )
    assert t(change("insert", {"id": 1, "kind": "b", "v": 1})) == []
    assert t(change("insert", {"id": 1, "kind": "a", "v": 1})) == [
        Upsert("public.item", {"id": 1}, {"v": 1})
    ]
    assert t(change("delete", old={"id": 1})) == []


def test_delete_without_the_key_sources_asks_for_replica_identity_full() -> None:
    t = table_mapping(
        "public.thing", [Target("public.item", key={"k": "other"})], source_key=("id",)
    )
    with pytest.raises(TransformError) as e:
        t(change("delete", old={"id": 1}))
    assert e.value.hint is not None and "REPLICA IDENTITY FULL" in e.value.hint


def test_extra_function_and_declared_writes() -> None:
    def audit(ch: RowChange) -> list[Any]:
        if ch.op == "delete":
            raise ValueError("no audit for deletes")
        return [Upsert("public.audit", {"id": ch.value("id")}, {"seen": True})]

    t = table_mapping(
        "public.thing",
        [Target("public.item", key={"id": "id"}, columns={"v": "v"})],
        source_key=("id",),
        extra=audit,
        extra_writes=[TargetTable("public.audit", ("id",), ("id", "seen"))],
    )
    assert t(change("insert", {"id": 1, "v": 2}))[1] == Upsert(
        "public.audit", {"id": 1}, {"seen": True}
    )
    assert [w.name for w in t.writes] == ["public.item", "public.audit"]
    assert t.writes[0] == TargetTable("public.item", ("id",), ("id", "v"))
    with pytest.raises(TransformError) as e:
        t(change("delete", old={"id": 1}))
    assert e.value.table == "public.thing" and e.value.key == {"id": 1}


def test_custom_transform_reports_errors_with_context() -> None:
    def fn(ch: RowChange) -> list[Any]:
        return [Upsert("public.b", {"id": int(ch.value("id"))})]

    t = custom("public.a", ("id",), [TargetTable("public.b", ("id",), ("id",))], fn)
    assert t(RowChange("insert", "public.a", new={"id": "7"})) == [Upsert("public.b", {"id": 7})]
    with pytest.raises(TransformError) as e:
        t(RowChange("insert", "public.a", new={"id": "x"}))
    assert e.value.table == "public.a" and e.value.key == {"id": "x"}


def test_target_ops_inside_a_custom_transform() -> None:
    # A custom function can reuse the declarative handling for part of its output.
    item = Target("public.item", key={"id": "id"}, columns={"v": col("v", convert=int)})

    def fn(ch: RowChange) -> list[Any]:
        return [*target_ops(item, ch, ("id",)), Upsert("public.log", {"id": ch.key_row["id"]})]

    t = custom("public.a", ("id",), [item.written], fn)
    ch = RowChange("update", "public.a", new={"id": 1}, unchanged=frozenset({"v"}))
    assert t(ch) == [Upsert("public.item", {"id": 1}, {}), Upsert("public.log", {"id": 1})]
    with pytest.raises(TransformError) as e:
        t(RowChange("insert", "public.a", new={"id": 1, "v": "x"}))
    assert (e.value.table, e.value.key, e.value.column) == ("public.a", {"id": 1}, "v")


def test_direction_refuses_duplicates_and_ignored_overlap() -> None:
    d = direction(THING, ignored=["public.other"])
    assert d.transform_for("public.thing") is THING and d.ignored == {"public.other"}
    assert set(d.target_tables) == {"public.item", "public.item_extra"}
    with pytest.raises(ValueError):
        direction(THING, THING)
    with pytest.raises(ValueError):
        direction(THING, ignored=["public.thing"])


# ---- converters ------------------------------------------------------------------------------


def test_converters() -> None:
    u = uuid.UUID("9da13e1a-8594-519e-8be2-fd92283cb4e0")
    assert text_to_uuid(str(u)) == u
    for bad in (str(u).upper(), "{" + str(u) + "}", f"urn:uuid:{u}", "abc", u.hex):
        with pytest.raises(ValueError):
            text_to_uuid(bad)
    assert to_utc(datetime(2024, 1, 1)) == datetime(2024, 1, 1, tzinfo=UTC)
    ist = timezone(timedelta(hours=5, minutes=30))
    shifted = to_utc(datetime(2024, 1, 1, 5, 30, tzinfo=ist))
    assert shifted.tzinfo is UTC and shifted.hour == 0
    assert negate(True) is False
    with pytest.raises(TypeError):
        negate(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        jsonb_safe({"a": ["ok", {"k\x00": 1}]})
    assert jsonb_safe({"a": [1, "x"]}) == {"a": [1, "x"]}


def test_value_map_and_inverse() -> None:
    m = ValueMap({"a": 1, "b": 2}, name="letter")
    assert m("a") == 1 and m.inverse()(2) == "b"
    with pytest.raises(ValueError, match="letter 'c'"):
        m("c")
    with pytest.raises(ValueError):
        ValueMap({"a": 1, "b": 1}).inverse()


# ---- identity --------------------------------------------------------------------------------


def test_identity_mapping_copies_rows() -> None:
    m = identity_mapping(["public.item"])
    t = m.forward.transform_for("public.item")
    assert t is not None and t.writes == (TargetTable("public.item", (), ()),)
    ins = RowChange("insert", "public.item", new={"id": 1, "a": "x"}, key_columns=("id",))
    # The whole row as values, key included (the sink writes key and values alike).
    assert t(ins) == [Upsert("public.item", {"id": 1}, {"id": 1, "a": "x"})]
    upd = RowChange(
        "update", "public.item", new={"id": 1}, unchanged=frozenset({"a"}), key_columns=("id",)
    )
    assert t(upd) == [Upsert("public.item", {"id": 1}, {"id": 1})]
    dele = RowChange("delete", "public.item", old={"id": 1}, key_columns=("id",))
    assert t(dele) == [Delete("public.item", {"id": 1})]
    moved = RowChange(
        "update", "public.item", new={"id": 2, "a": "y"}, old={"id": 1}, key_columns=("id",)
    )
    assert t(moved) == [
        Delete("public.item", {"id": 1}),
        Upsert("public.item", {"id": 2}, {"id": 2, "a": "y"}),
    ]
    assert m.reverse.transform_for("public.item") is not None


def test_identity_errors() -> None:
    t = identity_mapping(["public.item"]).forward.tables["public.item"]
    with pytest.raises(TransformError, match="no key"):
        t(RowChange("insert", "public.item", new={"a": 1}))
    lost = RowChange(
        "update",
        "public.item",
        new={"id": 2},
        old={"id": 1},
        unchanged=frozenset({"a"}),
        key_columns=("id",),
    )
    with pytest.raises(TransformError) as e:
        t(lost)
    assert e.value.column == "a"
    with pytest.raises(ValueError):
        identity_mapping(["item"])


# ---- loader ----------------------------------------------------------------------------------


def test_load_shipped_and_identity_mappings() -> None:
    m = load_mapping("transforms.mcp_manager:MAPPING")
    assert isinstance(m, MappingSet) and m.name == "mcp_manager"
    ident = load_mapping("identity: public.item, tag")
    assert set(ident.forward.tables) == {"public.item", "public.tag"}


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("transforms.mcp_manager", "not of the form"),
        ("identity:", "names no table"),
        ("identity:a,public.a", "twice"),
        ("no_such_pkg_xyz.mod:MAPPING", "no module named 'no_such_pkg_xyz'"),
        ("transforms.mcp_manager:NOPE", "has no attribute 'NOPE'; it defines MAPPING"),
        ("transforms.mcp_manager.forward:ROLE", "is a ValueMap, not a MappingSet"),
        ("transforms.identity:identity_mapping", "is a function"),
    ],
)
def test_loader_errors(spec: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_mapping(spec)
    assert needle in e.value.message


def test_loader_reports_broken_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "needs_dep_mod.py").write_text("import not_installed_dep_xyz\n")
    (tmp_path / "raises_mod.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "callable_mod.py").write_text("def MAPPING():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as e:
        load_mapping("needs_dep_mod:MAPPING")
    assert "needs 'not_installed_dep_xyz'" in e.value.message
    with pytest.raises(ConfigError, match="RuntimeError: boom"):
        load_mapping("raises_mod:MAPPING")
    with pytest.raises(ConfigError) as e:
        load_mapping("callable_mod:MAPPING")
    assert e.value.hint is not None and "call it" in e.value.hint


# ---- the walkthrough in docs/transforms.md runs as written ------------------------------------


def test_docs_example_mapping_round_trips() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "transforms.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    ns: dict[str, Any] = {}
    exec(compile(code, "docs/transforms.md", "exec"), ns)
    m = ns["MAPPING"]
    assert isinstance(m, MappingSet)
    row = {
        "id": U1,
        "title": "t",
        "state": "open",
        "owner_id": None,
        "body": {"a": 1},
        "created_at": T0,
    }
    (up,) = m.forward.tables["public.item"](RowChange("insert", "public.item", new=row))
    assert isinstance(up, Upsert) and up.values["status"] == "active"
    back = m.reverse.tables["public.items"](
        RowChange("insert", "public.items", new={**up.key, **up.values, "views": 3})
    )
    assert back[0] == Upsert("public.item", {"id": U1}, {k: v for k, v in row.items() if k != "id"})
    assert back[1] == Upsert("public.item_stats", {"item_id": U1}, {"views": 3})


# ---- legacy timestamp columns (issue 22, item 5) --------------------------------------------


@given(st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1)))
def test_utc_to_naive_is_the_inverse_of_to_utc(naive: datetime) -> None:
    aware = to_utc(naive)
    assert utc_to_naive(aware) == naive and utc_to_naive(aware).tzinfo is None
    assert to_utc(utc_to_naive(aware)) == aware
    other = aware.astimezone(timezone(timedelta(hours=-7)))
    assert utc_to_naive(other) == naive  # any offset: the UTC wall time


def test_local_timestamps_round_trip_and_refuse_skipped_times() -> None:
    berlin = LocalTimestamps("Europe/Berlin")
    winter, summer = datetime(2024, 1, 15, 12, 0), datetime(2024, 7, 15, 12, 0)
    assert berlin.to_utc(winter) == datetime(2024, 1, 15, 11, 0, tzinfo=UTC)
    assert berlin.to_utc(summer) == datetime(2024, 7, 15, 10, 0, tzinfo=UTC)
    for n in (winter, summer):
        assert berlin.from_utc(berlin.to_utc(n)) == n
    with pytest.raises(ValueError, match="does not exist in Europe/Berlin"):
        berlin.to_utc(datetime(2024, 3, 31, 2, 30))  # clocks went 02:00 -> 03:00
    # The repeated hour: the first one is taken (a legacy column cannot tell them apart).
    assert berlin.to_utc(datetime(2024, 10, 27, 2, 30)) == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)
    assert berlin.from_utc(datetime(2024, 10, 27, 1, 30, tzinfo=UTC)) == datetime(
        2024, 10, 27, 2, 30
    )
    with pytest.raises(ValueError, match="unknown time zone"):
        LocalTimestamps("Mars/Olympus")
    with pytest.raises(TypeError):
        berlin.to_utc("2024-01-01")  # type: ignore[arg-type]


@given(st.datetimes(datetime(1971, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_local_timestamps_from_utc_then_back_outside_the_repeated_hour(aware: datetime) -> None:
    ny = LocalTimestamps("America/New_York")
    local = ny.from_utc(aware)
    back = ny.to_utc(local)
    # Equal, except in the hour the zone repeats, which comes back as its first occurrence.
    assert back == aware or back == aware - timedelta(hours=1)
