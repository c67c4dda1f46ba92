"""Which transforms compile to SQL, and why the others do not (pure: no server)."""

from __future__ import annotations

from transforms.api import TargetTable
from transforms.compile import CompiledTable, NotCompiled, compile_table
from transforms.converters import uuid_to_text
from transforms.declarative import Target, col, custom, table_mapping
from transforms.mcp_manager import MAPPING
from transforms.when import column_equals, column_in

LEGACY = {
    "public.user": dict(
        id="uuid", email="text", full_name="text", hashed_password="text",
        is_active="bool", is_superuser="bool", created_at="timestamptz",
    ),
    "public.user_profile": dict(user_id="uuid", avatar_url="text", bio="text", timezone="text"),
    "public.organization": dict(id="uuid", name="text", slug="text", created_at="timestamptz"),
    "public.organization_member": dict(
        organization_id="uuid", user_id="uuid", role="text", created_at="timestamptz"
    ),
    "public.mcp_server": dict(
        id="int", organization_id="uuid", name="text", transport="enum", command="text",
        args="json", url="text", config="json", enabled="bool", created_by="uuid",
        created_at="timestamptz", updated_at="timestamptz",
    ),
    "public.api_key": dict(
        id="uuid", user_id="uuid", name="text", hashed_key="text", prefix="text",
        scopes="json", expires_at="timestamptz", created_at="timestamptz",
    ),
    "public.audit_log": dict(
        id="int", organization_id="uuid", user_id="uuid", action="text", target="text",
        metadata="json", created_at="timestamptz",
    ),
}  # fmt: skip


def _status(insert_only: bool) -> dict[str, str]:
    out = {}
    for src, t in MAPPING.forward.tables.items():
        c = compile_table(t, LEGACY[src], insert_only=insert_only)
        out[src] = "sql" if isinstance(c, CompiledTable) else c.reason
    return out


def test_mcp_forward_tables_compile_except_the_uuid5_ids() -> None:
    compared = _status(insert_only=False)
    assert [s for s, r in compared.items() if r != "sql"] == ["public.organization_member"]
    assert "member_id has no SQL twin" in compared["public.organization_member"]
    written = _status(insert_only=True)
    assert "credential_account_id has no SQL twin" in written["public.user"]


def test_custom_extra_and_lambda_when_keep_the_python_path() -> None:
    writes = (TargetTable("public.t", ("id",), ("id",)),)
    assert isinstance(
        compile_table(custom("public.s", ("id",), writes, lambda c: []), {}), NotCompiled
    )
    target = Target("public.t", key={"id": col("id", convert=uuid_to_text)})
    extra = table_mapping("public.s", [target], source_key=("id",), extra=lambda c: [])
    assert "extra=" in compile_table(extra, {"id": "uuid"}).reason  # type: ignore[union-attr]
    lam = Target("public.t", key={"id": "id"}, when=lambda row: row["k"] == 1)
    got = compile_table(
        table_mapping("public.s", [lam], source_key=("id",)), {"id": "int", "k": "int"}
    )
    assert isinstance(got, NotCompiled) and "when=" in got.reason
    ok = Target("public.t", key={"id": "id"}, when=column_in("k", [1, 2]))
    got2 = compile_table(
        table_mapping("public.s", [ok], source_key=("id",)), {"id": "int", "k": "int"}
    )
    assert isinstance(got2, CompiledTable)
    assert got2.targets[0].when == '("k") IN (1::bigint, 2::bigint)'


def test_a_converter_on_the_wrong_column_type_does_not_compile() -> None:
    t = Target("public.t", key={"id": col("id", convert=uuid_to_text)})
    got = compile_table(table_mapping("public.s", [t], source_key=("id",)), {"id": "text"})
    assert isinstance(got, NotCompiled) and "uuid_to_text takes uuid" in got.reason


def test_reverse_account_when_is_compilable_and_keeps_its_python_meaning() -> None:
    when = column_equals("provider_id", "credential")
    assert when({"provider_id": "credential"}) and not when({"provider_id": None})
    acc = MAPPING.reverse.tables["public.account"]
    got = compile_table(
        acc, {"id": "text", "provider_id": "text", "user_id": "text", "password": "text"}
    )
    assert isinstance(got, CompiledTable), got


def test_a_key_computed_from_the_source_key_alone_can_be_derived_by_the_caller() -> None:
    member = MAPPING.forward.tables["public.organization_member"]
    got = compile_table(member, LEGACY["public.organization_member"], derived_keys=True)
    assert isinstance(got, CompiledTable), got
    (d,) = got.derived
    assert d.sources == ("organization_id", "user_id") and d.type == "text"
    assert dict(got.targets[0].key)["id"].sql == f'"{d.alias}"'
