"""The apply worker's database session: foreign-key triggers off, writes tagged with a
replication origin so that the capture of the other direction never echoes them."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from connectors import pg
from replicator.config import DatabaseSettings
from replicator.errors import PermissionDenied
from replicator.roles.grants import replication_role_statement
from replicator.state import ensure_schema

log = logging.getLogger(__name__)

ORIGIN_PREFIX = "replicator_"
# PostgreSQL 15 lets one session use an origin at a time: each worker claims one of these.
ORIGINS_PER_DIRECTION = 32


def origin_name(pipeline: str, direction: str, k: int) -> str:
    return f"{ORIGIN_PREFIX}{pipeline}_{direction}_{k}"


def connect_session(db: DatabaseSettings, pipeline: str, direction: str) -> psycopg.Connection[Any]:
    conn = pg.connect(db.conninfo())
    ensure_schema(conn)
    with pg.translated(db.masked()):
        try:
            set_replica_role(conn, db, f"the apply ({direction})")
        except PermissionDenied:
            conn.close()
            raise
        conn.commit()
        _tag_origin(conn, pipeline, direction)
    return conn


def set_replica_role(conn: psycopg.Connection[Any], db: DatabaseSettings, who: str) -> None:
    """Foreign-key triggers off, as PostgreSQL's own apply worker does: ordering across tables
    inside a batch can then never fail it. It is also what lets a write into a fenced side
    pass (the fence is a trigger). Without it the apply would work differently — foreign
    keys on, a fenced side refusing it — so it refuses and says what to grant, rather than
    degrade unseen."""
    try:
        conn.execute("SET session_replication_role = replica")
    except psycopg.errors.InsufficientPrivilege:
        conn.rollback()
        facts = conn.execute(
            "SELECT current_user, current_setting('server_version_num')::int"
        ).fetchone()
        role, version = (str(facts[0]), int(facts[1])) if facts else (db.user, 150000)
        raise PermissionDenied(
            f"{db.masked()}: {who} may not set session_replication_role: foreign-key triggers"
            " would stay on and a fenced side would refuse its writes",
            hint="run as a superuser (or the provider's admin role): "
            f"{replication_role_statement(role, version)} — `replicator check` lists every"
            " grant (docs/managed.md)",
        ) from None


def _tag_origin(conn: psycopg.Connection[Any], pipeline: str, direction: str) -> None:
    """Tag this session's writes with a replication origin: the capture of the other
    direction skips them, a second guard against echo."""
    for k in range(ORIGINS_PER_DIRECTION):
        name = origin_name(pipeline, direction, k)
        try:
            conn.execute(
                "SELECT pg_replication_origin_create(%s) WHERE NOT EXISTS "
                "(SELECT 1 FROM pg_replication_origin WHERE roname = %s)",
                (name, name),
            )
            conn.execute("SELECT pg_replication_origin_session_setup(%s)", (name,))
            conn.commit()
            return
        except psycopg.errors.InsufficientPrivilege:
            # A documented degraded mode (docs/managed.md): the echo guard is the slot order
            # alone. Said at every start, and `replicator check` fails on it.
            conn.rollback()
            log.warning(
                "apply role may not use replication origins; echo is guarded by the slot order"
                " only (GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text),"
                " pg_replication_origin_session_setup(text) TO the role; `replicator check`)"
            )
            return
        except psycopg.Error:
            conn.rollback()  # in use by another worker: try the next one
    log.warning(
        "no free replication origin for %s; echo is guarded by the slot order only "
        "(each origin in use holds one of max_replication_slots: raise it on the target, or "
        "drop unused ones with pg_replication_origin_drop)",
        pipeline,
    )
