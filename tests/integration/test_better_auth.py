"""Migrated users sign in through the real Better-Auth instance (Node, Drizzle adapter).

The legacy backend hashed with bcrypt and, later, argon2id; the replicator moves the hashes as
they are into Better-Auth's credential accounts, and transforms/mcp_manager/drizzle/auth.ts
verifies both. A user who signs up on the target gets a UUID id and a bcrypt hash, which the
legacy schema accepts if the migration is rolled back.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bcrypt
import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Json

from connectors import pg
from connectors.pgsink import Batch, Sink
from replicator.runtime.pipeline import Pipeline
from tests.support import Env, Services, isolated_env, wait_for
from transforms.api import RowChange
from transforms.converters import sha256_hex_to_base64url
from transforms.loader import load_mapping
from transforms.mcp_manager.generate import hash_pool

SEED = 7


def _backfill_applied(env: Env) -> bool:
    with env.target_conn() as c:
        try:
            row = c.execute("SELECT status FROM replicator.backfill LIMIT 1").fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0] == "applied")


@pytest.fixture(scope="module")
def migrated(services: Services) -> Iterator[Env]:
    # One migration for the module: the tests only read, apart from one sign-up of a new email.
    with isolated_env(services) as env:
        env.mcp_schemas(scale=1, seed=SEED)
        pipeline = Pipeline(env.settings(), load_mapping("transforms.mcp_manager:MAPPING"))
        pipeline.start()
        try:
            wait_for(lambda: _backfill_applied(env), 120, what="the backfill")
        finally:
            pipeline.shutdown()
        yield env


def _password_of(hashed: str) -> str:
    """The generator's hashes are of ``password-<i>``, ``i`` the hash's place in its pool."""
    bcrypts, argons = hash_pool(SEED)
    for pool in (bcrypts, argons):
        if hashed in pool:
            return f"password-{pool.index(hashed)}"
    raise AssertionError(f"not a generated hash: {hashed[:12]}…")


def _legacy_user(env: Env, prefix: str, active: bool = True) -> tuple[str, str]:
    with env.legacy_conn() as c:
        row: Any = c.execute(
            'SELECT email, hashed_password FROM "user" WHERE hashed_password LIKE %s '
            "AND is_active = %s ORDER BY id LIMIT 1",
            (prefix + "%", active),
        ).fetchone()
    assert row, f"the generator made no {'active' if active else 'inactive'} {prefix} user"
    return row[0], _password_of(row[1])


@pytest.mark.parametrize("scheme", ["$2b$", "$argon2id$"])
def test_migrated_user_signs_in_and_a_wrong_password_is_refused(migrated: Env, scheme: str) -> None:
    email, password = _legacy_user(migrated, scheme)
    ok = migrated.better_auth("sign-in", email, password)
    assert ok["exit"] == 0, ok
    with migrated.legacy_conn() as c:
        legacy_id = c.execute('SELECT id FROM "user" WHERE email = %s', (email,)).fetchone()[0]  # type: ignore[index]
    assert ok["userId"] == str(legacy_id)  # the same user, not a new one

    wrong = migrated.better_auth("sign-in", email, password + "x")
    assert wrong["exit"] == 1 and wrong["code"] == "INVALID_EMAIL_OR_PASSWORD", wrong


def test_inactive_legacy_user_is_banned_on_the_target(migrated: Env) -> None:
    email, password = _legacy_user(migrated, "$2b$", active=False)
    refused = migrated.better_auth("sign-in", email, password)
    assert refused["exit"] == 1 and refused["code"] == "BANNED_USER", refused


def test_sign_up_on_the_target_makes_a_legacy_compatible_user(migrated: Env) -> None:
    made = migrated.better_auth("sign-up", "New.Person@Example.com", "a-long-password", "New P")
    assert made["exit"] == 0, made
    uuid.UUID(made["userId"])  # the legacy id column is a uuid
    with migrated.target_conn() as c:
        row: Any = c.execute(
            'SELECT u.email, a.password FROM "user" u JOIN account a ON a.user_id = u.id '
            "AND a.provider_id = 'credential' WHERE u.id = %s",
            (made["userId"],),
        ).fetchone()
    assert row[0] == "new.person@example.com"
    assert row[1].startswith("$2b$") and bcrypt.checkpw(b"a-long-password", row[1].encode())
    again = migrated.better_auth("sign-in", "new.person@example.com", "a-long-password")
    assert again["exit"] == 0, again


# What Better-Auth's API-key plugin stores for a key, written with the same utilities it uses
# (@better-auth/api-key's defaultKeyHasher: SHA-256, base64url without padding).
_BETTER_AUTH_KEY_HASH = """
import { createHash } from "@better-auth/utils/hash";
import { base64Url } from "@better-auth/utils/base64";
const hash = await createHash("SHA-256").digest(new TextEncoder().encode(process.argv[1]));
process.stdout.write(base64Url.encode(new Uint8Array(hash), { padding: false }));
"""


def test_migrated_api_keys_are_stored_as_better_auth_hashes_them(migrated: Env) -> None:
    drizzle = Path(__file__).resolve().parents[2] / "transforms" / "mcp_manager" / "drizzle"
    plain = "mcp_live_✓_0123456789"
    node = subprocess.run(
        ["node", "--input-type=module", "-e", _BETTER_AUTH_KEY_HASH, plain],
        cwd=drizzle,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # A FastAPI backend keeps hashlib.sha256(key).hexdigest(): the same digest, another spelling.
    assert sha256_hex_to_base64url(hashlib.sha256(plain.encode()).hexdigest()) == node.stdout

    with migrated.legacy_conn() as c:
        legacy = dict(c.execute("SELECT id::text, hashed_key FROM api_key").fetchall())
    with migrated.target_conn() as c:
        target = dict(c.execute("SELECT id, key FROM apikey").fetchall())
    assert legacy and set(target) == set(legacy)
    for key_id, digest in legacy.items():
        assert target[key_id] == sha256_hex_to_base64url(digest)


def _transform(env: Env, direction: str, table: str, ids: list[str]) -> None:
    """Rows of ``table`` through the mapping's transforms into the other database, as live sync
    writes them (forward: legacy → target; reverse, after a cutover: target → legacy)."""
    mapping = load_mapping("transforms.mcp_manager:MAPPING")
    t = getattr(mapping, direction).tables[table]
    src, dst = (env.legacy, env.target) if direction == "forward" else (env.target, env.legacy)
    with psycopg.connect(src.conninfo()) as sc, pg.connect(dst.conninfo()) as dc:
        rows = sc.cursor(row_factory=dict_row).execute(
            f"SELECT * FROM {table} WHERE id::text = ANY(%s)", (ids,)
        )
        batch = Batch()
        for row in rows:
            for op in t(RowChange("insert", t.source, new=row, key_columns=t.source_key)):
                batch.add(op)
        Sink(dc).flush(batch)
        dc.commit()


def _legacy_verifies(env: Env, plain: str) -> Any:
    """The FastAPI backend's check: the key's SHA-256 hex digest, not expired; its row or None."""
    with env.legacy_conn() as c:
        return c.execute(
            "SELECT user_id::text, scopes, prefix FROM api_key WHERE hashed_key = %s"
            " AND (expires_at IS NULL OR expires_at > now())",
            (hashlib.sha256(plain.encode()).hexdigest(),),
        ).fetchone()


def test_api_keys_verify_through_better_auth_after_migration_and_rollback(migrated: Env) -> None:
    # Keys made the way the FastAPI backend makes them (the plaintext known here): SHA-256 hex
    # digest, the first characters as the prefix, scopes as "resource:action".
    keys = {name: f"mcp_{name}_{secrets.token_urlsafe(24)}" for name in ("live", "old", "off")}
    ids = {name: str(uuid.uuid4()) for name in keys}
    with migrated.legacy_conn() as c:
        user_id = str(
            c.execute('SELECT id FROM "user" WHERE is_active ORDER BY id LIMIT 1').fetchone()[0]
        )  # type: ignore[index]
        for name, plain in keys.items():
            c.execute(
                "INSERT INTO api_key (id, user_id, name, hashed_key, prefix, scopes, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    ids[name], user_id, name, hashlib.sha256(plain.encode()).hexdigest(),
                    plain[:12], Json(["servers:read", "servers:write", "audit:read"]),
                    datetime.now(UTC) - timedelta(days=1) if name == "old" else None,
                ),
            )  # fmt: skip
    _transform(migrated, "forward", "public.api_key", list(ids.values()))
    with migrated.target_conn() as c:  # disabled on the target, as an admin would
        c.execute("UPDATE apikey SET enabled = false WHERE id = %s", (ids["off"],))

    ops: list[dict[str, Any]] = [
        {"verify": keys["live"], "permissions": {"servers": ["read", "write"]}},
        {"verify": keys["live"], "permissions": {"servers": ["delete"]}},
        {"verify": keys["old"]},
        {"verify": keys["off"]},
        {"create": "made after cutover", "userId": user_id, "permissions": {"servers": ["read"]}},
    ]
    got = migrated.better_auth("api-keys", json.dumps(ops))
    assert got["exit"] == 0, got
    live, lacking, expired, disabled, made = got["answers"]
    assert live["valid"] and live["key"]["userId"] == user_id, live
    assert live["key"]["permissions"] == {"servers": ["read", "write"], "audit": ["read"]}
    assert not lacking["valid"], lacking  # a permission the legacy scopes never gave
    assert not expired["valid"] and not disabled["valid"], (expired, disabled)
    assert made["ok"] and made["key"], made

    # Rollback: the key Better-Auth made goes back through the reverse transform and verifies
    # the legacy way; the key disabled on the target goes back expired, and does not.
    _transform(migrated, "reverse", "public.apikey", [made["id"], ids["off"]])
    row = _legacy_verifies(migrated, made["key"])
    assert row is not None and row[0] == user_id and row[1] == ["servers:read"], row
    assert made["key"].startswith(row[2])
    assert _legacy_verifies(migrated, keys["off"]) is None
    assert _legacy_verifies(migrated, keys["live"]) is not None
