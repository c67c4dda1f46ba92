"""Row models that validate values at the boundary, one per mapped table and side.

Each field is checked alone (see :class:`transforms.declarative.RowValidator`), so constraints
live in the field types. Lengths mirror the legacy ``varchar`` widths: a target value too long
for legacy would otherwise fail a whole rollback batch instead of one row.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

from transforms.converters import text_to_uuid

TRANSPORTS = ("stdio", "sse", "streamable_http")
MEMBER_ROLES = ("owner", "admin", "member")

Transport = Literal["stdio", "sse", "streamable_http"]
MemberRole = Literal["owner", "admin", "member"]

# Shape only (the legacy app validated emails on sign-up); one @, a dot in the domain, no spaces.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_SCOPE = re.compile(r"[^:\s]+:\S+")


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError("not an email address")
    return value


def _scope(value: str) -> str:
    if not _SCOPE.fullmatch(value):
        raise ValueError(f"scope {value!r} is not of the form resource:action")
    return value


def _uuid_text(value: str) -> str:
    text_to_uuid(value)
    return value


Email = Annotated[str, StringConstraints(max_length=255), AfterValidator(_email)]
Name255 = Annotated[str, StringConstraints(max_length=255)]
Slug = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Prefix = Annotated[str, StringConstraints(max_length=32)]
Scope = Annotated[str, AfterValidator(_scope)]
UuidText = Annotated[str, AfterValidator(_uuid_text)]


def _positive_bigint(value: int) -> int:
    if not 0 < value < 2**63:
        raise ValueError(f"{value} is outside bigint's positive range")
    return value


BigId = Annotated[int, AfterValidator(_positive_bigint)]


class _Row(BaseModel):
    # Values arrive typed from the apply worker: a str where a UUID belongs is a bug to report,
    # not something to coerce.
    model_config = ConfigDict(strict=True)


# ---- legacy rows (validated going forward) ----------------------------------------------------


class LegacyUser(_Row):
    id: uuid.UUID
    email: Email
    full_name: Name255 | None
    hashed_password: str
    is_active: bool
    is_superuser: bool
    created_at: datetime


class LegacyProfile(_Row):
    user_id: uuid.UUID
    avatar_url: str | None
    bio: str | None
    timezone: Annotated[str, StringConstraints(max_length=64)] | None


class LegacyOrganization(_Row):
    id: uuid.UUID
    name: Name255
    slug: Slug
    created_at: datetime


class LegacyMember(_Row):
    organization_id: uuid.UUID
    user_id: uuid.UUID
    role: MemberRole
    created_at: datetime


class LegacyServer(_Row):
    id: BigId
    organization_id: uuid.UUID
    name: Name255
    transport: Transport
    command: str | None
    args: list[str] | None
    url: str | None
    config: Any
    enabled: bool
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class LegacyApiKey(_Row):
    id: uuid.UUID
    user_id: uuid.UUID
    name: Name255
    hashed_key: str
    prefix: Prefix
    scopes: list[Scope]
    expires_at: datetime | None
    created_at: datetime


class LegacyAudit(_Row):
    id: BigId
    organization_id: uuid.UUID | None
    user_id: uuid.UUID | None
    action: Name255
    target: str | None
    metadata: Any
    created_at: datetime


# ---- target rows (validated on the way back) --------------------------------------------------


class TargetUser(_Row):
    id: UuidText
    name: Name255
    email: Email
    created_at: datetime
    role: str | None
    banned: bool | None
    image: str | None
    bio: str | None
    timezone: Annotated[str, StringConstraints(max_length=64)] | None


class TargetAccount(_Row):
    id: str
    provider_id: str
    user_id: UuidText
    password: str | None


class TargetOrganization(_Row):
    id: UuidText
    name: Name255
    slug: Slug
    created_at: datetime


class TargetMember(_Row):
    id: str
    organization_id: UuidText
    user_id: UuidText
    role: MemberRole
    created_at: datetime


class TargetServer(_Row):
    id: BigId
    organization_id: UuidText
    name: Name255
    transport: Transport
    command: str | None
    url: str | None
    enabled: bool
    created_by: UuidText | None
    created_at: datetime
    updated_at: datetime


class TargetApiKey(_Row):
    id: UuidText
    user_id: UuidText
    name: Name255 | None
    key: str
    start: Prefix | None
    permissions: str | None
    metadata: str | None
    enabled: bool | None
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


class TargetAudit(_Row):
    id: BigId
    organization_id: UuidText | None
    user_id: UuidText | None
    action: Name255
    target: str | None
    created_at: datetime
