"""Fill the legacy tables with realistic, deterministic data at any scale.

``generate(dsn, scale, seed)`` writes ``scale`` units of data (one unit: 200 users, 20
organizations, ~300 memberships, 40 MCP servers, 100 API keys, 2,000 audit rows) with
``COPY … FROM STDIN``. The same seed gives the same rows. Password hashes are real bcrypt
(``$2b$``, ~95 % of users) and argon2id (``$argon2id$``) hashes, computed once per run from a
handful of seeded salts and reused: hashing per row would take hours at scale.

    python -m transforms.mcp_manager.generate --dsn postgresql://… --scale 10 --seed 1
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import sys
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import argon2.low_level
import bcrypt
import psycopg
from psycopg import sql

from transforms.mcp_manager.legacy import LEGACY_TABLES, create_legacy_schema

UNIT = {
    "users": 200,
    "organizations": 20,
    "mcp_servers": 40,
    "api_keys": 100,
    "audit_log": 2000,
}
EPOCH = datetime(2022, 1, 1, tzinfo=UTC)
SPAN_SECONDS = 3 * 365 * 86400

FIRST = ["José", "Zoë", "Łukasz", "Åsa", "Søren", "Мария", "Иван", "王芳", "さくら", "Ngọc",
         "Ελένη", "محمد", "Anna", "Tom", "Priya", "Chidi", "Ólafur", "François"]  # fmt: skip
LAST = ["Müller", "Dvořák", "O'Brien", "Nuñez", "李", "Smith", "Kowalski", "Nguyễn", "Öztürk",
        "Þórsson", "Garcia", "Schmidt", "山田", "Ivanova", "🚀 Rocket"]  # fmt: skip
WORDS = ["alpha", "nova", "delta", "orbit", "pixel", "quartz", "ember", "tundra", "lumen", "zen"]
DOMAINS = ["example.com", "mcp.dev", "acme.io", "corp.example.org"]
TIMEZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Asia/Kolkata"]
ACTIONS = ["server.create", "server.update", "server.delete", "key.create", "key.revoke",
           "member.invite", "member.remove", "login", "logout"]  # fmt: skip
SCOPES = ["servers:read", "servers:write", "audit:read", "keys:manage", "org:admin"]
ROLES = ["admin", "member", "member", "member", "member"]

_BCRYPT_B64 = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
)


def hash_pool(seed: int, n_bcrypt: int = 4, n_argon2: int = 2) -> tuple[list[str], list[str]]:
    """Real password hashes with salts drawn from ``seed`` (so the output is deterministic)."""
    rng = random.Random(f"hashes-{seed}")
    bcrypts = []
    for i in range(n_bcrypt):
        salt = base64.b64encode(rng.randbytes(16)).rstrip(b"=").translate(_BCRYPT_B64)
        bcrypts.append(bcrypt.hashpw(f"password-{i}".encode(), b"$2b$10$" + salt).decode())
    argons = [
        argon2.low_level.hash_secret(
            f"password-{i}".encode(),
            rng.randbytes(16),
            time_cost=3,
            memory_cost=65536,
            parallelism=4,
            hash_len=32,
            type=argon2.low_level.Type.ID,
        ).decode()
        for i in range(n_argon2)
    ]
    return bcrypts, argons


class _Gen:
    def __init__(self, scale: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.n = {k: v * scale for k, v in UNIT.items()}
        self.users: list[uuid.UUID] = []
        self.orgs: list[uuid.UUID] = []

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def when(self) -> datetime:
        return EPOCH + timedelta(seconds=self.rng.randrange(SPAN_SECONDS))

    def maybe(self, p_null: float, value: Any) -> Any:
        return None if self.rng.random() < p_null else value

    def dumps(self, value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def organizations(self) -> Iterator[Sequence[Any]]:
        for i in range(self.n["organizations"]):
            oid = self.uuid()
            self.orgs.append(oid)
            word = self.rng.choice(WORDS)
            name = f"{self.rng.choice(LAST)} {word.title()} {i}"
            yield (oid, name, f"{word}-{i}", self.when())

    def users_rows(self) -> Iterator[Sequence[Any]]:
        bcrypts, argons = hash_pool(self.seed)
        for i in range(self.n["users"]):
            uid = self.uuid()
            self.users.append(uid)
            first, last = self.rng.choice(FIRST), self.rng.choice(LAST)
            email = f"{self.rng.choice(WORDS)}.{i}@{self.rng.choice(DOMAINS)}"
            pool = argons if self.rng.random() < 0.05 else bcrypts
            yield (
                uid,
                email,
                self.maybe(0.1, f"{first} {last}"),
                self.rng.choice(pool),
                self.rng.random() > 0.03,
                self.rng.random() < 0.01,
                self.when(),
            )

    def profiles(self) -> Iterator[Sequence[Any]]:
        for uid in self.users:
            if self.rng.random() < 0.6:
                bio = self.maybe(0.4, f"{self.rng.choice(FIRST)} ✨ " + "lorem ipsum " * 5)
                if bio is not None and self.rng.random() < 0.02:
                    bio += self.rng.randbytes(2048).hex()  # long enough to be TOASTed
                avatar = self.maybe(0.5, f"https://cdn.example.com/a/{uid}.png")
                tz = self.maybe(0.3, self.rng.choice(TIMEZONES))
                if avatar is None and bio is None and tz is None:
                    # An all-NULL profile reads back as no profile after a round trip (see
                    # reverse.profile_from_user); keep generated data exactly reversible.
                    tz = "UTC"
                yield (uid, avatar, bio, tz)

    def members(self) -> Iterator[Sequence[Any]]:
        seen: set[tuple[uuid.UUID, uuid.UUID]] = set()
        # Every organization gets an owner, then users join one or two organizations.
        for i, oid in enumerate(self.orgs):
            uid = self.users[i % len(self.users)]
            seen.add((oid, uid))
            yield (oid, uid, "owner", self.when())
        for uid in self.users:
            for oid in self.rng.sample(self.orgs, k=min(len(self.orgs), self.rng.choice((1, 2)))):
                if (oid, uid) not in seen:
                    seen.add((oid, uid))
                    yield (oid, uid, self.rng.choice(ROLES), self.when())

    def servers(self) -> Iterator[Sequence[Any]]:
        for sid in range(1, self.n["mcp_servers"] + 1):
            transport = self.rng.choice(["stdio", "stdio", "sse", "streamable_http"])
            env = {f"VAR_{k}": f"välue-{self.rng.randrange(1000)}" for k in range(3)}
            if self.rng.random() < 0.05:
                # Random hex barely compresses: well over the TOAST threshold on disk too.
                env = {f"SECRET_{k}": self.rng.randbytes(100).hex() for k in range(50)}
            config = {"env": env, "timeout_s": self.rng.choice([10, 30, 60]), "name": "サーバー"}
            stdio = transport == "stdio"
            created = self.when()
            yield (
                sid,
                self.rng.choice(self.orgs),
                f"{self.rng.choice(WORDS)}-server-{sid}",
                transport,
                self.rng.choice(["npx", "uvx", "docker"]) if stdio else None,
                self.dumps(["-y", f"@mcp/{self.rng.choice(WORDS)}"]) if stdio else None,
                None if stdio else f"https://{self.rng.choice(WORDS)}.mcp.dev/{sid}/mcp",
                self.dumps(config),
                self.rng.random() < 0.9,
                self.maybe(0.05, self.rng.choice(self.users)),
                created,
                created + timedelta(seconds=self.rng.randrange(86400 * 30)),
            )

    def api_keys(self) -> Iterator[Sequence[Any]]:
        for _ in range(self.n["api_keys"]):
            secret = self.rng.randbytes(24)
            scopes = self.rng.sample(SCOPES, k=self.rng.randrange(1, len(SCOPES)))
            created = self.when()
            yield (
                self.uuid(),
                self.rng.choice(self.users),
                f"{self.rng.choice(WORDS)} key ✓",
                hashlib.sha256(secret).hexdigest(),
                "mcp_" + secret.hex()[:6],
                self.dumps(scopes),
                self.maybe(0.5, created + timedelta(days=365)),
                created,
            )

    def audit(self) -> Iterator[Sequence[Any]]:
        for aid in range(1, self.n["audit_log"] + 1):
            action = self.rng.choice(ACTIONS)
            yield (
                aid,
                self.maybe(0.1, self.rng.choice(self.orgs)),
                self.maybe(0.2, self.rng.choice(self.users)),
                action,
                self.maybe(0.1, f"mcp_server:{self.rng.randrange(1, 1000)}"),
                self.dumps({"ip": f"10.0.{aid % 256}.{aid % 199}", "note": "ok ✓", "n": aid}),
                self.when(),
            )


COLUMNS = {
    table: tuple(cols.split())
    for table, cols in {
        "organization": "id name slug created_at",
        "user": "id email full_name hashed_password is_active is_superuser created_at",
        "user_profile": "user_id avatar_url bio timezone",
        "organization_member": "organization_id user_id role created_at",
        "mcp_server": "id organization_id name transport command args url config enabled"
        " created_by created_at updated_at",
        "api_key": "id user_id name hashed_key prefix scopes expires_at created_at",
        "audit_log": "id organization_id user_id action target metadata created_at",
    }.items()
}


def generate(
    dsn: str, scale: int, seed: int, *, create_schema: bool = True, truncate: bool = False
) -> dict[str, int]:
    """Fill the legacy tables; returns the rows written per table."""
    if scale < 1:
        raise ValueError("scale must be at least 1")
    if create_schema:
        create_legacy_schema(dsn)
    gen = _Gen(scale, seed)
    # Parents before children, so the foreign keys hold while COPY checks them.
    plan = [
        ("organization", gen.organizations),
        ("user", gen.users_rows),
        ("user_profile", gen.profiles),
        ("organization_member", gen.members),
        ("mcp_server", gen.servers),
        ("api_key", gen.api_keys),
        ("audit_log", gen.audit),
    ]
    counts: dict[str, int] = {}
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        if truncate:
            names = [sql.Identifier(*t.split(".")) for t in LEGACY_TABLES]
            cur.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(sql.SQL(", ").join(names)))
        for table, rows in plan:
            stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier("public", table),
                sql.SQL(", ").join(map(sql.Identifier, COLUMNS[table])),
            )
            n = 0
            with cur.copy(stmt) as copy:
                for row in rows():
                    copy.write_row(row)
                    n += 1
            counts[f"public.{table}"] = n
        # Explicit ids were copied: move the sequences past them, as the app expects.
        for table in ("mcp_server", "audit_log"):
            cur.execute(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence(%s, 'id'),"
                    " coalesce((SELECT max(id) FROM {}), 0) + 1, false)"
                ).format(sql.Identifier("public", table)),
                (f"public.{table}",),
            )
        cur.execute("ANALYZE")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fill the legacy MCP Manager tables.")
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL"), help="postgresql://…")
    parser.add_argument("--scale", type=int, default=1, help="units of 200 users (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truncate", action="store_true", help="empty the tables first")
    parser.add_argument("--no-create-schema", action="store_true")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn (or DATABASE_URL) is required")
    counts = generate(
        args.dsn,
        args.scale,
        args.seed,
        create_schema=not args.no_create_schema,
        truncate=args.truncate,
    )
    json.dump(counts, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
