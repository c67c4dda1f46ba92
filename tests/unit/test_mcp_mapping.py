"""The shipped MCP Manager mapping: round trips (hypothesis), validation, edge cases.

Forward ops are applied to an in-memory database (``transforms.testing.InMemoryStore``, the
helper the docs offer mapping authors); its rows are then completed with NULLs for every column
the Drizzle snapshot lists (as a real row change would carry them), run through the reverse
mapping into a second one, and compared with the legacy rows we started from.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.api import Direction, RowChange
from transforms.mcp_manager import MAPPING
from transforms.mcp_manager.target_schema import load_drizzle_snapshot
from transforms.testing import InMemoryStore

LEGACY_KEYS = {
    "public.user": ("id",),
    "public.user_profile": ("user_id",),
    "public.organization": ("id",),
    "public.organization_member": ("organization_id", "user_id"),
    "public.mcp_server": ("id",),
    "public.api_key": ("id",),
    "public.audit_log": ("id",),
}
# Parents first, as a backfill would load them (a Patch needs its row to exist).
TARGET_ORDER = (
    "public.user",
    "public.account",
    "public.organization",
    "public.member",
    "public.mcp_server",
    "public.apikey",
    "public.audit_log",
)
SNAPSHOT = load_drizzle_snapshot()
TARGET_COLUMNS = {name: tuple(t["columns"]) for name, t in SNAPSHOT["tables"].items()}
TARGET_KEYS = {
    name: tuple(c for c, spec in t["columns"].items() if spec.get("primaryKey"))
    for name, t in SNAPSHOT["tables"].items()
}


def run(
    direction: Direction, changes: Iterable[RowChange], db: InMemoryStore | None = None
) -> InMemoryStore:
    return (InMemoryStore() if db is None else db).run(direction, changes)


def inserts(
    rows: Mapping[str, list[dict[str, Any]]], keys: Mapping[str, tuple[str, ...]]
) -> list[RowChange]:
    return [
        RowChange("insert", table, new=r, key_columns=keys[table])
        for table in rows
        for r in rows[table]
    ]


def as_db(rows: Mapping[str, list[dict[str, Any]]]) -> InMemoryStore:
    return InMemoryStore.of(MAPPING.reverse, rows)


def target_rows(db: InMemoryStore) -> dict[str, list[dict[str, Any]]]:
    """The target rows as the log would carry them: every column, NULL where nothing wrote."""
    return {t: db.rows(t, TARGET_COLUMNS[t]) for t in TARGET_ORDER}


def round_trip(rows: Mapping[str, list[dict[str, Any]]]) -> InMemoryStore:
    target = InMemoryStore().load(MAPPING.forward, rows)
    return InMemoryStore().load(MAPPING.reverse, target_rows(target))


# ---- strategies ------------------------------------------------------------------------------

# PostgreSQL text holds neither NUL nor lone surrogates.
CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
TEXT = st.text(CHARS, max_size=12)
TZ = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
WHEN = st.datetimes(datetime(1971, 1, 1), datetime(2099, 1, 1), timezones=TZ)
EMAIL = st.from_regex(r"[a-z0-9._+äöøç-]{1,10}@[a-z0-9-]{1,8}\.[a-z]{2,5}", fullmatch=True)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
HASH = st.sampled_from(
    [
        "$2b$12$abcdefghijklmnopqrstuv0123456789ABCDEFGHIJKLMNOPQRSTU",
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
    ]
) | TEXT.filter(bool)
SCOPE = st.from_regex(r"[a-z]{1,5}:[a-z*]{1,5}", fullmatch=True)
BIG_ID = st.integers(1, 2**63 - 1)


def opt(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | s


@st.composite
def legacy_rows(draw: st.DrawFn) -> dict[str, list[dict[str, Any]]]:
    user_ids = draw(st.lists(st.uuids(), min_size=1, max_size=3, unique=True))
    emails = draw(st.lists(EMAIL, min_size=len(user_ids), max_size=len(user_ids), unique=True))
    users = [
        {
            "id": uid,
            "email": email,
            "full_name": draw(opt(st.text(CHARS, min_size=1, max_size=20))),
            "hashed_password": draw(HASH),
            "is_active": draw(st.booleans()),
            "is_superuser": draw(st.booleans()),
            "created_at": draw(WHEN),
        }
        for uid, email in zip(user_ids, emails, strict=True)
    ]
    profile = st.tuples(opt(TEXT), opt(TEXT), opt(st.text(CHARS, max_size=64)))
    profiles = [
        {"user_id": uid, "avatar_url": a, "bio": b, "timezone": tz}
        for uid in user_ids
        if draw(st.booleans())
        # An all-NULL profile is the same as none (tested on its own below).
        for a, b, tz in [draw(profile.filter(lambda p: any(v is not None for v in p)))]
    ]
    org_ids = draw(st.lists(st.uuids(), min_size=1, max_size=2, unique=True))
    orgs = [
        {"id": o, "name": draw(TEXT), "slug": f"s-{o}", "created_at": draw(WHEN)} for o in org_ids
    ]
    members = [
        {
            "organization_id": o,
            "user_id": u,
            "role": draw(st.sampled_from(["owner", "admin", "member"])),
            "created_at": draw(WHEN),
        }
        for o in org_ids
        for u in user_ids
        if draw(st.booleans())
    ]
    servers = [
        {
            "id": sid,
            "organization_id": draw(st.sampled_from(org_ids)),
            "name": draw(TEXT),
            "transport": draw(st.sampled_from(["stdio", "sse", "streamable_http"])),
            "command": draw(opt(TEXT)),
            "args": draw(opt(st.lists(TEXT, max_size=3))),
            "url": draw(opt(TEXT)),
            "config": draw(JSON),
            "enabled": draw(st.booleans()),
            "created_by": draw(st.sampled_from([*user_ids, None])),
            "created_at": draw(WHEN),
            "updated_at": draw(WHEN),
        }
        for sid in draw(st.lists(BIG_ID, max_size=2, unique=True))
    ]
    keys = [
        {
            "id": kid,
            "user_id": draw(st.sampled_from(user_ids)),
            "name": draw(TEXT),
            # hashlib.sha256(key).hexdigest(), as the legacy backend stores it
            "hashed_key": draw(st.binary(min_size=32, max_size=32)).hex(),
            "prefix": draw(st.text(CHARS, max_size=32)),
            "scopes": draw(st.lists(SCOPE, max_size=4)),
            "expires_at": draw(opt(WHEN)),
            "created_at": draw(WHEN),
        }
        for kid in draw(st.lists(st.uuids(), max_size=2, unique=True))
    ]
    audit = [
        {
            "id": aid,
            "organization_id": draw(opt(st.uuids())),
            "user_id": draw(opt(st.uuids())),
            "action": draw(TEXT),
            "target": draw(opt(TEXT)),
            "metadata": draw(JSON),
            "created_at": draw(WHEN),
        }
        for aid in draw(st.lists(BIG_ID, max_size=2, unique=True))
    ]
    return {
        "public.organization": orgs,
        "public.user": users,
        "public.user_profile": profiles,
        "public.organization_member": members,
        "public.mcp_server": servers,
        "public.api_key": keys,
        "public.audit_log": audit,
    }


FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- round trips -----------------------------------------------------------------------------


@FAST
@given(legacy_rows())
def test_reverse_of_forward_is_identity(rows: dict[str, list[dict[str, Any]]]) -> None:
    assert round_trip(rows) == as_db(rows)


@FAST
@given(legacy_rows())
def test_deleting_every_row_empties_both_sides(rows: dict[str, list[dict[str, Any]]]) -> None:
    target = run(MAPPING.forward, inserts(rows, LEGACY_KEYS))
    deletes = [
        RowChange("delete", t, old={k: r[k] for k in LEGACY_KEYS[t]}, key_columns=LEGACY_KEYS[t])
        for t in rows
        for r in rows[t]
    ]
    assert run(MAPPING.forward, deletes, target) == InMemoryStore()
    full = target_rows(run(MAPPING.forward, inserts(rows, LEGACY_KEYS)))
    legacy = run(MAPPING.reverse, inserts(full, TARGET_KEYS))
    # Under REPLICA IDENTITY FULL (which member needs) the old row is the whole row.
    back = [
        RowChange("delete", t, old=r, key_columns=TARGET_KEYS[t]) for t in full for r in full[t]
    ]
    assert run(MAPPING.reverse, back, legacy) == InMemoryStore()


@FAST
@given(legacy_rows(), WHEN)
def test_unchanged_toast_config_survives_updates(
    rows: dict[str, list[dict[str, Any]]], when: datetime
) -> None:
    servers, profiles = rows["public.mcp_server"], rows["public.user_profile"]
    target = run(MAPPING.forward, inserts(rows, LEGACY_KEYS))
    updates = []
    for s in servers:  # the update leaves config alone: pgoutput does not send it
        s.update(name=s["name"] + "!", updated_at=when)
        new = {k: v for k, v in s.items() if k != "config"}
        updates.append(
            RowChange(
                "update",
                "public.mcp_server",
                new=new,
                unchanged=frozenset({"config"}),
                key_columns=("id",),
            )
        )
    for p in profiles:  # and here the bio is unchanged while the time zone changes
        p["timezone"] = "Europe/Paris"
        new = {k: v for k, v in p.items() if k != "bio"}
        updates.append(
            RowChange(
                "update",
                "public.user_profile",
                new=new,
                unchanged=frozenset({"bio"}),
                key_columns=("user_id",),
            )
        )
    run(MAPPING.forward, updates, target)
    assert run(MAPPING.reverse, inserts(target_rows(target), TARGET_KEYS)) == as_db(rows)


def test_all_null_profile_is_the_same_as_no_profile() -> None:
    uid = uuid.uuid4()
    user: dict[str, Any] = {
        "id": uid,
        "email": "a@b.co",
        "full_name": None,
        "hashed_password": "h",
        "is_active": True,
        "is_superuser": False,
        "created_at": datetime(2024, 1, 1, tzinfo=UTC),
    }
    rows = {
        "public.user": [user],
        "public.user_profile": [
            {"user_id": uid, "avatar_url": None, "bio": None, "timezone": None}
        ],
    }
    assert round_trip(rows) == as_db({"public.user": [user]})
