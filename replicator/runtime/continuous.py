"""Continuous validation in `replicator run` (``[validation] continuous = true``).

A stage of its own walks the mapped target tables in turn, validating each one in full by the
in-database checksums (replicator.validate.run, ``--table``: its catch-up marker, then the
re-checks of rows changed meanwhile), and paces itself to ``rows_per_s`` rows compared per
second on average. Each table's result is recorded in ``replicator.verified_through`` on the
target: the **verified-through point** — every row of the table written on legacy before
``verified_lsn`` (at ``verified_at``, legacy's clock) equals its transform. The point is read
before the table's catch-up marker is emitted, so every change before it was applied when the
table was compared. A table found different keeps its last clean point and records
``outcome = 'different'`` with the keys; the cutover preflight refuses then, and accepts the
points in place of a fresh full validation when every mapped table has a clean, recent one.

The walk restarts from the table checked longest ago, so a restart resumes it.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from connectors import pg
from replicator.config import Settings
from replicator.errors import ReplicatorError
from replicator.validate.report import Report, ensure_runs_table
from transforms.api import MappingSet

log = logging.getLogger(__name__)

VERIFIED_SQL = """
CREATE TABLE IF NOT EXISTS replicator.verified_through (
    table_name   text        PRIMARY KEY,
    verified_lsn pg_lsn,               -- every row written before it equals its transform
    verified_at  timestamptz,          -- legacy's clock at verified_lsn
    checked_at   timestamptz NOT NULL DEFAULT now(),
    outcome      text        NOT NULL, -- of the latest check: clean | different | unsettled
    differences  bigint      NOT NULL DEFAULT 0,
    keys         jsonb       NOT NULL DEFAULT '[]',  -- the latest check's differences (20)
    rows_checked bigint      NOT NULL DEFAULT 0
)
"""
KEYS_KEPT = 20
ERROR_WAIT_S = 5.0


def ensure(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('replicator.verified_through'))")
        conn.execute(VERIFIED_SQL)


def read_points(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """Every table's point: verified_lsn (text), verified_at, age_s, checked_at, outcome,
    differences, keys; {} when continuous validation never ran."""
    if conn.execute("SELECT to_regclass('replicator.verified_through')").fetchone() in (
        None,
        (None,),
    ):
        return {}
    rows = conn.execute(
        "SELECT table_name, verified_lsn::text, verified_at,"
        " extract(epoch FROM now() - verified_at)::float8, checked_at, outcome, differences,"
        " keys, rows_checked FROM replicator.verified_through ORDER BY table_name"
    ).fetchall()
    return {
        str(r[0]): {
            "verified_lsn": r[1],
            "verified_at": r[2].isoformat() if r[2] is not None else None,
            "age_s": r[3],
            "checked_at": r[4].isoformat(),
            "outcome": str(r[5]),
            "differences": int(r[6]),
            "keys": r[7],
            "rows_checked": int(r[8]),
        }
        for r in rows
    }


class ContinuousValidation:
    def __init__(self, settings: Settings, mapping: MappingSet) -> None:
        self.s = settings
        self.mapping = mapping
        self.tables = sorted(mapping.forward.target_tables)

    def run(self, stop: threading.Event) -> None:
        s = self.s
        with (
            pg.connect(s.source.conninfo(), autocommit=True) as legacy,
            pg.connect(s.target.conninfo(), autocommit=True) as target,
        ):
            with pg.translated(s.target.masked()):
                ensure(target)
            while not stop.is_set():
                self._walk(legacy, target, stop)

    def _walk(
        self,
        legacy: psycopg.Connection[Any],
        target: psycopg.Connection[Any],
        stop: threading.Event,
    ) -> None:
        """Every table once. A walk that finds every table clean is stored as a clean full
        validation (its start, and the changes topic's offsets noted before its first table,
        as `validate --resume` does): the cutover preflight's freshness check and the verify
        step's `--fast` build on it as on a full run."""
        from replicator.validate.report import store
        from replicator.validate.run import _log_offsets

        walk = Report("full", None, datetime.now(UTC))
        walk.log_offsets = _log_offsets(self.s, True)
        for table in self._order(target):
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                got = self.check(legacy, target, table)
            except ReplicatorError as exc:  # a server gone: the next walk tries again
                log.warning("continuous validation of %s: %s", table, exc.message)
                stop.wait(ERROR_WAIT_S)
                return
            walk.tables.extend(got.tables)
            walk.differences.extend(got.differences)
            walk.orphans.extend(got.orphans)
            walk.orphan_count += got.orphan_count
            walk.rejected_count += got.rejected_count
            # A mapping that reads columns legacy lacks: the table was not compared, never clean.
            walk.mapping_errors.extend(got.mapping_errors)
            # The budget: on average at most rows_per_s rows compared per second.
            spent = time.monotonic() - started
            stop.wait(max(0.0, got.rows_checked / self.s.validation.rows_per_s - spent))
        walk.finished_at = datetime.now(UTC)
        if walk.outcome == "clean" and walk.log_offsets is not None:
            with pg.translated(self.s.target.masked()):
                ensure_runs_table(target)
                store(target, walk)

    def _order(self, target: psycopg.Connection[Any]) -> list[str]:
        """Tables never checked first, then the one checked longest ago."""
        with pg.translated(self.s.target.masked()):
            seen = {
                str(t): c
                for t, c in target.execute(
                    "SELECT table_name, checked_at FROM replicator.verified_through"
                ).fetchall()
            }
        return sorted(self.tables, key=lambda t: (t in seen, seen.get(t) or 0))

    def check(
        self, legacy: psycopg.Connection[Any], target: psycopg.Connection[Any], table: str
    ) -> Report:
        """Validate one table and record its point."""
        from replicator.validate.run import validate

        with pg.translated(self.s.source.masked()):
            row = legacy.execute("SELECT pg_current_wal_lsn()::text, now()").fetchone()
        assert row is not None
        lsn, at = row
        report = validate(self.s, self.mapping, table=table, save=False)
        keys = [{"table": d.table, "kind": d.kind, "key": d.key} for d in report.differences][
            :KEYS_KEPT
        ]
        outcome = report.outcome
        with pg.translated(self.s.target.masked()):
            target.execute(
                "INSERT INTO replicator.verified_through AS v (table_name, verified_lsn,"
                " verified_at, checked_at, outcome, differences, keys, rows_checked)"
                " VALUES (%(t)s, %(lsn)s, %(at)s, now(), %(o)s, %(n)s, %(k)s, %(rows)s)"
                " ON CONFLICT (table_name) DO UPDATE SET checked_at = now(),"
                " outcome = %(o)s, differences = %(n)s, keys = %(k)s, rows_checked = %(rows)s,"
                # Only a clean check moves the point; a different one keeps the last clean.
                " verified_lsn = CASE WHEN %(o)s = 'clean' THEN %(lsn)s::pg_lsn"
                " ELSE v.verified_lsn END,"
                " verified_at = CASE WHEN %(o)s = 'clean' THEN %(at)s ELSE v.verified_at END",
                {
                    "t": table,
                    "lsn": lsn if outcome == "clean" else None,
                    "at": at if outcome == "clean" else None,
                    "o": outcome,
                    "n": report.difference_count,
                    "k": Jsonb(keys),
                    "rows": report.rows_checked,
                },
            )
        if outcome != "clean":
            log.warning(
                "continuous validation: %s is %s (%d differences)",
                table,
                outcome,
                report.difference_count,
            )
        return report
