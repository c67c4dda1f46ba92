"""The mapping-vs-schema comparison, on catalogs built by hand and on the shipped snapshot."""

from __future__ import annotations

import pytest

from transforms.api import ColumnSpec, Direction, SequenceSync, TableTransform, TargetTable
from transforms.mcp_manager import MAPPING
from transforms.mcp_manager.snapshot import snapshot_catalog
from transforms.schema_check import Side, mapping_problems, sequence_problems
from transforms.sqltext import qualified, quote_ident


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


# ---- suggested SQL runs as printed (issue 22, item 4) -----------------------------------------


def test_identifiers_are_quoted_as_postgresql_reads_them() -> None:
    assert quote_ident("accounts") == "accounts"
    assert quote_ident("branchId") == '"branchId"'
    assert quote_ident("user") == '"user"'  # a reserved word
    assert quote_ident('a"b') == '"a""b"'
    assert quote_ident("1st") == '"1st"'
    assert qualified("bank.accounts") == "bank.accounts"
    assert qualified("public.user") == 'public."user"'


def test_hints_quote_camel_case_and_reserved_names() -> None:
    t = TargetTable("bank.accounts", ("id",), ("id", "branchId", "amountCents"))
    live = {
        "bank.accounts": {
            "id": ColumnSpec("integer", True),
            "branchId": ColumnSpec("integer"),
            "ownerId": ColumnSpec("integer", True),
        }
    }
    want = {
        "bank.accounts": {
            "id": ColumnSpec("integer", True),
            "branchId": ColumnSpec("bigint"),
            "amountCents": ColumnSpec("bigint"),
        }
    }
    hints = [p.hint for p in mapping_problems(_direction(t), live, want)]
    assert (
        'ALTER TABLE bank.accounts ALTER COLUMN "branchId" TYPE bigint USING "branchId"::bigint;'
        in hints[0]
    )
    assert 'ALTER TABLE bank.accounts ADD COLUMN "amountCents" bigint;' in hints[1]
    assert 'ALTER TABLE bank.accounts ALTER COLUMN "ownerId" DROP NOT NULL;' in hints[2]


def test_a_missing_table_gets_its_ddl_unless_the_mapping_ships_a_schema_tool() -> None:
    t = TargetTable("public.user", ("id",), ("id", "fullName"))
    want = {"public.user": {"id": ColumnSpec("text", True), "fullName": ColumnSpec("text")}}
    (p,) = mapping_problems(_direction(t), {}, want)
    assert (
        'CREATE TABLE public."user" (id text NOT NULL, "fullName" text, PRIMARY KEY (id))' in p.hint
    )
    assert "drizzle" not in p.hint
    (p,) = mapping_problems(_direction(t), {})
    assert 'CREATE TABLE public."user" (id <type>, "fullName" <type>, PRIMARY KEY (id))' in p.hint
    (p,) = mapping_problems(_direction(t), {}, schema_hint="run the migrations")
    assert p.hint.startswith("run the migrations")
    assert (
        MAPPING.target_schema_hint is not None
        and "drizzle-kit migrate" in MAPPING.target_schema_hint
    )


# ---- sequences (issue 22, item 3) ---------------------------------------------------------------


def test_sequence_sync_names_each_side_and_reverses() -> None:
    same = SequenceSync("public.item", "id")
    assert (same.target_table, same.target_column) == ("public.item", "id")
    renamed = SequenceSync("public.item", "id", "public.items", "itemId")
    back = renamed.reversed()
    assert (back.table, back.column, back.target_table, back.target_column) == (
        "public.items", "itemId", "public.item", "id",
    )  # fmt: skip
    by_name = SequenceSync(source_sequence="public.a_seq", target_sequence="public.b_seq")
    assert by_name.reversed() == SequenceSync(
        source_sequence="public.b_seq", target_sequence="public.a_seq"
    )
    with pytest.raises(ValueError, match="source table and column"):
        SequenceSync("public.item")
    with pytest.raises(ValueError, match="name the source"):
        SequenceSync(target_sequence="public.b_seq")


def test_sequence_problems_name_what_is_missing_on_either_side() -> None:
    legacy = Side(
        "legacy",
        {"public.item": {"id": ColumnSpec("bigint", True)}},
        frozenset({"public.item_id_seq"}),
        {("public.item", "id"): "public.item_id_seq"},
    )
    target = Side(
        "target",
        {"public.items": {"itemId": ColumnSpec("bigint", True), "n": ColumnSpec("bigint")}},
        frozenset({"public.items_itemId_seq"}),
        {("public.items", "itemId"): "public.items_itemId_seq"},
    )
    fine = SequenceSync("public.item", "id", "public.items", "itemId")
    d = Direction({}, sequences=(fine,))
    assert sequence_problems(d, legacy, target) == []
    assert sequence_problems(Direction({}, sequences=(fine.reversed(),)), target, legacy) == []
    bad = (
        SequenceSync("public.item", "id"),  # the target has no public.item
        SequenceSync("public.item", "id", "public.items", "n"),  # n owns no sequence
        SequenceSync("public.item", "idd", target_sequence="public.nope_seq"),
    )
    messages = [p.message for p in sequence_problems(Direction({}, sequences=bad), legacy, target)]
    assert messages == [
        "sequence sync public.item.id -> public.item.id: on the target, table public.item does "
        "not exist",
        "sequence sync public.item.id -> public.items.n: on the target, column public.items.n "
        "owns no sequence (neither serial nor identity)",
        "sequence sync public.item.idd -> public.nope_seq: on the legacy, table public.item has "
        "no column idd",
        "sequence sync public.item.idd -> public.nope_seq: on the target, sequence "
        "public.nope_seq does not exist",
    ]
