"""The legacy schema as the FastAPI backend defines it: SQLModel models.

The models use their own SQLAlchemy registry, so their metadata holds these tables only and
does not mix with any other SQLModel models imported in the same process.

One deliberate difference from a stock backend: ``user.hashed_password`` has a server default
of ``''``. A user created on the target after cutover arrives back on rollback as a user upsert
without a password (the hash comes separately, from the credential account, as a patch), and a
NOT NULL column without a default would refuse that insert. ``''`` matches no hash, so such a
user cannot sign in on legacy until the account patch lands or the password is reset. Apply the
same ``ALTER TABLE "user" ALTER hashed_password SET DEFAULT ''`` to a production legacy
database before relying on rollback.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    String,
    Text,
    Uuid,
    create_engine,
    text,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

LEGACY_TABLES = (
    "public.user",
    "public.user_profile",
    "public.organization",
    "public.organization_member",
    "public.mcp_server",
    "public.api_key",
    "public.audit_log",
)


class Transport(enum.StrEnum):
    stdio = "stdio"
    sse = "sse"
    streamable_http = "streamable_http"


class LegacyModel(SQLModel, registry=registry()):
    pass


def _tstz(*, nullable: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=nullable, server_default=text("now()")),
    )


def _fk(target: str, *, ondelete: str, nullable: bool, primary_key: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(
            Uuid,
            ForeignKey(target, ondelete=ondelete),
            nullable=nullable,
            primary_key=primary_key,
        ),
    )


def _json(*, nullable: bool = True) -> Any:
    # ``json`` (not ``jsonb``): what SQLModel's sa.JSON creates on PostgreSQL.
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


def _bigserial() -> Any:
    # A sequence-backed bigint: the target keeps these ids and syncs its sequence at cutover.
    return Field(
        default=None,
        sa_column=Column(BigInteger, primary_key=True, autoincrement=True),
    )


class User(LegacyModel, table=True):
    __tablename__ = "user"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = Field(sa_column=Column(String(255), nullable=False, unique=True, index=True))
    full_name: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    hashed_password: str = Field(
        sa_column=Column(String, nullable=False, server_default=text("''"))
    )
    is_active: bool = True
    is_superuser: bool = False
    created_at: datetime | None = _tstz()


class UserProfile(LegacyModel, table=True):
    __tablename__ = "user_profile"

    user_id: uuid.UUID | None = _fk("user.id", ondelete="CASCADE", nullable=False, primary_key=True)
    avatar_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    bio: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    timezone: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))


class Organization(LegacyModel, table=True):
    __tablename__ = "organization"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(sa_column=Column(String(255), nullable=False))
    slug: str = Field(sa_column=Column(String(255), nullable=False, unique=True))
    created_at: datetime | None = _tstz()


class OrganizationMember(LegacyModel, table=True):
    __tablename__ = "organization_member"

    organization_id: uuid.UUID | None = _fk(
        "organization.id", ondelete="CASCADE", nullable=False, primary_key=True
    )
    user_id: uuid.UUID | None = _fk("user.id", ondelete="CASCADE", nullable=False, primary_key=True)
    # 'owner' | 'admin' | 'member' (checked by the app, text in the database)
    role: str = Field(sa_column=Column(Text, nullable=False, server_default=text("'member'")))
    created_at: datetime | None = _tstz()


class McpServer(LegacyModel, table=True):
    __tablename__ = "mcp_server"

    id: int | None = _bigserial()
    organization_id: uuid.UUID | None = _fk("organization.id", ondelete="CASCADE", nullable=False)
    name: str = Field(sa_column=Column(String(255), nullable=False))
    transport: Transport = Field(
        sa_column=Column(
            SAEnum(
                Transport,
                name="mcp_transport",
                values_callable=lambda members: [m.value for m in members],
            ),
            nullable=False,
        )
    )
    command: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    args: Any = _json()
    url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Environment and settings: can exceed 8 KB, so it is TOASTed.
    config: Any = _json()
    enabled: bool = True
    created_by: uuid.UUID | None = _fk("user.id", ondelete="SET NULL", nullable=True)
    created_at: datetime | None = _tstz()
    updated_at: datetime | None = _tstz()


class ApiKey(LegacyModel, table=True):
    __tablename__ = "api_key"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID | None = _fk("user.id", ondelete="CASCADE", nullable=False)
    name: str = Field(sa_column=Column(String(255), nullable=False))
    hashed_key: str = Field(sa_column=Column(String, nullable=False, unique=True))
    prefix: str = Field(sa_column=Column(String(32), nullable=False))
    scopes: Any = Field(
        default=None, sa_column=Column(JSON, nullable=False, server_default=text("'[]'"))
    )
    expires_at: datetime | None = _tstz(nullable=True)
    created_at: datetime | None = _tstz()


class AuditLog(LegacyModel, table=True):
    __tablename__ = "audit_log"

    id: int | None = _bigserial()
    # No foreign keys: the history outlives the rows it names.
    organization_id: uuid.UUID | None = Field(default=None, sa_column=Column(Uuid, nullable=True))
    user_id: uuid.UUID | None = Field(default=None, sa_column=Column(Uuid, nullable=True))
    action: str = Field(sa_column=Column(String(255), nullable=False))
    target: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    metadata_: Any = Field(default=None, sa_column=Column("metadata", JSON, nullable=True))
    created_at: datetime | None = _tstz()


metadata = LegacyModel.metadata


def sqlalchemy_url(dsn: str) -> str:
    """A libpq URL as SQLAlchemy's psycopg 3 dialect URL."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn.removeprefix(prefix)
    raise ValueError(f"not a postgresql:// URL: {dsn.split('@')[-1]!r}")


def create_legacy_schema(dsn: str) -> None:
    """Create the legacy tables (and the transport enum) that do not exist yet."""
    missing = [t.name for t in metadata.sorted_tables if not t.primary_key.columns]
    if missing:  # a table without a key cannot be replicated with REPLICA IDENTITY DEFAULT
        raise AssertionError(f"legacy tables without a primary key: {missing}")
    engine = create_engine(sqlalchemy_url(dsn))
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()
