"""What a validation found, its stable JSON form, and where runs are kept.

Runs are stored in ``replicator.validation_runs`` on the target, so ``status`` and the cutover
preflight can tell whether a clean validation is recent (:func:`last_validation`). The JSON
schema (``version`` 1) is documented in docs/validation.md; fields are only ever added.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from replicator.validate.expect import Rejected

REPORT_VERSION = 1
MAX_REPORTED = 1_000  # differences/orphans listed in full; the counts stay exact
MAX_STORED = 100  # listed in the stored summary

Outcome = Literal["clean", "different", "unsettled"]

RUNS_SQL = """
CREATE TABLE IF NOT EXISTS replicator.validation_runs (
    id            bigserial   PRIMARY KEY,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    scope         text        NOT NULL,
    tables        text[],
    outcome       text        NOT NULL,
    rows_checked  bigint      NOT NULL,
    differences   bigint      NOT NULL,
    log_offsets   jsonb,
    summary       jsonb       NOT NULL
)
"""


@dataclass
class Difference:
    table: str
    kind: str  # missing | extra | differs | collides | unsettled
    key: dict[str, str]
    columns: list[str] = field(default_factory=list)
    expected: dict[str, str | None] = field(default_factory=dict)
    actual: dict[str, str | None] = field(default_factory=dict)
    # collides: the legacy rows that all write ``key``, as {"table": source, "key": {...}}
    sources: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Orphan:
    table: str
    constraint: str
    parent: str
    key: dict[str, str]
    columns: dict[str, str | None]


@dataclass
class TableResult:
    table: str
    mode: str  # full | keys
    expected_rows: int = 0
    target_rows: int = 0
    rows_checked: int = 0
    chunks: int = 0
    chunks_mismatched: int = 0
    missing: int = 0
    extra: int = 0
    differs: int = 0
    collides: int = 0  # target keys that several legacy rows of one source table write
    in_flight: int = 0  # differed, then converged on a re-check: changes that were on their way
    unsettled: int = 0  # still changing on legacy after every re-check round
    # sql: checksums computed by both servers through the compiled transform; python: every
    # row read and transformed here. path_reason: why a table kept the Python path.
    path: str = "python"
    path_reason: str | None = None

    @property
    def differences(self) -> int:
        return self.missing + self.extra + self.differs + self.collides


def add_counts(into: TableResult, more: TableResult) -> None:
    """``more``'s counts added to ``into`` (two key ranges of one table)."""
    for f in fields(more):
        v = getattr(more, f.name)
        if isinstance(v, int) and not isinstance(v, bool):
            setattr(into, f.name, getattr(into, f.name) + v)


@dataclass
class Report:
    scope: str  # full | fast
    tables_requested: list[str] | None
    started_at: datetime
    live: bool = False
    lagging: bool = False
    rounds: int = 0
    finished_at: datetime | None = None
    tables: list[TableResult] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    orphan_count: int = 0
    rejected_count: int = 0
    # The mapping reads columns legacy does not have (replicator.validate.scope): never clean.
    mapping_errors: list[str] = field(default_factory=list)
    log_offsets: dict[int, int] | None = None
    since_run_id: int | None = None
    run_id: int | None = None
    # --resume: what the interrupted run had checked and this one re-used (validate/resume.py)
    resumed: dict[str, Any] | None = None
    # Tables continuous validation had found different that this stored run found clean: their
    # flag is cleared (:func:`clear_flags`).
    cleared_flags: list[str] = field(default_factory=list)
    # A check by key range: per group, the range checked (KeyRange) or why it was checked whole.
    # Not part of the JSON report.
    ranges: dict[tuple[str, ...], tuple[Any, Any]] = field(default_factory=dict, repr=False)
    # (table, key_text(key)) of each confirmed difference -> its legacy rows (source table,
    # key): what `validate --repair` re-sends. Not part of the JSON report.
    provenance: dict[tuple[str, str], set[tuple[str, tuple[Any, ...]]]] = field(
        default_factory=dict, repr=False
    )

    @property
    def difference_count(self) -> int:
        return (
            sum(t.differences for t in self.tables)
            + self.orphan_count
            + self.rejected_count
            + len(self.mapping_errors)
        )

    @property
    def unsettled_count(self) -> int:
        return sum(t.unsettled for t in self.tables)

    @property
    def rows_checked(self) -> int:
        return sum(t.rows_checked for t in self.tables)

    @property
    def outcome(self) -> Outcome:
        if self.difference_count:
            return "different"
        return "unsettled" if self.unsettled_count else "clean"

    @property
    def exit_code(self) -> int:
        return {"clean": 0, "different": 1, "unsettled": 3}[self.outcome]

    def to_json(self, limit: int = MAX_REPORTED) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "run_id": self.run_id,
            "scope": self.scope,
            "tables_requested": self.tables_requested,
            "started_at": self.started_at.isoformat(),
            "finished_at": (self.finished_at or datetime.now(UTC)).isoformat(),
            "outcome": self.outcome,
            "live": self.live,
            "lagging": self.lagging,
            "rounds": self.rounds,
            "since_run_id": self.since_run_id,
            "resumed": self.resumed,
            "cleared_flags": self.cleared_flags,
            "counts": {
                "rows_checked": self.rows_checked,
                "differences": self.difference_count,
                "unsettled": self.unsettled_count,
                "orphans": self.orphan_count,
                "rejected": self.rejected_count,
                "mapping_errors": len(self.mapping_errors),
            },
            "mapping_errors": self.mapping_errors,
            "tables": [{**asdict(t), "differences": t.differences} for t in self.tables],
            "differences": [asdict(d) for d in self.differences[:limit]],
            "rejected": [asdict(r) for r in self.rejected[:limit]],
            "orphans": [asdict(o) for o in self.orphans[:limit]],
            "truncated": max(len(self.differences), len(self.rejected), len(self.orphans)) > limit,
        }


def key_text(key: dict[str, Any]) -> str:
    """A difference's key as one stable text (its columns in order)."""
    return json.dumps(key, sort_keys=True, default=str)


def ensure_runs_table(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('replicator.validation_runs'))")
        conn.execute(RUNS_SQL)


def store(conn: psycopg.Connection[Any], report: Report) -> int:
    summary = report.to_json(limit=MAX_STORED)
    row = conn.execute(
        "INSERT INTO replicator.validation_runs (started_at, finished_at, scope, tables, outcome,"
        " rows_checked, differences, log_offsets, summary)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (
            report.started_at,
            report.finished_at,
            report.scope,
            report.tables_requested,
            report.outcome,
            report.rows_checked,
            report.difference_count,
            Jsonb({str(p): o for p, o in report.log_offsets.items()})
            if report.log_offsets is not None
            else None,
            Jsonb(summary),
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def clear_flags(conn: psycopg.Connection[Any], report: Report) -> list[str]:
    """A stored full run that finds a table clean clears the 'different' flag continuous
    validation left on it (replicator.runtime.continuous): the cutover preflight no longer waits
    for the walk to come back to that range. The verified-through point does not move (only
    a walk's pass sets it). Returns the tables cleared."""
    clean = [
        t.table for t in report.tables if t.mode == "full" and not t.differences and not t.unsettled
    ]
    if report.scope != "full" or report.mapping_errors or not clean:
        return []
    row = conn.execute("SELECT to_regclass('replicator.verified_through') IS NOT NULL").fetchone()
    if not (row and row[0]):
        return []
    rows = conn.execute(
        "UPDATE replicator.verified_through SET outcome = 'clean', differences = 0,"
        " keys = '[]', checked_at = now() WHERE table_name = ANY(%s) AND outcome = 'different'"
        " RETURNING table_name",
        (clean,),
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


def _exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('replicator.validation_runs') IS NOT NULL").fetchone()
    return bool(row and row[0])


def last_validation(
    conn: psycopg.Connection[Any], *, scope: str | None = None
) -> dict[str, Any] | None:
    """The latest stored run (of ``scope`` if given), with ``age_s``; None if there is none.

    Keys: id, started_at, finished_at, scope, tables, outcome, rows_checked, differences,
    age_s, summary.
    """
    if not _exists(conn):
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, started_at, finished_at, scope, tables, outcome, rows_checked, differences,"
            " extract(epoch FROM now() - finished_at)::float8 AS age_s, summary"
            " FROM replicator.validation_runs WHERE %(scope)s::text IS NULL OR scope = %(scope)s"
            " ORDER BY id DESC LIMIT 1",
            {"scope": scope},
        )
        row = cur.fetchone()
    return dict(row) if row is not None else None


def fast_baseline(
    conn: psycopg.Connection[Any], table: str | None
) -> tuple[int, dict[int, int]] | None:
    """(run id, changes-topic offsets) of the last clean full validation covering ``table``."""
    if not _exists(conn):
        return None
    row = conn.execute(
        "SELECT id, log_offsets FROM replicator.validation_runs WHERE scope = 'full'"
        " AND outcome = 'clean' AND log_offsets IS NOT NULL"
        " AND (tables IS NULL OR %s::text = ANY(tables)) ORDER BY id DESC LIMIT 1",
        (table,),
    ).fetchone()
    if row is None:
        return None
    offsets = row[1] if isinstance(row[1], dict) else json.loads(row[1])
    return int(row[0]), {int(p): int(o) for p, o in offsets.items()}
