"""The target's own migrations while the forward stream runs (the Drizzle team ships too).

The forward apply compares the catalog of the tables the mapping writes with the one it stored
in ``replicator.catalog_seen``, at most every :data:`EVERY_S` seconds (on a heartbeat), and
records a difference as a schema change seen ``via catalog`` on the ``target`` side, judged by
the same rules ``replicator check`` applies to the target (``mapping_problems``). The stored
catalog is updated in the same statement that claims the change, so of several workers only one
records it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg

from replicator.check_mapping import live_catalog
from replicator.drift.judge import judge_target
from replicator.drift.store import record
from transforms.api import Catalog, Direction

EVERY_S = 5.0


def snapshot(direction: Direction, catalog: Catalog) -> dict[str, dict[str, list[Any]]]:
    """The mapped target tables' columns: type, NOT NULL, has a default."""
    return {
        t: {c: [s.type, s.not_null, s.has_default] for c, s in sorted(catalog.get(t, {}).items())}
        for t in sorted(direction.target_tables)
    }


def describe(before: dict[str, Any], after: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(changed tables, what changed as DDL would say it)."""
    tables: list[str] = []
    said: list[str] = []
    for t in sorted(set(before) | set(after)):
        old, new = before.get(t) or {}, after.get(t) or {}
        if old == new:
            continue
        tables.append(t)
        for c in new:
            if c not in old:
                typ, not_null, default = new[c]
                extra = (" NOT NULL" if not_null else "") + (" DEFAULT …" if default else "")
                said.append(f"ALTER TABLE {t} ADD COLUMN {c} {typ}{extra}")
            elif old[c] != new[c]:
                said.append(f"ALTER TABLE {t} ALTER COLUMN {c}: {old[c]} → {new[c]}")
        said += [f"ALTER TABLE {t} DROP COLUMN {c}" for c in old if c not in new]
    return tables, said


class TargetWatch:
    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self._next = 0.0

    def tick(self, lsn: int, partition: int) -> None:
        if self.worker.dir_name != "fwd" or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + EVERY_S
        conn: psycopg.Connection[Any] = self.worker.conn
        direction: Direction = self.worker.direction
        catalog = live_catalog(conn)
        now = snapshot(direction, catalog)
        key = f"{self.worker.s.name}:target"
        row = conn.execute(
            "SELECT columns FROM replicator.catalog_seen WHERE name = %s", (key,)
        ).fetchone()
        if row is None:  # the first look: what the target is now is the reference
            conn.execute(
                "INSERT INTO replicator.catalog_seen (name, columns) VALUES (%s, %s)"
                " ON CONFLICT DO NOTHING",
                (key, json.dumps(now)),
            )
            return
        if row[0] == now:
            return
        claimed = conn.execute(
            "UPDATE replicator.catalog_seen SET columns = %s, seen_at = now()"
            " WHERE name = %s AND columns = %s::jsonb RETURNING 1",
            (json.dumps(now), key, json.dumps(row[0])),
        ).fetchone()
        if claimed is None:
            return  # another worker recorded it
        tables, said = describe(row[0], now)
        for i, table in enumerate(tables):
            ddl = {
                "tag": "TARGET CATALOG CHANGED",
                "side": "target",
                "table": table,
                "query": "; ".join(s for s in said if f" {table} " in s),
            }
            judged = judge_target(direction, ddl, catalog)
            record(
                conn,
                topic=self.worker.topic,
                partition=partition,
                commit_lsn=lsn,
                seq=-(1 << 30) - i,  # below relation records' and DDL records' seq
                side="target",
                via="catalog",
                ddl=ddl,
                judged=judged,
            )
