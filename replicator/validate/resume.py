"""Resumable full validation: each table group found clean is recorded as it finishes, so that
`validate --resume` after an interruption (Ctrl-C, kill -9, a restart) checks only the groups
the interrupted run had not finished; a group checked in key ranges records how far it was
found clean after each range, and is continued from there.

Why re-using a group is sound: a group found clean at time t proves its target tables equalled
the transformed legacy data at t; live sync keeps them so. The resumed run keeps the
interrupted run's start and its changes-topic offsets (noted before anything was read), so a
later `--fast` from it re-checks every change since the earliest group was read. A group with
any candidate difference is never recorded: it is checked again.

Records live in ``replicator.validation_progress`` on the target, one row per finished group
plus one (``grp = ''``) for the run itself; a run that stores its report deletes its rows.

Tests only: ``REPLICATOR_VALIDATE_FAULT=sigkill-after:<n>`` kills the process with SIGKILL once
``n`` groups are recorded, ``sigkill-after-ranges:<n>`` once ``n`` key ranges are (what kill -9
does mid-run, at a known point; as
replicator.cutover.faults does for a switch). Nothing happens unless the variable is set.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from connectors import pg
from replicator.config import DatabaseSettings
from replicator.validate.report import TableResult

FAULT_ENV = "REPLICATOR_VALIDATE_FAULT"
PROGRESS_SQL = """
CREATE TABLE IF NOT EXISTS replicator.validation_progress (
    token       text        NOT NULL,
    grp         text        NOT NULL,  -- the group's tables, comma-separated; '' the run
    tables      text[],                -- the run's --table scope (NULL: every table)
    started_at  timestamptz NOT NULL,
    log_offsets jsonb,
    results     jsonb       NOT NULL DEFAULT '[]',
    checked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (token, grp)
)
"""
# A group checked in part (key ranges, validate/insql/passes.ranged_pass): clean through this
# key after so many ranges; NULL for a group checked to its end.
THROUGH_SQL = """
ALTER TABLE replicator.validation_progress
    ADD COLUMN IF NOT EXISTS through text,
    ADD COLUMN IF NOT EXISTS ranges  integer NOT NULL DEFAULT 0
"""


@dataclass
class Interrupted:
    """An unfinished full run: its token, start, offsets and the groups it found clean."""

    token: str
    started_at: datetime
    log_offsets: dict[int, int] | None
    done: dict[tuple[str, ...], list[TableResult]] = field(default_factory=dict)
    # groups found clean through a key: (key, results so far, ranges checked)
    partial: dict[tuple[str, ...], tuple[str, list[TableResult], int]] = field(default_factory=dict)


def find_interrupted(conn: psycopg.Connection[Any], tables: list[str] | None) -> Interrupted | None:
    """The latest unfinished full run of the same scope, or None."""
    ensure(conn)
    row = conn.execute(
        "SELECT token, started_at, log_offsets FROM replicator.validation_progress"
        " WHERE grp = '' AND tables IS NOT DISTINCT FROM %s::text[]"
        " ORDER BY started_at DESC LIMIT 1",
        (tables,),
    ).fetchone()
    if row is None:
        return None
    offsets = row[2] if row[2] is None or isinstance(row[2], dict) else json.loads(row[2])
    found = Interrupted(
        str(row[0]),
        row[1],
        None if offsets is None else {int(p): int(o) for p, o in offsets.items()},
    )
    for grp, results, through, ranges in conn.execute(
        "SELECT grp, results, through, ranges FROM replicator.validation_progress"
        " WHERE token = %s AND grp <> ''",
        (found.token,),
    ).fetchall():
        got = [TableResult(**r) for r in results]
        if through is None:
            found.done[tuple(str(grp).split(","))] = got
        else:
            found.partial[tuple(str(grp).split(","))] = (str(through), got, int(ranges))
    return found


def ensure(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('replicator.validation_progress'))")
        conn.execute(PROGRESS_SQL)
        conn.execute(THROUGH_SQL)


class Checkpoints:
    """Records the clean groups of one full run, on a session of its own (the run's sessions
    are inside their snapshots; groups finish on two threads)."""

    def __init__(
        self,
        db: DatabaseSettings,
        *,
        token: str | None,
        tables: list[str] | None,
        started_at: datetime,
        log_offsets: dict[int, int] | None,
    ) -> None:
        self.db = db
        self.token = token or uuid.uuid4().hex[:16]
        self._lock = threading.Lock()
        self._recorded = 0
        self._ranges = 0
        self._fault = os.environ.get(FAULT_ENV, "")
        self._conn = pg.connect(db.conninfo(), autocommit=True)
        with pg.translated(db.masked()):
            ensure(self._conn)
            self._conn.execute(
                "INSERT INTO replicator.validation_progress (token, grp, tables, started_at,"
                " log_offsets) VALUES (%s, '', %s, %s, %s) ON CONFLICT DO NOTHING",
                (
                    self.token,
                    tables,
                    started_at,
                    None
                    if log_offsets is None
                    else Jsonb({str(p): o for p, o in log_offsets.items()}),
                ),
            )

    def clean(self, group: tuple[str, ...], results: list[TableResult]) -> None:
        with self._lock, pg.translated(self.db.masked()):
            self._conn.execute(
                "INSERT INTO replicator.validation_progress (token, grp, started_at, results)"
                " VALUES (%s, %s, now(), %s) ON CONFLICT (token, grp) DO UPDATE"
                " SET results = excluded.results, through = NULL, checked_at = now()",
                (self.token, ",".join(group), Jsonb([asdict(r) for r in results])),
            )
            self._recorded += 1
            if self._fault == f"sigkill-after:{self._recorded}":
                os.kill(os.getpid(), signal.SIGKILL)

    def range_clean(
        self, group: tuple[str, ...], through: str, results: list[TableResult], ranges: int
    ) -> None:
        """The group is clean through the key ``through`` (its ranges so far)."""
        with self._lock, pg.translated(self.db.masked()):
            self._conn.execute(
                "INSERT INTO replicator.validation_progress (token, grp, started_at, results,"
                " through, ranges) VALUES (%s, %s, now(), %s, %s, %s) ON CONFLICT (token, grp)"
                " DO UPDATE SET results = excluded.results, through = excluded.through,"
                " ranges = excluded.ranges, checked_at = now()",
                (self.token, ",".join(group), Jsonb([asdict(r) for r in results]), through, ranges),
            )
            self._ranges += 1
            if self._fault == f"sigkill-after-ranges:{self._ranges}":
                os.kill(os.getpid(), signal.SIGKILL)

    def finish(self) -> None:
        """The run stored its report: nothing is left to resume."""
        with self._lock, pg.translated(self.db.masked()):
            self._conn.execute(
                "DELETE FROM replicator.validation_progress WHERE token = %s", (self.token,)
            )

    def close(self) -> None:
        self._conn.close()
