"""Validation's pure parts: canonical values, the fold of transform output, verdicts, reports."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from replicator.errors import PreconditionError
from replicator.validate.canon import (
    SKIP,
    Exp,
    TableShape,
    canon_row,
    canon_value,
    chunk_digest,
    expected_row,
    expected_view,
    verdict,
)
from replicator.validate.expect import Folder
from replicator.validate.report import Difference, Report, TableResult
from replicator.validate.scope import components, select_tables
from transforms.mcp_manager import MAPPING

FWD = MAPPING.forward
TSTZ = "timestamp with time zone"


def _shape(name: str) -> TableShape:
    tt = FWD.target_tables[name]
    types = {c: "text" for c in tt.columns}
    types.update({c: TSTZ for c in tt.columns if c.endswith("_at")})
    types.update({c: "boolean" for c in ("banned", "email_verified", "enabled")})
    return TableShape(name, tt.key, tt.columns, types, frozenset({"email_verified"}))


def test_values_compare_by_the_target_column_type() -> None:
    assert canon_value('{"b": [1, 2], "a": "é"}', "jsonb") == canon_value(
        {"a": "é", "b": [1, 2]}, "jsonb"
    )
    paris = datetime(2024, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert canon_value(paris, TSTZ) == canon_value(datetime(2024, 1, 1, 12, 0), TSTZ)
    u = uuid.uuid4()
    assert canon_value(u, "text") == canon_value(str(u).upper(), "uuid") == str(u)
    assert canon_value(Decimal("1.50"), "numeric(10,2)") == canon_value(Decimal("1.5"), "numeric")
    assert canon_value(True, "boolean") == "true" and canon_value(None, "jsonb") is None
    assert canon_value(5, "bigint") == canon_value("5", "bigint") == "5"
    assert canon_value("not json", "jsonb") == "not json"


def test_unwritten_columns_and_verdicts() -> None:
    shape = TableShape("t", ("id",), ("id", "a", "b", "c"), {}, frozenset({"c"}))
    full = expected_row(shape, {"id": 1, "a": "x"}, partial=False)
    assert full == ("1", "x", None, SKIP)  # no default: NULL; a default: not compared
    assert expected_row(shape, {"id": 1}, partial=True) == ("1", SKIP, SKIP, SKIP)
    present = Exp("present", full)
    assert verdict(("1", "x", None, "anything"), present) is None
    assert verdict(("1", "y", None, "z"), present) == "differs"
    assert verdict(None, present) == "missing"
    assert verdict(("1", "x", None, None), None) == "extra"
    assert verdict(("1", "x", None, None), Exp("absent")) == "extra"
    assert verdict(None, Exp("absent")) is None
    assert verdict(None, Exp("if_present", full)) is None
    assert verdict(("1", "q", None, None), Exp("if_present", full)) == "differs"


def test_chunk_digests_agree_only_on_equal_rows() -> None:
    shape = TableShape("t", ("id",), ("id", "a", "c"), {}, frozenset({"c"}))
    exp = {
        (str(i),): Exp("present", expected_row(shape, {"id": i, "a": i}, partial=False))
        for i in range(5)
    }
    actual = {k: canon_row(shape, {"id": k[0], "a": k[0], "c": "default"}) for k in exp}
    keys = sorted(exp)
    assert chunk_digest(keys, actual, exp) == chunk_digest(keys, expected_view(exp))
    actual[("3",)] = canon_row(shape, {"id": "3", "a": "changed", "c": "default"})
    assert chunk_digest(keys, actual, exp) != chunk_digest(keys, expected_view(exp))


def _user(email: str = "ann@example.com") -> dict[str, object]:
    return {
        "id": uuid.UUID(int=1),
        "email": email,
        "full_name": "Ann",
        "hashed_password": "$2b$12$abc",
        "is_active": True,
        "is_superuser": False,
        "created_at": datetime(2024, 5, 1, tzinfo=UTC),
    }


PROFILE = {"user_id": uuid.UUID(int=1), "avatar_url": None, "bio": "hi", "timezone": "UTC"}


def test_fold_merges_n_to_1_patches_after_upserts() -> None:
    shapes = {n: _shape(n) for n in ("public.user", "public.account")}
    folder = Folder(shapes, partial=False)
    # The profile comes first here: its patch must still land on the user row.
    folder.add(FWD.tables["public.user_profile"], PROFILE)
    folder.add(FWD.tables["public.user"], _user())
    exp = folder.finish()
    key = (str(uuid.UUID(int=1)),)
    user = exp.rows["public.user"][key]
    cols = shapes["public.user"].columns
    row = dict(zip(cols, user.row or (), strict=True))
    assert user.state == "present"
    assert (row["bio"], row["timezone"], row["image"], row["banned"]) == (
        "hi",
        "UTC",
        None,
        "false",
    )
    assert len(exp.rows["public.account"]) == 1
    assert exp.sources["public.user"][key] == {
        ("public.user_profile", (uuid.UUID(int=1),)),
        ("public.user", (uuid.UUID(int=1),)),
    }

    # A profile alone: nothing is written in full mode, "if the row exists" in partial mode.
    alone = Folder(shapes, partial=False)
    alone.add(FWD.tables["public.user_profile"], PROFILE)
    assert alone.finish().rows["public.user"] == {}
    partial = Folder(shapes, partial=True)
    partial.add(FWD.tables["public.user_profile"], PROFILE)
    only = partial.finish().rows["public.user"][key]
    assert only.state == "if_present" and only.row is not None
    assert only.row[cols.index("email")] == SKIP and only.row[cols.index("bio")] == "hi"


def test_deleted_and_refused_rows() -> None:
    shapes = {n: _shape(n) for n in ("public.user", "public.account")}
    folder = Folder(shapes, partial=True)
    folder.add_deleted(FWD.tables["public.user"], {"id": uuid.UUID(int=1)})
    folder.add(FWD.tables["public.user"], {**_user("Bob@Example.com"), "id": uuid.UUID(int=2)})
    exp = folder.finish()
    assert exp.rows["public.user"][(str(uuid.UUID(int=1)),)] == Exp("absent")
    assert [(r.source, r.key) for r in exp.rejected] == [
        ("public.user", {"id": str(uuid.UUID(int=2))})
    ]
    assert "lower-case" in exp.rejected[0].reason


def test_scope_and_groups() -> None:
    assert list(select_tables(FWD, "user_profile")) == ["public.user"]
    assert list(select_tables(FWD, "public.apikey")) == ["public.apikey"]
    with pytest.raises(PreconditionError):
        select_tables(FWD, "nope")
    groups = components(FWD, list(FWD.target_tables))
    assert ["public.account", "public.user"] in groups
    assert ["public.audit_log"] in groups


def test_report_outcome_and_json_schema() -> None:
    r = Report("full", None, datetime(2024, 1, 1, tzinfo=UTC))
    r.tables = [TableResult("public.user", "full", 3, 3, 3, 1)]
    assert (r.outcome, r.exit_code) == ("clean", 0)
    r.tables[0].unsettled = 1
    assert (r.outcome, r.exit_code) == ("unsettled", 3)
    r.tables[0].differs = 1
    r.differences.append(Difference("public.user", "differs", {"id": "1"}, ["name"]))
    out = r.to_json()
    assert (out["outcome"], r.exit_code) == ("different", 1)
    assert set(out) >= {"version", "scope", "outcome", "counts", "tables", "differences", "orphans"}
    assert out["counts"]["differences"] == 1 and out["tables"][0]["differences"] == 1


def test_human_report_names_the_differences() -> None:
    from rich.console import Console

    from replicator.validate.print import print_report
    from replicator.validate.report import Orphan

    r = Report("full", None, datetime(2024, 1, 1, tzinfo=UTC), live=True)
    r.tables = [TableResult("public.user", "full", 3, 3, 3, 1, 1, differs=1)]
    r.differences = [
        Difference("public.user", "differs", {"id": "u1"}, ["name"], {"name": "a"}, {"name": "[b]"})
    ]
    r.orphans = [
        Orphan("public.member", "member_user_fk", "public.user", {"id": "m1"}, {"user_id": "u9"})
    ]
    r.orphan_count = 1
    console = Console(record=True, width=200)
    print_report(r, console)
    text = console.export_text()
    assert "differs public.user (id=u1): name expected 'a', target has '[b]'" in text
    assert "orphan public.member (id=m1)" in text and "different" in text


def test_human_report_fits_an_80_column_terminal() -> None:
    from rich.console import Console

    from replicator.validate.print import print_report

    r = Report("full", None, datetime(2024, 1, 1, tzinfo=UTC), live=True)
    r.tables = [
        TableResult("public.mcp_server_configuration", "full", 576_000, 576_000, 576_000, 58),
        TableResult("public.organization_membership", "keys", 12_000, 11_998, 12_000, 3),
        TableResult("public.audit_log", "full", 1_000_000, 1_000_000, 1_000_000, 100),
    ]
    r.tables[1].missing, r.tables[1].differs, r.tables[1].in_flight = 2, 1, 4
    console = Console(record=True, width=80)
    print_report(r, console)
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text, text
    assert "mcp_server_configuration" in text and "public." not in text
    assert "2 missing, 1 differ" in text and "(4 in flight)" in text and "ok" in text
