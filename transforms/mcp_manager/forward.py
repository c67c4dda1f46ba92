"""Forward: legacy SQLModel tables → Drizzle/Better-Auth tables.

Value choices that must stay reversible (see docs/transforms.md):

- ids: a legacy UUID becomes its canonical text; the credential account and the membership get
  uuid5 ids (:mod:`transforms.mcp_manager.ids`).
- email: Better-Auth looks emails up lower-cased, so a mixed-case legacy email could collide
  with another once lower-cased; without a look-up we cannot tell, so it is dead-lettered with
  the fix instead of guessed at.
- full_name → name (NOT NULL): NULL becomes ``""``; a legacy ``""`` is refused because it
  could not be told from NULL on the way back.
- is_active → banned = not is_active; is_superuser → role ``admin``/``user``.
- timestamps: aware UTC; naive values are taken as UTC.
"""

from __future__ import annotations

import json

from transforms.api import Direction, SequenceSync
from transforms.converters import (
    ValueMap,
    jsonb_safe,
    negate,
    sha256_hex_to_base64url,
    to_utc,
    uuid_to_text,
)
from transforms.declarative import Col, Target, col, const, direction, table_mapping
from transforms.mcp_manager import models
from transforms.mcp_manager.ids import credential_account_id, member_id

ROLE = ValueMap({True: "admin", False: "user"}, name="is_superuser")

SEQUENCES = (SequenceSync("public.mcp_server", "id"), SequenceSync("public.audit_log", "id"))


def email_lower(value: str) -> str:
    if value != value.lower():
        raise ValueError(
            "email is not lower-case: the target looks emails up lower-cased, so it could"
            " collide with another account; lower-case it on legacy after merging duplicates"
        )
    return value


def name_from_full_name(value: str | None) -> str:
    if value is None:
        return ""
    if value == "":
        raise ValueError(
            "full_name is '' which the target cannot tell from NULL; set it to NULL on legacy"
        )
    return value


def permissions_from_scopes(scopes: list[str]) -> str:
    """Better-Auth's permission record ``{"resource": ["action", ...]}`` as JSON text."""
    record: dict[str, list[str]] = {}
    for scope in scopes:
        resource, _, action = scope.partition(":")
        record.setdefault(resource, []).append(action)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def metadata_from_scopes(scopes: list[str]) -> str:
    # The record above loses the order of interleaved scopes; the list itself is kept beside it
    # so the reverse can restore it exactly while the two still agree.
    return json.dumps({"scopes": scopes}, ensure_ascii=False, separators=(",", ":"))


def _uuid(name: str) -> Col:
    return col(name, convert=uuid_to_text)


def _utc(name: str) -> Col:
    return col(name, convert=to_utc)


USER = table_mapping(
    "public.user",
    [
        Target(
            "public.user",
            key={"id": _uuid("id")},
            columns={
                "email": col("email", convert=email_lower),
                "name": col("full_name", convert=name_from_full_name, none=True),
                "email_verified": const(False),
                "banned": col("is_active", convert=negate),
                "role": col("is_superuser", convert=ROLE),
                "created_at": _utc("created_at"),
            },
            # The legacy user has no updated_at: a migrated row starts with its creation time,
            # and a later change made on the target (which legacy cannot record) is kept.
            insert_only={"updated_at": _utc("created_at")},
        ),
        # 1→N: the password hash moves to Better-Auth's credential account, as it is (bcrypt
        # or argon2id); the target's verify() dispatches on the hash prefix.
        # Keyed by (user_id, provider_id), unique in the schema: a credential account that
        # Better-Auth created on the target (random id) is the same account after a rollback.
        Target(
            "public.account",
            key={"user_id": _uuid("id"), "provider_id": const("credential")},
            # Legacy keeps no account times: an account Better-Auth created on the target keeps
            # its own through a rollback and a second cutover.
            insert_only={
                "id": col("id", convert=credential_account_id),
                "created_at": _utc("created_at"),
                "updated_at": _utc("created_at"),
            },
            columns={"account_id": _uuid("id"), "password": "hashed_password"},
        ),
    ],
    source_key=("id",),
    model=models.LegacyUser,
)

# N→1: the profile contributes disjoint columns to the user row; deleting it clears them.
PROFILE = table_mapping(
    "public.user_profile",
    [
        Target(
            "public.user",
            key={"id": _uuid("user_id")},
            columns={"image": "avatar_url", "bio": "bio", "timezone": "timezone"},
            patch=True,
            on_delete="clear",
        )
    ],
    source_key=("user_id",),
    model=models.LegacyProfile,
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
    model=models.LegacyOrganization,
)

MEMBER = table_mapping(
    "public.organization_member",
    [
        Target(
            "public.member",
            key={"id": col("organization_id", "user_id", convert=member_id)},
            columns={
                "organization_id": _uuid("organization_id"),
                "user_id": _uuid("user_id"),
                "role": "role",
                "created_at": _utc("created_at"),
            },
        )
    ],
    source_key=("organization_id", "user_id"),
    model=models.LegacyMember,
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
                "args": col("args", convert=jsonb_safe),
                "url": "url",
                # Often > 8 KB and TOASTed: an update that leaves it alone does not send it, and
                # the declarative layer then leaves it out of the upsert.
                "config": col("config", convert=jsonb_safe),
                "enabled": "enabled",
                "created_by": _uuid("created_by"),
                "created_at": _utc("created_at"),
                "updated_at": _utc("updated_at"),
            },
        )
    ],
    source_key=("id",),
    model=models.LegacyServer,
)

API_KEY = table_mapping(
    "public.api_key",
    [
        Target(
            "public.apikey",
            key={"id": _uuid("id")},
            columns={
                "name": "name",
                # The legacy "prefix" is the key's first characters shown in the UI: Better-Auth
                # calls that "start" (its "prefix" is a fixed string per key type).
                "start": "prefix",
                # Better-Auth keeps the same SHA-256 digest, written in base64url.
                "key": col("hashed_key", convert=sha256_hex_to_base64url),
                "user_id": _uuid("user_id"),
                "permissions": col("scopes", convert=permissions_from_scopes),
                "metadata": col("scopes", convert=metadata_from_scopes),
                "enabled": const(True),
                # Legacy keys were never rate limited; keep it so at cutover.
                "rate_limit_enabled": const(False),
                "request_count": const(0),
                "expires_at": _utc("expires_at"),
                "created_at": _utc("created_at"),
                "updated_at": _utc("created_at"),
            },
        )
    ],
    source_key=("id",),
    model=models.LegacyApiKey,
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
                "metadata": col("metadata", convert=jsonb_safe),
                "created_at": _utc("created_at"),
            },
        )
    ],
    source_key=("id",),
    model=models.LegacyAudit,
)


def build() -> Direction:
    return direction(
        USER, PROFILE, ORGANIZATION, MEMBER, MCP_SERVER, API_KEY, AUDIT_LOG, sequences=SEQUENCES
    )
