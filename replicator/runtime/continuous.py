"""Continuous validation in `replicator run` (``[validation] continuous = true``).

A stage of its own walks the mapped target tables in turn, each one in key ranges of about
``range_rows`` legacy rows (replicator.validate.insql.ranges; a table whose group cannot be
restricted is checked whole), each range by the in-database checksums (replicator.validate.run:
its catch-up marker, then the re-checks of rows that differ once apply has caught up, so a row
in flight is not reported), paced to ``rows_per_s`` rows compared per second on average.

A **pass** over a table begins by noting legacy's position (LSN and time) and checks its ranges
in key order; the cursor (the last key checked, the pass's start) is kept in
``replicator.verified_through`` on the target after each range, so a restart continues from the
range where it stopped. When the last range is clean, the table's **verified-through point**
becomes the pass's start: every row of the table written on legacy before ``verified_lsn`` (at
``verified_at``, legacy's clock) equals its transform (each range was compared after that point
was applied). A range found different records ``outcome = 'different'`` with its keys and holds
the cursor: the table keeps its last clean point, the cutover preflight refuses, and the walk's
next visit checks that range again. The preflight accepts the points in place of a fresh full
validation when every mapped table has a clean, recent one.

The walk starts with tables whose pass is open, then the one checked longest ago.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from connectors import pg
from replicator.config import Settings
from replicator.errors import ReplicatorError
from replicator.validate.insql.plan import KeyRange
from replicator.validate.insql.ranges import RangeAsk, range_rows
from replicator.validate.report import Report, add_counts, ensure_runs_table
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
# The pass under way (added to tables made before ranges): its start, and the last key checked.
CURSOR_SQL = """
ALTER TABLE replicator.verified_through
    ADD COLUMN IF NOT EXISTS pass_lsn    pg_lsn,
    ADD COLUMN IF NOT EXISTS pass_at     timestamptz,
    ADD COLUMN IF NOT EXISTS cursor_key  text,
    ADD COLUMN IF NOT EXISTS pass_ranges integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS pass_rows   bigint  NOT NULL DEFAULT 0
"""
KEYS_KEPT = 20
ERROR_WAIT_S = 5.0


def ensure(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('replicator.verified_through'))")
        conn.execute(VERIFIED_SQL)
        conn.execute(CURSOR_SQL)


def read_points(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """Every table's point: verified_lsn (text), verified_at, age_s, checked_at, outcome,
    differences, keys; {} when continuous validation never ran."""
    if conn.execute("SELECT to_regclass('replicator.verified_through')").fetchone() in (
        None,
        (None,),
    ):
        return {}
    # The pass columns through to_jsonb: a table made before them (not yet ensured by a
    # `replicator run` of this version) reads as having no pass under way.
    rows = conn.execute(
        "SELECT table_name, verified_lsn::text, verified_at,"
        " extract(epoch FROM now() - verified_at)::float8, checked_at, outcome, differences,"
        " keys, rows_checked, to_jsonb(v) ->> 'pass_at', (to_jsonb(v) ->> 'pass_ranges')::int,"
        " (to_jsonb(v) ->> 'pass_rows')::bigint, to_jsonb(v) ->> 'cursor_key'"
        " FROM replicator.verified_through v ORDER BY table_name"
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
            # The pass under way: when it began, the ranges and rows checked clean so far
            # and the last key they reached (None between passes).
            "pass": None
            if r[9] is None
            else {"began_at": r[9], "ranges": r[10] or 0, "rows": r[11] or 0, "after": r[12]},
        }
        for r in rows
    }


@dataclass
class Pass:
    """A table's pass under way: where it began on legacy and the last key checked clean."""

    lsn: str
    at: datetime
    after: str | None
    ranges: int
    rows: int


def _merge(into: Report, got: Report) -> None:
    """One range's report added to its table's (counts summed per table)."""
    have = {r.table: r for r in into.tables}
    for r in got.tables:
        mine = have.get(r.table)
        if mine is None:
            into.tables.append(r)
        else:
            add_counts(mine, r)
    into.differences.extend(got.differences)
    into.orphans.extend(got.orphans)
    into.orphan_count += got.orphan_count
    into.rejected.extend(got.rejected)
    into.rejected_count += got.rejected_count
    into.mapping_errors.extend(e for e in got.mapping_errors if e not in into.mapping_errors)


class ContinuousValidation:
    def __init__(self, settings: Settings, mapping: MappingSet) -> None:
        self.s = settings
        self.mapping = mapping
        self.tables = sorted(mapping.forward.target_tables)
        self.stop = threading.Event()
        # (table, after, up to) of each range checked (None: open-ended); what tests look at.
        self.checked: list[tuple[str, str | None, str | None]] = []
        self._resumed = False  # a pass this walk continued began before the walk

    def run(self, stop: threading.Event) -> None:
        s = self.s
        self.stop = stop
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
        """Every table once, each one a whole pass. A walk that finds every table clean is
        stored as a clean full validation (its start, and the changes topic's offsets noted
        before its first table, as `validate --resume` does): the cutover preflight's freshness
        check and the verify step's `--fast` build on it as on a full run. Not a walk that
        continued a pass begun before it: its offsets are later than that pass's first ranges."""
        from replicator.validate.report import store
        from replicator.validate.run import _log_offsets

        self.stop = stop
        self._resumed = False
        walk = Report("full", None, datetime.now(UTC))
        walk.log_offsets = _log_offsets(self.s, True)
        for table in self._order(target):
            if stop.is_set():
                return
            try:
                got = self.check(legacy, target, table)
            except ReplicatorError as exc:  # a server gone: the next walk tries again
                log.warning("continuous validation of %s: %s", table, exc.message)
                stop.wait(ERROR_WAIT_S)
                return
            if stop.is_set():
                return  # the table's pass was cut short: it is not in this walk
            # A mapping that reads columns legacy lacks: the table was not compared, never clean.
            _merge(walk, got)
        walk.finished_at = datetime.now(UTC)
        if walk.outcome == "clean" and walk.log_offsets is not None and not self._resumed:
            with pg.translated(self.s.target.masked()):
                ensure_runs_table(target)
                store(target, walk)

    def _order(self, target: psycopg.Connection[Any]) -> list[str]:
        """Tables with a pass under way first, then those never checked, then the one checked
        longest ago."""
        with pg.translated(self.s.target.masked()):
            seen = {
                str(t): (0 if p is not None else 2, c)
                for t, c, p in target.execute(
                    "SELECT table_name, checked_at, pass_lsn FROM replicator.verified_through"
                ).fetchall()
            }
        return sorted(self.tables, key=lambda t: seen.get(t, (1, None)))

    def _pass(
        self, legacy: psycopg.Connection[Any], target: psycopg.Connection[Any], table: str
    ) -> Pass:
        """The table's pass under way, or a new one beginning now."""
        with pg.translated(self.s.target.masked()):
            row = target.execute(
                "SELECT pass_lsn::text, pass_at, cursor_key, pass_ranges, pass_rows"
                " FROM replicator.verified_through WHERE table_name = %s AND pass_lsn IS NOT NULL",
                (table,),
            ).fetchone()
        if row is not None:
            self._resumed = True
            return Pass(str(row[0]), row[1], row[2], int(row[3]), int(row[4]))
        with pg.translated(self.s.source.masked()):
            got = legacy.execute("SELECT pg_current_wal_lsn()::text, now()").fetchone()
        assert got is not None
        with pg.translated(self.s.target.masked()):
            target.execute(
                "INSERT INTO replicator.verified_through AS v (table_name, outcome, pass_lsn,"
                " pass_at) VALUES (%s, 'unchecked', %s, %s) ON CONFLICT (table_name) DO UPDATE"
                " SET pass_lsn = %s, pass_at = %s, cursor_key = NULL, pass_ranges = 0,"
                " pass_rows = 0",
                (table, got[0], got[1], got[0], got[1]),
            )
        return Pass(str(got[0]), got[1], None, 0, 0)

    def check(
        self, legacy: psycopg.Connection[Any], target: psycopg.Connection[Any], table: str
    ) -> Report:
        """The rest of the table's pass, range by range (until a range differs or the walk is
        stopped); records the cursor after each range and the point when the pass ends clean."""
        p = self._pass(legacy, target, table)
        out = Report("full", [table], datetime.now(UTC))
        rows = range_rows(self.s.validation.rows_per_s, self.s.validation.range_rows)
        while True:
            started = time.monotonic()
            got = self.check_range(table, RangeAsk(p.after, rows))
            _merge(out, got)
            rng = next(iter(got.ranges.values()), (None, None))[0]
            hi = rng.hi if isinstance(rng, KeyRange) else None
            self.checked.append((table, p.after, hi))
            self._record(target, table, got, p, hi)
            if got.outcome != "clean" or hi is None:
                return out
            p.after, p.ranges, p.rows = hi, p.ranges + 1, p.rows + got.rows_checked
            # The budget: on average at most rows_per_s rows compared per second.
            spent = time.monotonic() - started
            if self.stop.wait(max(0.0, got.rows_checked / self.s.validation.rows_per_s - spent)):
                return out

    def check_range(self, table: str, ask: RangeAsk) -> Report:
        from replicator.validate.run import validate

        return validate(self.s, self.mapping, table=table, save=False, key_range=ask)

    def _record(
        self,
        target: psycopg.Connection[Any],
        table: str,
        report: Report,
        p: Pass,
        hi: str | None,
    ) -> None:
        """One range's result. Clean: the cursor moves on, and past the last range the point
        becomes the pass's start. Otherwise the range's keys are kept and the cursor stays."""
        outcome = report.outcome
        keys = [{"table": d.table, "kind": d.kind, "key": d.key} for d in report.differences][
            :KEYS_KEPT
        ]
        ended = outcome == "clean" and hi is None
        with pg.translated(self.s.target.masked()):
            target.execute(
                "UPDATE replicator.verified_through SET checked_at = now(), outcome = %(o)s,"
                " differences = %(n)s, keys = %(k)s,"
                " cursor_key = CASE WHEN %(o)s = 'clean' THEN %(hi)s ELSE cursor_key END,"
                " pass_ranges = pass_ranges + (%(o)s = 'clean')::int,"
                " pass_rows = pass_rows + CASE WHEN %(o)s = 'clean' THEN %(rows)s ELSE 0 END,"
                # Only a pass clean to its end moves the point; it keeps the last one until then.
                " verified_lsn = CASE WHEN %(end)s THEN pass_lsn ELSE verified_lsn END,"
                " verified_at = CASE WHEN %(end)s THEN pass_at ELSE verified_at END,"
                " rows_checked = CASE WHEN %(end)s THEN pass_rows + %(rows)s ELSE rows_checked END,"
                " pass_lsn = CASE WHEN %(end)s THEN NULL ELSE pass_lsn END,"
                " pass_at = CASE WHEN %(end)s THEN NULL ELSE pass_at END"
                " WHERE table_name = %(t)s",
                {
                    "t": table,
                    "o": outcome,
                    "n": report.difference_count,
                    "k": Jsonb(keys),
                    "hi": hi,
                    "rows": report.rows_checked,
                    "end": ended,
                },
            )
        if outcome != "clean":
            log.warning(
                "continuous validation: %s is %s (%d differences) in the key range after %s",
                table,
                outcome,
                report.difference_count,
                p.after or "its start",
            )
