"""Issue 22, item 1 without a database: a source column the mapping reads but the relation does
not have is a mapping error in every layer (transform, apply's row path, check), never a NULL;
a column the log did not send because it is unchanged TOAST is still left out."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.envelope import Change, Envelope, RelationInfo
from replicator.apply.rows import RowMapper
from replicator.check_mapping import mapping_side_problems
from replicator.errors import TransformError
from transforms.api import ColumnRead, MappingSet, RowChange, TargetTable, Upsert
from transforms.declarative import Target, col, custom, direction, table_mapping
from transforms.reads import absent_columns
from transforms.schema_check import Side, read_problems

TYPO = table_mapping(
    "public.acct",
    [
        Target(
            "public.accounts",
            key={"id": "id"},
            columns={"amountCents": "amuont", "note": "note"},
            insert_only={"opened": col("opened_at")},
        )
    ],
    source_key=("id",),
)
GOOD = table_mapping(
    "public.acct",
    [Target("public.accounts", key={"id": "id"}, columns={"amountCents": "amount"})],
    source_key=("id",),
)


def test_a_column_neither_sent_nor_unchanged_is_an_error_naming_it_and_its_close_match() -> None:
    row = {"id": 1, "amount": 100, "note": "n", "opened_at": None}
    with pytest.raises(TransformError) as e:
        TYPO(RowChange("insert", "public.acct", new=row, key_columns=("id",)))
    assert e.value.column == "amuont"
    assert "public.accounts.amountCents reads source column amuont" in e.value.message
    assert "did you mean amount?" in e.value.message


def test_an_unchanged_toast_column_is_still_left_out_of_the_upsert() -> None:
    row = {"id": 1, "note": "n"}
    ops = GOOD(
        RowChange(
            "update", "public.acct", new=row, unchanged=frozenset({"amount"}), key_columns=("id",)
        )
    )
    assert ops == [Upsert("public.accounts", {"id": 1}, {}, {})]
    with pytest.raises(TransformError):  # not listed unchanged: absent from the relation
        GOOD(RowChange("update", "public.acct", new=row, key_columns=("id",)))


def test_an_insert_only_source_absent_from_the_row_is_refused_too() -> None:
    t = table_mapping(
        "public.acct",
        [Target("public.accounts", key={"id": "id"}, insert_only={"opened": "opend_at"})],
        source_key=("id",),
    )
    with pytest.raises(TransformError, match="opend_at"):
        t(RowChange("insert", "public.acct", new={"id": 1, "opened_at": None}))


def test_declared_reads_and_absent_columns_with_the_source_key() -> None:
    assert TYPO.reads is not None
    assert ColumnRead("amuont", "public.accounts", "amountCents") in TYPO.reads
    bad_key = table_mapping(
        "public.acct",
        [Target("public.accounts", key={"id": "id"}, columns={"n": "note"})],
        source_key=("acct_id",),
    )
    found = absent_columns(bad_key, ["id", "note", "amount"])
    assert [(a.column, a.needed_by) for a in found] == [("acct_id", ("source_key",))]
    assert "the source_key of the mapping of public.acct names column acct_id" in found[0].message
    # A custom transform declares what it reads; undeclared, nothing is assumed.
    fn = custom("public.acct", ("id",), [TargetTable("public.x", ("id",), ("id",))], lambda c: [])
    assert fn.reads is None and absent_columns(fn, ["id"]) == []
    declared = custom(
        "public.acct",
        ("id",),
        [TargetTable("public.x", ("id",), ("id",))],
        lambda c: [],
        reads=["id", "amuont"],
    )
    assert [a.column for a in absent_columns(declared, ["id", "amount"])] == ["amuont"]


def _envelope(rel: RelationInfo, *changes: Change) -> Envelope:
    return Envelope("o", 1, 10, None, relations={1: rel}, changes=list(changes))


def test_apply_refuses_every_row_of_a_relation_lacking_a_read_column() -> None:
    rows = RowMapper(direction(TYPO))
    rel = RelationInfo(
        "public", "acct", ("id", "amount", "note", "opened_at"), (23, 20, 25, 1184), ("id",)
    )
    env = _envelope(
        rel,
        Change("insert", 1, new={"id": "1", "amount": "5", "note": "x", "opened_at": None}),
        Change("delete", 1, old={"id": "2"}),
    )
    for change in env.changes:
        _, transform = rows.relation(env, change.rel)
        assert transform is not None
        with pytest.raises(TransformError) as e:
            rows.ops(env, change, transform)
        assert e.value.message.startswith("mapping error: public.accounts.amountCents reads")
        assert e.value.key is not None and "id" in e.value.key
    # The same mapping on a relation that has the column maps as usual.
    ok = RowMapper(direction(GOOD))
    env = _envelope(
        RelationInfo("public", "acct", ("id", "amount"), (23, 20), ("id",)),
        Change("insert", 1, new={"id": "1", "amount": "5"}),
    )
    _, transform = ok.relation(env, 1)
    assert transform is not None
    assert ok.ops(env, env.changes[0], transform) == [
        Upsert("public.accounts", {"id": 1}, {"amountCents": 5}, {})
    ]


def _side(name: str, catalog: dict[str, dict[str, Any]]) -> Side:
    return Side(name, catalog)  # type: ignore[arg-type]


def test_check_names_the_mapping_line_the_column_and_close_matches_in_both_directions() -> None:
    back = table_mapping(
        "public.accounts",
        [Target("public.acct", key={"id": "id"}, columns={"amount": "amountCent"})],
        source_key=("id",),
    )
    mapping = MappingSet("m", forward=direction(TYPO), reverse=direction(back))
    legacy = _side("legacy", {"public.acct": dict.fromkeys(("id", "amount", "note", "opened_at"))})
    target = _side("target", {"public.accounts": dict.fromkeys(("id", "amountCents", "note"))})
    problems = mapping_side_problems(mapping, legacy, target)
    assert [p.message for p in problems] == [
        "public.accounts.amountCents reads source column public.acct.amuont, which "
        "public.acct does not have; did you mean amount? (on the source (legacy))",
        "public.acct.amount reads source column public.accounts.amountCent, which "
        "public.accounts does not have; did you mean amountCents? (on the target)",
    ]
    assert "(the source (legacy) has amount)" in problems[0].hint
    # A table missing altogether is the source check's to report, once.
    assert read_problems(direction(TYPO), {}) == []


def test_check_refuses_reading_a_generated_column_which_the_log_never_sends() -> None:
    from transforms.api import ColumnSpec

    live = {
        "public.acct": {
            "id": ColumnSpec("integer", True),
            "amount": ColumnSpec("bigint", False, True, generated=True),
        }
    }
    (p,) = read_problems(direction(GOOD), live)
    assert p.message.startswith("public.accounts.amountCents reads public.acct.amount, a generated")
