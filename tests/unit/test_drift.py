"""Schema drift judged through the mapping (replicator.drift.judge; docs/drift.md), and the DDL
message's way through the assembler. Pure: no server."""

from __future__ import annotations

from typing import Any

import pytest

from connectors import pgoutput as po
from connectors.assembler import Assembler
from replicator.drift.judge import COMPATIBLE, NEEDS_CHANGE, SAFE, fits, judge
from transforms.api import ColumnSpec
from transforms.identity import identity_mapping
from transforms.mcp_manager import MAPPING

FWD = MAPPING.forward
USER_COLS = {
    "id": "uuid", "email": "character varying", "full_name": "character varying",
    "hashed_password": "character varying", "is_active": "boolean", "is_superuser": "boolean",
    "created_at": "timestamp with time zone",
}  # fmt: skip
TARGET = {
    "public.organization": {"name": ColumnSpec("text", True)},
    "public.audit_log": {"action": ColumnSpec("character varying(100)", True)},
}


def _ddl(table: str | None, query: str, cols: dict[str, str] | None = None, **kw: Any) -> Any:
    return {
        "tag": kw.pop("tag", "ALTER TABLE"),
        "table": table,
        "columns": cols,
        "query": query,
        **kw,
    }


def test_each_kind_of_change_gets_its_verdict_line_and_fix() -> None:
    added = judge(
        FWD,
        _ddl("public.user", "ALTER TABLE u ADD COLUMN nick text", {**USER_COLS, "nick": "text"}),
        {},
    )
    assert added.verdict == SAFE and "nick" in added.reasons[0]

    renamed_cols = {**{k: v for k, v in USER_COLS.items() if k != "full_name"}, "name2": "text"}
    renamed = judge(
        FWD, _ddl("public.user", "ALTER TABLE u RENAME full_name TO name2", renamed_cols), {}
    )
    assert renamed.verdict == NEEDS_CHANGE
    assert "public.user.name reads public.user.full_name" in renamed.reasons[0]
    assert "name2" in renamed.fixes[0] and "drift resolve" in renamed.fixes[0]

    # text -> varchar(10) on the source still fits the target's text: compatible.
    org = {
        "id": "uuid",
        "name": "character varying(10)",
        "slug": "text",
        "created_at": "timestamptz",
    }
    narrowed = judge(
        FWD,
        _ddl("public.organization", "ALTER TABLE o ALTER COLUMN name TYPE varchar(10)", org),
        TARGET,
    )
    assert narrowed.verdict == COMPATIBLE
    # Widened past what the target column holds: needs a change, named with the target type.
    cols = {"id": "bigint", "organization_id": "uuid", "user_id": "uuid", "action": "text",
            "target": "text", "metadata": "json", "created_at": "timestamptz"}  # fmt: skip
    widened = judge(
        FWD, _ddl("public.audit_log", "alter table a alter action type text", cols), TARGET
    )
    assert widened.verdict == NEEDS_CHANGE and "character varying(100)" in widened.reasons[0]

    created = judge(
        FWD, _ddl("public.invoice", "CREATE TABLE invoice ()", {}, tag="CREATE TABLE"), {}
    )
    assert created.verdict == SAFE and "map public.invoice" in created.fixes[0]
    dropped = judge(
        FWD, _ddl("public.api_key", "DROP TABLE api_key", None, tag="DROP TABLE", dropped=True), {}
    )
    assert dropped.verdict == NEEDS_CHANGE and "dropped" in dropped.reasons[0]
    index = judge(FWD, _ddl(None, "CREATE INDEX ON u (email)", None, tag="CREATE INDEX"), {})
    assert index.verdict == SAFE and index.table is None


def test_identity_tables_compare_the_source_with_the_target() -> None:
    d = identity_mapping(["public.item"]).forward
    target = {"public.item": {"id": ColumnSpec("integer", True), "sku": ColumnSpec("text", True)}}
    cols = {"id": "bigint", "sku": "text", "note": "text"}
    j = judge(
        d, _ddl("public.item", "ALTER TABLE item ADD note text, ALTER id TYPE bigint", cols), target
    )
    assert j.verdict == NEEDS_CHANGE
    assert any("ADD COLUMN note text" in f for f in j.fixes)
    assert any("ALTER COLUMN id TYPE bigint" in f for f in j.fixes)
    # A relation's types lack lengths (the Relation fallback): an untouched varchar(n) is no change.
    sized = {"public.item": {**target["public.item"], "code": ColumnSpec("character varying(8)")}}
    fallback = {"id": "integer", "sku": "text", "code": "character varying"}
    added = judge(d, _ddl("public.item", "ALTER TABLE item ADD COLUMN sku", fallback), sized)
    assert added.verdict == SAFE, added
    gone = judge(d, _ddl("public.item", "ALTER TABLE item DROP sku", {"id": "integer"}), target)
    assert gone.verdict == NEEDS_CHANGE and "NOT NULL without a default" in gone.reasons[0]


@pytest.mark.parametrize(
    ("source", "target", "ok"),
    [
        ("integer", "bigint", True),
        ("bigint", "integer", False),
        ("character varying(10)", "text", True),
        ("character varying(10)", "character varying(20)", True),
        ("character varying(30)", "character varying(20)", False),
        ("text", "character varying(20)", False),
        ("text", "character varying", True),
        ("json", "jsonb", True),
        ("uuid", "integer", False),
    ],
)
def test_fits(source: str, target: str, ok: bool) -> None:
    assert fits(source, target) is ok


def test_a_ddl_message_travels_as_a_control_in_its_place() -> None:
    """In its transaction, as kind "ddl"; a transaction of DDL alone still ends with a last slice."""
    asm = Assembler("o")
    out = []
    for m in (
        po.Begin(100, 0, 7),
        po.LogicalMessage(
            True, 90, "replicator.ddl", b'{"tag": "ALTER TABLE", "table": "public.t"}'
        ),
        po.LogicalMessage(True, 91, "replicator.other", b"{}"),
        po.Commit(0, 100, 108, 0),
    ):
        out.extend(asm.feed(m))
    assert [(o.envelope.xid, o.envelope.control, o.envelope.last, o.ack_lsn) for o in out] == [
        (7, {"kind": "ddl", "ddl": {"tag": "ALTER TABLE", "table": "public.t"}}, False, None),
        (7, None, True, 108),
    ]


def test_a_target_migration_is_judged_as_check_judges_the_target() -> None:
    from replicator.drift.target_watch import describe, snapshot

    member = FWD.target_tables["public.member"]
    written = {c: ColumnSpec("text", True) for c in (*member.key, *member.columns)}
    before = {"public.member": written}
    not_null = {"public.member": {**written, "team_id": ColumnSpec("text", True)}}
    nullable = {"public.member": {**written, "team_id": ColumnSpec("text")}}
    tables, said = describe(snapshot(FWD, before), snapshot(FWD, not_null))
    assert tables == ["public.member"]
    assert said == ["ALTER TABLE public.member ADD COLUMN team_id text NOT NULL"]
    ddl = {"side": "target", "table": "public.member", "query": said[0]}
    # judge() sends a target record to judge_target: the same rules `check` applies.
    j = judge(FWD, ddl, not_null)
    assert j.verdict == NEEDS_CHANGE and "team_id is NOT NULL without a default" in j.reasons[0]
    assert "drift resolve" in j.fixes[0]
    ok = judge(FWD, {**ddl, "query": said[0].replace(" NOT NULL", "")}, nullable)
    assert ok.verdict == COMPATIBLE
