"""Removing what a pipeline left in the databases (and, on request, in Kafka) once the migration
is over: after a final cutover, when rollback is no longer wanted, or to abandon a migration.

What costs the databases something goes by default: the replication slots (a slot nobody reads
retains WAL until the disk fills), the publications, and the replication origins (cluster-wide,
each one holds one of ``max_replication_slots``' tracking states even after its database is
gone). The ``replicator`` schema (the cutover journal, offsets, dead-letter bookkeeping) and the
Kafka topics (the log) are records an operator may still want, so they go only when asked.

Nothing is removed while a process still uses it: a slot with a reader or an origin held by an
apply session stops the whole teardown before anything is dropped, naming who holds it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from connectors import pg
from connectors.pgsource import ident
from replicator.apply.session import ORIGIN_PREFIX
from replicator.config import DatabaseSettings, Settings
from replicator.drift.trigger import trigger_names
from replicator.errors import ReplicatorError


@dataclass(frozen=True)
class Item:
    """One thing a teardown removes (or, in a dry run, would remove)."""

    kind: str  # slot, publication, origin, event_trigger, schema, topic
    name: str
    where: str  # "legacy", "target" or "kafka"


def plan(s: Settings, *, drop_state: bool = False, drop_topics: bool = False) -> list[Item]:
    """What exists and would go; raises if a running process still uses any of it."""
    items: list[Item] = []
    busy: list[str] = []
    for where, db in (("legacy", s.source), ("target", s.target)):
        with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
            items += _database_items(conn, s, where, drop_state, busy)
    if busy:
        raise ReplicatorError(
            "still in use: " + "; ".join(busy),
            hint="stop `replicator run` (or capture and apply) everywhere, then run teardown again",
        )
    if drop_topics:
        from connectors.kafka_io import existing_topics

        wanted = [t for d in ("fwd", "rev") for t in s.topics(d)]
        present = existing_topics(s.kafka.bootstrap_servers, **s.kafka.client_options())
        items += [Item("topic", t, "kafka") for t in wanted if t in present]
    return items


def teardown(s: Settings, items: list[Item]) -> None:
    """Remove ``items`` (from :func:`plan`): the databases' first, then the topics."""
    for where, db in (("legacy", s.source), ("target", s.target)):
        mine = [i for i in items if i.where == where]
        if mine:
            with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
                for item in mine:
                    _drop(conn, item, db)
    topics = [i.name for i in items if i.kind == "topic"]
    if topics:
        from connectors.kafka_io import delete_topics

        delete_topics(s.kafka.bootstrap_servers, topics, **s.kafka.client_options())


def _database_items(
    conn: psycopg.Connection[Any],
    s: Settings,
    where: str,
    drop_state: bool,
    busy: list[str],
) -> list[Item]:
    items: list[Item] = []
    # Either direction's slot may sit on either side after cutovers and rollbacks: look for both.
    for d in ("fwd", "rev"):
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s AND database = "
            "current_database()",
            (s.slot(d),),
        ).fetchone()
        if row is not None:
            if row[0] is not None:
                busy.append(f"slot {s.slot(d)} on {where} is read by process {row[0]}")
            items.append(Item("slot", s.slot(d), where))
    for d in ("fwd", "rev"):
        if conn.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", (s.publication_for(d),)
        ).fetchone():
            items.append(Item("publication", s.publication_for(d), where))
    for (name,) in conn.execute(
        "SELECT evtname FROM pg_event_trigger WHERE evtname = ANY(%s) ORDER BY evtname",
        (list(trigger_names(s.name)),),
    ).fetchall():
        items.append(Item("event_trigger", name, where))  # the DDL capture (replicator.drift)
    own = re.compile(re.escape(f"{ORIGIN_PREFIX}{s.name}_") + r"(fwd|rev)_\d+")
    for (name,) in conn.execute(
        "SELECT roname FROM pg_replication_origin WHERE starts_with(roname, %s) ORDER BY roname",
        (f"{ORIGIN_PREFIX}{s.name}_",),
    ).fetchall():
        if own.fullmatch(name):  # not another pipeline's whose name starts with this one's
            items.append(Item("origin", name, where))
    if (
        drop_state
        and conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'replicator'").fetchone()
    ):
        aside = (
            conn.execute(
                "SELECT string_agg(table_name || ' ' || name, ', ' ORDER BY table_name, name)"
                " FROM replicator.set_aside"
            ).fetchone()
            if _has_set_aside(conn)
            else None
        )
        if aside is not None and aside[0]:
            # Their definitions live only in the state: dropping it would lose the indexes.
            raise ReplicatorError(
                f"{where} lacks indexes or foreign keys a backfill set aside: {aside[0]};"
                " their definitions are in the replicator schema --drop-state would drop",
                hint="run `replicator run` (or `replicator apply`) until `replicator status`"
                " lists none set aside, then run teardown again",
            )
        items.append(Item("schema", "replicator", where))
    return items


def _has_set_aside(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('replicator.set_aside') IS NOT NULL").fetchone()
    return bool(row and row[0])


# Per kind: the statement, and how the name goes into it.
_DROP: dict[str, tuple[str, Callable[[str], sql.Composable]]] = {
    "slot": (
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}",
        sql.Literal,
    ),
    "publication": ("DROP PUBLICATION IF EXISTS {}", sql.Identifier),
    "origin": (
        "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = {}",
        sql.Literal,
    ),
    "event_trigger": ("DROP EVENT TRIGGER IF EXISTS {}", sql.Identifier),
    "schema": ("DROP SCHEMA IF EXISTS {} CASCADE", sql.Identifier),
}


def _drop(conn: psycopg.Connection[Any], item: Item, db: DatabaseSettings) -> None:
    template, quote = _DROP[item.kind]
    try:
        conn.execute(sql.SQL(template).format(quote(item.name)))
    except psycopg.errors.ObjectInUse as exc:
        raise ReplicatorError(
            f"{item.kind} {item.name} on {item.where} is in use: {exc.diag.message_primary}",
            hint="a replicator process started meanwhile: stop it, then run teardown again",
        ) from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ReplicatorError(
            f"cannot drop {item.kind} {item.name} on {item.where} ({db.masked()}): "
            f"{exc.diag.message_primary}",
            hint=_grant_hint(item.kind, db.user),
        ) from None


def _grant_hint(kind: str, user: str) -> str:
    """What lets ``user`` drop a ``kind`` on a server without superuser (docs/managed.md)."""
    role = ident(user)
    if kind == "slot":
        return f"ALTER ROLE {role} REPLICATION; (as a superuser or the provider's admin role)"
    if kind == "origin":
        return (
            f"GRANT EXECUTE ON FUNCTION pg_replication_origin_drop(text) TO {role}; (as a"
            " superuser or the provider's admin role)"
        )
    return "run teardown as the role that created it (its owner), or as a superuser"
