"""Key ranges of continuous validation, the pure parts: how many rows a range holds, the
condition a range puts on each side, and which target key column a range can cut along (one
copied from a source column as is, or a uuid as its text; never a key computed from the source)."""

from __future__ import annotations

import pytest

from replicator.validate.canon import TableShape
from replicator.validate.insql.plan import KeyRange, RangeColumn, range_column
from replicator.validate.insql.ranges import range_rows
from transforms.compile import CompiledTarget
from transforms.sql_twins import INT, TEXT, UUID, Expr


def _shape(key_type: str, key: str = "id") -> TableShape:
    return TableShape("public.t", (key,), (key, "v"), {key: key_type, "v": "text"}, frozenset())


def _target(sql: str, cat: str, key: str = "id") -> CompiledTarget:
    return CompiledTarget("public.t", False, ((key, Expr(sql, cat)),), (), (), None)


def test_a_range_holds_the_configured_rows_or_what_the_budget_compares_in_5_s() -> None:
    assert range_rows(20_000, 0) == 100_000
    assert range_rows(20_000, 300) == 300
    assert range_rows(0.1, 0) == 1


def test_the_conditions_of_a_range_on_each_side() -> None:
    assert KeyRange(None, None, INT).pred('"id"', INT) == "true"
    assert KeyRange("300", "600", INT).pred('"id"', INT) == '"id" > 300 AND "id" <= 600'
    assert KeyRange("900", None, INT).pred('"id"', INT) == '"id" > 900'
    u = "0b8a2f8e-5c1d-4a3b-9e7f-1a2b3c4d5e6f"
    r = KeyRange(None, u, UUID)
    assert r.pred('"id"', UUID) == f"\"id\" <= '{u}'::uuid"
    # The same bound on a text column holding the uuid's text: compared byte by byte.
    assert r.pred('"id"', TEXT) == f'"id" COLLATE "C" <= \'{u}\''
    assert r.fits(TEXT) and not KeyRange(None, "a", TEXT).fits(UUID)
    assert KeyRange("o'k", None, TEXT).pred("k", TEXT) == "k COLLATE \"C\" > 'o''k'"
    with pytest.raises(ValueError):  # a bound that is not a key of its type never reaches SQL
        KeyRange("1; DROP TABLE x", None, INT).pred("k", INT)


def test_which_key_column_a_range_cuts_along() -> None:
    assert range_column(_shape("bigint"), _target('"id"', INT), set(), {"id": INT}) == (
        RangeColumn("id", INT, "id", INT)
    )
    as_text = '(CASE WHEN ("id") IS NOT NULL THEN ("id")::text END)'  # sql_twins' uuid_to_text
    assert range_column(_shape("text"), _target(as_text, TEXT), set(), {"id": UUID}) == (
        RangeColumn("id", TEXT, "id", UUID)
    )
    # A text column's cast to text is no uuid's text: it is not taken for one.
    assert range_column(_shape("text"), _target(as_text, TEXT), set(), {"id": TEXT}) is None
    # A key computed from the source (a hash, a uuid5 of two columns) orders unlike it.
    computed = _target('md5("a" || "b")', TEXT)
    assert range_column(_shape("text"), computed, set(), {"a": TEXT, "b": TEXT}) is None
    # An integer copied into a text key orders differently as text.
    assert range_column(_shape("text"), _target('"id"', INT), set(), {"id": INT}) is None
    # An enum key is compared by its label, in the enum's own order: not cut.
    assert range_column(_shape("text"), _target('"id"', TEXT), {"id"}, {"id": TEXT}) is None
