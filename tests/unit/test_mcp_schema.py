"""The two schemas agree with the mapping (pure: SQLModel metadata and the Drizzle snapshot)."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import BaseModel

from transforms.mcp_manager import MAPPING, models
from transforms.mcp_manager.legacy import LEGACY_TABLES, metadata, sqlalchemy_url
from transforms.mcp_manager.target_schema import DRIZZLE_DIR, load_drizzle_snapshot

SNAPSHOT = load_drizzle_snapshot()
LEGACY = {f"public.{t.name}": t for t in metadata.sorted_tables}


def test_every_legacy_table_has_a_primary_key() -> None:
    assert set(LEGACY) == set(LEGACY_TABLES) == set(MAPPING.forward.tables)
    for name, table in LEGACY.items():
        assert table.primary_key.columns, name


def test_legacy_types_the_mapping_relies_on() -> None:
    mcp = LEGACY["public.mcp_server"].c
    assert mcp.transport.type.name == "mcp_transport"  # type: ignore[attr-defined]
    assert list(mcp.transport.type.enums) == list(models.TRANSPORTS)  # type: ignore[attr-defined]
    assert [c.name for c in LEGACY["public.organization_member"].primary_key.columns] == [
        "organization_id",
        "user_id",
    ]
    assert LEGACY["public.user"].c.email.unique
    assert LEGACY["public.user"].c.created_at.type.timezone  # type: ignore[attr-defined]


def test_reverse_writes_only_legacy_columns() -> None:
    for name, target in MAPPING.reverse.target_tables.items():
        assert set(target.columns) <= set(LEGACY[name].c.keys()), name


def test_forward_writes_every_not_null_target_column_without_default() -> None:
    # Such a column would make the first insert of a row fail on the target.
    for name, target in MAPPING.forward.target_tables.items():
        cols = SNAPSHOT["tables"][name]["columns"]
        required = {
            c
            for c, s in cols.items()
            if s["notNull"] and "default" not in s and "identity" not in s
        }
        produced = set(target.columns) | set(target.insert_only)
        assert required <= produced, (name, required - produced)


def test_target_snapshot_shape() -> None:
    assert SNAPSHOT["dialect"] == "postgresql"
    assert SNAPSHOT["enums"]["public.mcp_transport"]["values"] == list(models.TRANSPORTS)
    member = SNAPSHOT["tables"]["public.member"]
    assert any(
        i["isUnique"] and [c["expression"] for c in i["columns"]] == ["organization_id", "user_id"]
        for i in member["indexes"].values()
    )
    for name, table in SNAPSHOT["tables"].items():
        for column in table["columns"]:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", column), (name, column)


MODELS: list[tuple[type[BaseModel], str, bool]] = [
    (models.LegacyUser, "public.user", True),
    (models.LegacyProfile, "public.user_profile", True),
    (models.LegacyOrganization, "public.organization", True),
    (models.LegacyMember, "public.organization_member", True),
    (models.LegacyServer, "public.mcp_server", True),
    (models.LegacyApiKey, "public.api_key", True),
    (models.LegacyAudit, "public.audit_log", True),
    (models.TargetUser, "public.user", False),
    (models.TargetAccount, "public.account", False),
    (models.TargetOrganization, "public.organization", False),
    (models.TargetMember, "public.member", False),
    (models.TargetServer, "public.mcp_server", False),
    (models.TargetApiKey, "public.apikey", False),
    (models.TargetAudit, "public.audit_log", False),
]


@pytest.mark.parametrize(
    ("model", "table", "legacy"), MODELS, ids=lambda v: getattr(v, "__name__", str(v))
)
def test_validation_models_name_real_columns(
    model: type[BaseModel], table: str, legacy: bool
) -> None:
    # Validation skips columns a row lacks, so a misspelt field would silently check nothing.
    columns = set(LEGACY[table].c.keys()) if legacy else set(SNAPSHOT["tables"][table]["columns"])
    assert set(model.model_fields) <= columns


def test_npm_versions_are_pinned_and_locked() -> None:
    pkg = json.loads((DRIZZLE_DIR / "package.json").read_text())
    deps = {**pkg["dependencies"], **pkg["devDependencies"]}
    assert {"drizzle-kit", "drizzle-orm", "pg", "better-auth"} <= set(deps)
    for name, version in deps.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), (name, version)
    lock = json.loads((DRIZZLE_DIR / "package-lock.json").read_text())
    assert lock["packages"][""]["dependencies"] == pkg["dependencies"]


def test_sqlalchemy_url() -> None:
    assert sqlalchemy_url("postgresql://u@h:1/d") == "postgresql+psycopg://u@h:1/d"
    assert sqlalchemy_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    with pytest.raises(ValueError):
        sqlalchemy_url("mysql://u:secret@h/d")
