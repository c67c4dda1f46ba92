"""The mapping-vs-schema comparison, on catalogs built by hand and on the shipped snapshot."""

from __future__ import annotations

from transforms.api import ColumnSpec, Direction, TableTransform, TargetTable
from transforms.mcp_manager import MAPPING
from transforms.mcp_manager.snapshot import snapshot_catalog
from transforms.schema_check import mapping_problems


def _direction(*writes: TargetTable) -> Direction:
    return Direction({"public.src": TableTransform("public.src", ("id",), lambda c: [], writes)})


T = TargetTable("public.t", ("id",), ("id", "name", "n"), insert_only=("token",))
LIVE = {
    "public.t": {
        "id": ColumnSpec("text", True),
        "name": ColumnSpec("text"),
        "n": ColumnSpec("bigint"),
        "token": ColumnSpec("text", True),
        "created_at": ColumnSpec("timestamp with time zone", True, True),
    }
}


def test_a_fitting_schema_has_no_problem() -> None:
    assert mapping_problems(_direction(T), LIVE, LIVE) == []


def test_every_problem_is_listed_at_once() -> None:
    live = {
        "public.t": {
            "id": ColumnSpec("text", True),
            "n": ColumnSpec("integer"),
            "token": ColumnSpec("text", True),
            "extra": ColumnSpec("text", True),
        }
    }
    other = TargetTable("public.gone", ("id",), ("id",))
    messages = [p.message for p in mapping_problems(_direction(T, other), live, LIVE)]
    assert messages == [
        "target table public.gone does not exist",
        "public.t.name is written by the mapping but does not exist on the target",
        "public.t.n is integer on the target; the mapping writes bigint "
        "(as the schema it was written for defines it)",
        "public.t.extra is NOT NULL without a default, and the mapping never produces it: "
        "every insert into the table would fail",
    ]


def test_types_are_not_compared_without_an_expected_schema() -> None:
    live = {"public.t": {**LIVE["public.t"], "n": ColumnSpec("integer")}}
    assert mapping_problems(_direction(T), live) == []


def test_the_shipped_mapping_fits_its_own_drizzle_snapshot() -> None:
    snapshot = snapshot_catalog()
    assert mapping_problems(MAPPING.forward, snapshot, snapshot) == []
    assert snapshot["public.mcp_server"]["id"].type == "bigint"
