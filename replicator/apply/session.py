"""The apply worker's database session: foreign-key triggers off, writes tagged with a
replication origin so that the capture of the other direction never echoes them."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from connectors import pg
from replicator.config import DatabaseSettings
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
            # Foreign-key triggers off, as PostgreSQL's own apply worker does: ordering
            # across tables inside a batch can then never fail it.
            conn.execute("SET session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            conn.rollback()
            log.warning(
                "apply role may not set session_replication_role; foreign keys stay on "
                "(grant superuser, or run `replicator check` for the fix)"
            )
        conn.commit()
        _tag_origin(conn, pipeline, direction)
    return conn


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
            conn.rollback()
            log.warning(
                "apply role may not use replication origins; echo is guarded by the slot order only"
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
