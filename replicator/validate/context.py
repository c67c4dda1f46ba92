"""One validation run's sessions, and what the run learns on the way (shared by its passes)."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from connectors import pg
from connectors.pgsource import emit_message
from replicator.config import Settings
from replicator.validate.canon import Key, TableShape
from replicator.validate.expect import SourceKey
from replicator.validate.insql.catalog import TableInfo
from replicator.validate.insql.plan import GroupPlan, Hashing, KeyRange
from replicator.validate.insql.ranges import RangeAsk
from transforms.api import Direction, TableTransform

__all__ = ["Ctx", "snapshot", "wait_marker_applied"]


@dataclass
class Ctx:
    s: Settings
    direction: Direction
    legacy: psycopg.Connection[Any]
    target: psycopg.Connection[Any]
    shapes: dict[str, TableShape]
    live: bool
    marker_timeout_s: float
    partial: set[str] = field(default_factory=set)  # tables checked by key (--fast)
    provenance: dict[str, dict[Key, set[tuple[str, SourceKey]]]] = field(default_factory=dict)
    lagging: bool = False
    force_python: bool = False  # every table the Python way (tests, comparisons)
    hashing: Hashing = field(default_factory=lambda: Hashing(fast=False))
    # Each server's catalog of the tables the mapping reads and writes, read once.
    legacy_catalog: dict[str, TableInfo] | None = None
    target_catalog: dict[str, TableInfo] | None = None
    # The SQL plan of each group, or why it keeps the Python path (a cutover's verify keeps
    # them across its checks: none is made in the write pause).
    plans: dict[tuple[str, ...], GroupPlan | str] = field(default_factory=dict)
    # A check of one key range per group (validate/insql/ranges.py): what was asked, and per
    # group the range checked or why the group was checked whole, and the plan used.
    range_ask: RangeAsk | None = None
    # A resumable full run checks each group in ranges of this many legacy rows (0: whole), the
    # interrupted run's groups from after the key it had reached: (key, results, ranges).
    full_range_rows: int = 0
    range_start: dict[tuple[str, ...], tuple[str, list[Any], int]] = field(default_factory=dict)
    ranges: dict[tuple[str, ...], tuple[KeyRange | str, GroupPlan | str]] = field(
        default_factory=dict
    )

    def writers(self, table: str) -> list[TableTransform]:
        return [t for t in self.direction.tables.values() if any(w.name == table for w in t.writes)]

    def sync(self) -> bool:
        """Emit a marker on legacy; True once apply has recorded it on every partition."""
        if not self.live or self.lagging:
            return False
        if wait_marker_applied(self.s, self.legacy, self.target, self.marker_timeout_s):
            return True
        self.lagging = True
        return False


def wait_marker_applied(
    s: Settings,
    legacy: psycopg.Connection[Any],
    target: psycopg.Connection[Any],
    timeout_s: float,
) -> bool:
    """Emit a marker on legacy (autocommit sessions); True once apply has recorded it on every
    partition: the target then holds every legacy change committed before the call. Also the
    rendezvous of a parity check (replicator.parity)."""
    marker = str(uuid.uuid4())
    control = {"kind": "marker", "marker": "validate", "id": marker}
    legacy.execute(
        emit_message(legacy.info.server_version, True, "replicator", json.dumps(control))
    )
    topic = s.topic("fwd", "changes")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = target.execute(
            "SELECT (SELECT count(*) FROM replicator.markers"
            " WHERE topic = %s AND marker_id = %s),"
            " (SELECT count(*) FROM replicator.offsets WHERE topic = %s)",
            (topic, marker, topic),
        ).fetchone()
        if row is not None and row[0] >= max(1, row[1]):
            # Our markers are only a rendezvous: do not let them pile up in the table.
            target.execute(
                "DELETE FROM replicator.markers WHERE topic = %s AND marker_id = %s",
                (topic, marker),
            )
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def snapshot(conn: psycopg.Connection[Any], where: str) -> Iterator[None]:
    """One read-only snapshot: a table group is read consistently on each side."""
    with pg.translated(where), conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield
