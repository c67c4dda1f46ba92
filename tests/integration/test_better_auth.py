"""Migrated users sign in through the real Better-Auth instance (Node, Drizzle adapter).

The legacy backend hashed with bcrypt and, later, argon2id; the replicator moves the hashes as
they are into Better-Auth's credential accounts, and transforms/mcp_manager/drizzle/auth.ts
verifies both. A user who signs up on the target gets a UUID id and a bcrypt hash, which the
legacy schema accepts if the migration is rolled back.
"""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import psycopg
import pytest

from replicator.runtime.pipeline import Pipeline
from tests.support import Env, Services, isolated_env, wait_for
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
