"""The MCP Manager mapping's specific value choices, and validation at the boundary."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from replicator.errors import TransformError
from tests.unit.test_mcp_mapping import LEGACY_KEYS, TARGET_COLUMNS, TARGET_KEYS
from transforms.api import Delete, Patch, RowChange, TableTransform, TargetOp, Upsert
from transforms.mcp_manager import MAPPING
from transforms.mcp_manager.ids import (
    ACCOUNT_NAMESPACE,
    MEMBER_NAMESPACE,
    credential_account_id,
    member_id,
    uuid5_text,
    uuid_text,
)
from transforms.sql_twins import reads_key_text


def _unsent(t: TableTransform, new: dict[str, Any] | None) -> frozenset[str]:
    """The columns a partial test row leaves out, as a change lists its unsent TOAST values
    (a column neither sent nor listed is a mapping error)."""
    if new is None:
        return frozenset()
    return frozenset(r.column for r in t.reads or () if r.column not in new)


def forward(table: str, new: dict[str, Any], op: str = "insert") -> list[TargetOp]:
    t = MAPPING.forward.tables[table]
    return t(
        RowChange(op, table, new=new, unchanged=_unsent(t, new), key_columns=LEGACY_KEYS[table])  # type: ignore[arg-type]
    )


def reverse(
    table: str,
    new: dict[str, Any] | None = None,
    op: str = "insert",
    old: dict[str, Any] | None = None,
) -> list[TargetOp]:
    t = MAPPING.reverse.tables[table]
    change = RowChange(
        op,  # type: ignore[arg-type]
        table,
        new=new,
        old=old,
        unchanged=_unsent(t, new),
        key_columns=TARGET_KEYS[table],
    )
    return t(change)


UID = uuid.UUID("6f9619ff-8b86-4011-b42d-00c04fc964ff")
# A key as Better-Auth stores it: base64url of its SHA-256 digest.
KEY_HASH = "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg"
USER: dict[str, Any] = {
    "id": UID,
    "email": "zoë@example.com",
    "full_name": "Zoë",
    "hashed_password": "$argon2id$v=19$x",
    "is_active": False,
    "is_superuser": True,
    "created_at": datetime(2024, 1, 1),
}


def test_user_splits_into_user_and_credential_account() -> None:
    user, account = forward("public.user", USER)
    uid = str(USER["id"])
    assert isinstance(user, Upsert) and user.key == {"id": uid}
    assert user.values["banned"] is True and user.values["role"] == "admin"
    assert (
        user.values["created_at"]
        == datetime(2024, 1, 1, tzinfo=UTC)
        == user.insert_only["updated_at"]
    )
    assert isinstance(account, Upsert)
    assert account.key == {"user_id": uid, "provider_id": "credential"}
    assert account.insert_only["id"] == credential_account_id(UID)
    assert account.values["account_id"] == uid
    assert account.values["password"] == "$argon2id$v=19$x"
    deletes = MAPPING.forward.tables["public.user"](
        RowChange("delete", "public.user", old={"id": USER["id"]})
    )
    assert deletes == [Delete("public.user", {"id": uid}), Delete("public.account", account.key)]


def test_member_id_is_derived_from_the_composite_key() -> None:
    o, u = uuid.uuid4(), uuid.uuid4()
    (op,) = forward(
        "public.organization_member",
        {
            "organization_id": o,
            "user_id": u,
            "role": "admin",
            "created_at": datetime(2024, 1, 1, tzinfo=UTC),
        },
    )
    assert isinstance(op, Upsert)
    assert op.key == {"id": member_id(o, u)} and member_id(o, u) != member_id(u, o)


def test_reverse_of_target_only_rows() -> None:
    # A non-credential account has no legacy counterpart; a disabled key goes back expired.
    assert (
        reverse(
            "public.account",
            {"id": "x", "provider_id": "github", "user_id": str(uuid.uuid4()), "password": None},
        )
        == []
    )
    when = datetime(2025, 3, 1, tzinfo=UTC)
    (op,) = reverse(
        "public.apikey",
        {
            "id": str(uuid.uuid4()),
            "user_id": str(uuid.uuid4()),
            "name": None,
            "key": KEY_HASH,
            "start": None,
            "permissions": '{"servers":["read","write"]}',
            "metadata": None,
            "enabled": False,
            "expires_at": None,
            "created_at": when,
            "updated_at": when,
        },
    )
    assert isinstance(op, Upsert)
    assert op.values["expires_at"] == when and op.values["name"] == "" and op.values["prefix"] == ""
    assert op.values["scopes"] == ["servers:read", "servers:write"]


def test_scopes_follow_permissions_changed_on_the_target() -> None:
    stale = json.dumps({"scopes": ["a:x", "b:y"]})
    (op,) = reverse(
        "public.apikey",
        {
            "id": str(uuid.uuid4()),
            "user_id": str(uuid.uuid4()),
            "name": "n",
            "key": KEY_HASH,
            "start": "s",
            "permissions": '{"a":["x"]}',
            "metadata": stale,
            "enabled": True,
            "expires_at": None,
            "created_at": USER["created_at"],
            "updated_at": USER["created_at"],
        },
    )
    assert isinstance(op, Upsert) and op.values["scopes"] == ["a:x"]


def test_profile_delete_clears_the_merged_columns() -> None:
    t = MAPPING.forward.tables["public.user_profile"]
    ops = t(RowChange("delete", "public.user_profile", old={"user_id": USER["id"]}))
    assert ops == [
        Patch(
            "public.user", {"id": str(USER["id"])}, {"image": None, "bio": None, "timezone": None}
        )
    ]


def test_mapping_structure() -> None:
    assert set(MAPPING.forward.tables) == set(LEGACY_KEYS)
    assert set(MAPPING.reverse.tables) | MAPPING.reverse.ignored == set(TARGET_COLUMNS)
    assert MAPPING.reverse.ignored == {"public.session", "public.verification", "public.invitation"}
    assert [(s.table, s.column) for s in MAPPING.forward.sequences] == [
        ("public.mcp_server", "id"),
        ("public.audit_log", "id"),
    ]
    assert MAPPING.reverse.sequences == MAPPING.forward.sequences
    for table, target in MAPPING.forward.target_tables.items():
        assert set(target.columns) <= set(TARGET_COLUMNS[table]), table


# ---- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "row", "column", "reason"),
    [
        ("public.user", {**USER, "email": "Zoë@example.com"}, "email", "not lower-case"),
        ("public.user", {**USER, "email": "no-at-sign"}, "email", "not an email"),
        ("public.user", {**USER, "full_name": ""}, "full_name", "set it to NULL"),
        ("public.user", {**USER, "full_name": "x" * 256}, "full_name", "at most 255"),
        ("public.user", {**USER, "id": str(USER["id"])}, "id", "UUID"),
        (
            "public.organization_member",
            {
                "organization_id": USER["id"],
                "user_id": USER["id"],
                "role": "guest",
                "created_at": USER["created_at"],
            },
            "role",
            "'owner', 'admin' or 'member'",
        ),
        (
            "public.mcp_server",
            {"id": 5, "transport": "http"},
            "transport",
            "'stdio', 'sse' or 'streamable_http'",
        ),
        ("public.mcp_server", {"id": 5, "config": {"env": "a\x00b"}}, "config", "NUL"),
        ("public.api_key", {"id": USER["id"], "scopes": ["admin"]}, "scopes", "resource:action"),
    ],
)
def test_forward_validation_names_table_key_and_column(
    table: str, row: dict[str, Any], column: str, reason: str
) -> None:
    with pytest.raises(TransformError) as e:
        forward(table, row)
    err = e.value
    assert err.table == table and err.column == column and reason in err.message
    assert err.key == {k: row[k] for k in LEGACY_KEYS[table]}


def test_reverse_validation() -> None:
    with pytest.raises(TransformError) as e:
        reverse(
            "public.user",
            {"id": "Xy12abc", "email": "a@b.co", "name": "n", "created_at": USER["created_at"]},
        )
    assert (e.value.table, e.value.column, e.value.key) == ("public.user", "id", {"id": "Xy12abc"})
    with pytest.raises(TransformError) as e:
        reverse(
            "public.member",
            {
                "id": "m1",
                "organization_id": str(uuid.uuid4()),
                "user_id": str(uuid.uuid4()),
                "role": "owner,admin",
            },
        )
    assert e.value.column == "role"
    with pytest.raises(TransformError) as e:
        reverse("public.member", op="delete", old={"id": "m1"})
    assert e.value.hint is not None and "REPLICA IDENTITY FULL on public.member" in e.value.hint
    with pytest.raises(TransformError) as e:
        reverse("public.apikey", {"id": str(uuid.uuid4()), "permissions": "[1]", "metadata": None})
    assert e.value.column == "permissions"
    with pytest.raises(TransformError) as e:
        reverse(
            "public.account",
            {
                "id": "a",
                "provider_id": "credential",
                "user_id": str(uuid.uuid4()),
                "password": None,
            },
        )
    assert e.value.column == "password"


@hypothesis.given(st.uuids(), st.text())
def test_uuid5_text_is_uuid5(namespace: uuid.UUID, name: str) -> None:
    assert uuid5_text(namespace, name) == str(uuid.uuid5(namespace, name))


@hypothesis.given(st.uuids(), st.uuids())
def test_ids_print_uuids_as_str_does(org: uuid.UUID, user: uuid.UUID) -> None:
    assert uuid_text(org) == str(org)
    assert uuid_text(str(org)) == str(org)
    assert member_id(org, user) == str(uuid.uuid5(MEMBER_NAMESPACE, f"{org}/{user}"))
    assert credential_account_id(user) == str(uuid.uuid5(ACCOUNT_NAMESPACE, str(user)))


@hypothesis.given(st.uuids(), st.uuids())
def test_the_uuid5_ids_read_the_keys_text_alike(org: uuid.UUID, user: uuid.UUID) -> None:
    # Declared with takes_key_text: the compiled paths pass the server's text of the keys.
    assert reads_key_text(member_id) and reads_key_text(credential_account_id)
    assert member_id(str(org), str(user)) == member_id(org, user)
    assert credential_account_id(str(user)) == credential_account_id(user)
