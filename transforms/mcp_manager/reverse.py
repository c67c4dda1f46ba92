"""Reverse (rollback): Drizzle/Better-Auth tables → legacy SQLModel tables.

Every choice undoes one in :mod:`transforms.mcp_manager.forward`, so that a legacy row sent
forward and back is unchanged. Rows created on the target after cutover have text UUID ids
(Better-Auth with ``generateId: "uuid"``); any other id cannot go into a legacy UUID column and
is dead-lettered.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from replicator.errors import TransformError
from transforms.api import Delete, Direction, RowChange, TargetOp, TargetTable, Upsert
from transforms.converters import base64url_to_sha256_hex, text_to_uuid, to_utc
from transforms.declarative import Col, Target, col, direction, table_mapping
from transforms.mcp_manager import models
from transforms.mcp_manager.forward import SEQUENCES
from transforms.when import column_equals

# Target tables with no legacy counterpart: the legacy backend keeps its own sessions.
IGNORED = ("public.session", "public.verification", "public.invitation")

PROFILE_COLUMNS = {"avatar_url": "image", "bio": "bio", "timezone": "timezone"}


def _uuid(name: str) -> Col:
    return col(name, convert=text_to_uuid)


def _utc(name: str) -> Col:
    return col(name, convert=to_utc)


def full_name_from_name(value: str | None) -> str | None:
    return value or None


def is_active_from_banned(value: bool | None) -> bool:
    return value is not True


def superuser_from_role(value: str | None) -> bool:
    # The admin plugin allows several comma-separated roles.
    return value is not None and "admin" in (r.strip() for r in value.split(","))


def require_password(value: str | None) -> str:
    if value is None:
        raise ValueError("a credential account without a password cannot go to legacy")
    return value


def empty_if_null(value: str | None) -> str:
    # Legacy columns are NOT NULL where Better-Auth's are nullable (api key name and start).
    return value or ""


def _flatten(permissions: str | None) -> list[str]:
    if permissions is None:
        return []
    try:
        record = json.loads(permissions)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not all(
        isinstance(v, list) and all(isinstance(a, str) for a in v) for v in record.values()
    ):
        raise ValueError("permissions is not a JSON object of action lists")
    return [f"{resource}:{action}" for resource, actions in record.items() for action in actions]


def scopes_from(permissions: str | None, metadata: str | None) -> list[str]:
    """Legacy scopes: the order kept in metadata while it agrees with permissions, else the
    permissions flattened (they were changed on the target, and they are what is enforced)."""
    try:
        flat = _flatten(permissions)
    except ValueError as e:
        # Name the target column: "scopes" is where it was going, not what is wrong.
        raise TransformError(str(e), column="permissions") from e
    kept: Any = None
    if metadata is not None:
        try:
            kept = json.loads(metadata).get("scopes")
        except (ValueError, AttributeError):
            kept = None  # metadata is the app's to use; unreadable means "nothing kept"
    agrees = isinstance(kept, list) and all(isinstance(s, str) for s in kept)
    return kept if agrees and sorted(kept) == sorted(flat) else flat


def expiry_from(
    expires_at: datetime | None, enabled: bool | None, updated_at: datetime
) -> datetime | None:
    """Legacy api keys cannot be disabled: a key disabled on the target goes back expired (as
    of its last change), so that rollback does not bring it back to life."""
    if enabled is False:
        stamp = to_utc(updated_at)
        return stamp if expires_at is None else min(to_utc(expires_at), stamp)
    return None if expires_at is None else to_utc(expires_at)


def profile_from_user(change: RowChange) -> list[TargetOp]:
    """The legacy user_profile row behind the user's merged profile columns.

    A profile whose three columns are all NULL is the same as no profile: it goes back as a
    delete. A column not sent (unchanged TOAST) holds a value, so the row then exists.
    """
    if change.op == "delete":
        return [Delete("public.user_profile", {"user_id": text_to_uuid(change.key_row["id"])})]
    assert change.new is not None
    key = {"user_id": text_to_uuid(change.new["id"])}
    sent = {legacy: change.new[t] for legacy, t in PROFILE_COLUMNS.items() if t in change.new}
    if len(sent) == len(PROFILE_COLUMNS) and all(v is None for v in sent.values()):
        return [Delete("public.user_profile", key)]
    return [Upsert("public.user_profile", key, sent)]


USER = table_mapping(
    "public.user",
    [
        Target(
            "public.user",
            key={"id": _uuid("id")},
            columns={
                "email": "email",
                "full_name": col("name", convert=full_name_from_name),
                "is_active": col("banned", convert=is_active_from_banned, none=True),
                "is_superuser": col("role", convert=superuser_from_role, none=True),
                "created_at": _utc("created_at"),
            },
        )
    ],
    source_key=("id",),
    model=models.TargetUser,
    extra=profile_from_user,
    extra_writes=(TargetTable("public.user_profile", ("user_id",), ("user_id", *PROFILE_COLUMNS)),),
)

# Only the credential account maps back (its hash is the legacy password); the user's delete
# removes the legacy row, so an account delete has nothing to do.
ACCOUNT = table_mapping(
    "public.account",
    [
        Target(
            "public.user",
            key={"id": _uuid("user_id")},
            columns={"hashed_password": col("password", convert=require_password, none=True)},
            patch=True,
            on_delete="ignore",
            when=column_equals("provider_id", "credential"),
        )
    ],
    source_key=("id",),
    model=models.TargetAccount,
)

ORGANIZATION = table_mapping(
    "public.organization",
    [
        Target(
            "public.organization",
            key={"id": _uuid("id")},
            columns={"name": "name", "slug": "slug", "created_at": _utc("created_at")},
        )
    ],
    source_key=("id",),
    model=models.TargetOrganization,
)

# The legacy key is (organization_id, user_id), read from the row: a delete needs the whole old
# row, i.e. REPLICA IDENTITY FULL on the target's member table.
MEMBER = table_mapping(
    "public.member",
    [
        Target(
            "public.organization_member",
            key={"organization_id": _uuid("organization_id"), "user_id": _uuid("user_id")},
            columns={"role": "role", "created_at": _utc("created_at")},
        )
    ],
    source_key=("id",),
    model=models.TargetMember,
)

MCP_SERVER = table_mapping(
    "public.mcp_server",
    [
        Target(
            "public.mcp_server",
            key={"id": "id"},
            columns={
                "organization_id": _uuid("organization_id"),
                "name": "name",
                "transport": "transport",
                "command": "command",
                "args": "args",
                "url": "url",
                "config": "config",
                "enabled": "enabled",
                "created_by": _uuid("created_by"),
                "created_at": _utc("created_at"),
                "updated_at": _utc("updated_at"),
            },
        )
    ],
    source_key=("id",),
    model=models.TargetServer,
)

API_KEY = table_mapping(
    "public.apikey",
    [
        Target(
            "public.api_key",
            key={"id": _uuid("id")},
            columns={
                "user_id": _uuid("user_id"),
                "name": col("name", convert=empty_if_null, none=True),
                "hashed_key": col("key", convert=base64url_to_sha256_hex),
                "prefix": col("start", convert=empty_if_null, none=True),
                "scopes": col("permissions", "metadata", convert=scopes_from),
                "expires_at": col("expires_at", "enabled", "updated_at", convert=expiry_from),
                "created_at": _utc("created_at"),
            },
        )
    ],
    source_key=("id",),
    model=models.TargetApiKey,
)

AUDIT_LOG = table_mapping(
    "public.audit_log",
    [
        Target(
            "public.audit_log",
            key={"id": "id"},
            columns={
                "organization_id": _uuid("organization_id"),
                "user_id": _uuid("user_id"),
                "action": "action",
                "target": "target",
                "metadata": "metadata",
                "created_at": _utc("created_at"),
            },
        )
    ],
    source_key=("id",),
    model=models.TargetAudit,
)


def build() -> Direction:
    return direction(
        USER,
        ACCOUNT,
        ORGANIZATION,
        MEMBER,
        MCP_SERVER,
        API_KEY,
        AUDIT_LOG,
        ignored=IGNORED,
        sequences=SEQUENCES,
    )
