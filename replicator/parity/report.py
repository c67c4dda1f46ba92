"""What a parity run found, its JSON form, and where runs are kept: ``replicator.parity_runs``
on the target, beside the validation runs, so ``status``, the web page and the cutover's
preflight read the last one (:func:`last_parity`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from replicator.parity.explain import PlanSummary

REPORT_VERSION = 1

# agrees: same answer, goals met; differs: a confirmed difference; slow: same answer, a goal
# missed; unsettled: the answer kept changing (or apply lagged) so no verdict was possible.
Verdict = Literal["agrees", "differs", "slow", "unsettled"]
Outcome = Literal["pass", "different", "slow", "unsettled"]

RUNS_SQL = """
CREATE TABLE IF NOT EXISTS replicator.parity_runs (
    id          bigserial   PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    outcome     text        NOT NULL,
    pairs       integer     NOT NULL,
    differing   integer     NOT NULL,
    slow        integer     NOT NULL,
    summary     jsonb       NOT NULL
)
"""


@dataclass
class PairResult:
    name: str
    compare: str
    param_sets: int = 0
    rows_legacy: int = 0
    rows_target: int = 0
    difference: str | None = None
    unsettled: str | None = None
    legacy_ms: dict[str, float] = field(default_factory=dict)
    target_ms: dict[str, float] = field(default_factory=dict)
    goal: str = ""
    misses: list[str] = field(default_factory=list)
    plan: PlanSummary | None = None

    @property
    def verdict(self) -> Verdict:
        if self.difference is not None:
            return "differs"
        if self.unsettled is not None:
            return "unsettled"
        return "slow" if self.misses else "agrees"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict,
            "compare": self.compare,
            "param_sets": self.param_sets,
            "rows": {"legacy": self.rows_legacy, "target": self.rows_target},
            "difference": self.difference,
            "unsettled": self.unsettled,
            "latency_ms": {"legacy": self.legacy_ms, "target": self.target_ms},
            "goal": self.goal,
            "misses": self.misses,
            "plan": self.plan.to_json() if self.plan else None,
        }


@dataclass
class ParityReport:
    started_at: datetime
    runs: int
    live: bool = False
    finished_at: datetime | None = None
    pairs: list[PairResult] = field(default_factory=list)
    run_id: int | None = None

    def count(self, verdict: Verdict) -> int:
        return sum(p.verdict == verdict for p in self.pairs)

    @property
    def outcome(self) -> Outcome:
        if self.count("differs"):
            return "different"
        if self.count("unsettled"):
            return "unsettled"
        return "slow" if self.count("slow") else "pass"

    @property
    def exit_code(self) -> int:
        """0 pass, 1 a pair differs, 3 unsettled (as validate), 4 a goal missed."""
        return {"pass": 0, "different": 1, "unsettled": 3, "slow": 4}[self.outcome]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "run_id": self.run_id,
            "outcome": self.outcome,
            "live": self.live,
            "runs": self.runs,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "pairs": [p.to_json() for p in self.pairs],
        }


def ensure_runs_table(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('replicator.parity_runs'))")
        conn.execute(RUNS_SQL)


def store(conn: psycopg.Connection[Any], report: ParityReport) -> int:
    ensure_runs_table(conn)
    row = conn.execute(
        "INSERT INTO replicator.parity_runs (started_at, finished_at, outcome, pairs, differing,"
        " slow, summary) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (
            report.started_at,
            report.finished_at,
            report.outcome,
            len(report.pairs),
            report.count("differs"),
            report.count("slow"),
            Jsonb(report.to_json()),
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def last_parity(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    """The latest stored run with ``age_s``; None if there is none. Keys: id, started_at,
    finished_at, outcome, pairs, differing, slow, age_s, summary."""
    exists = conn.execute("SELECT to_regclass('replicator.parity_runs') IS NOT NULL").fetchone()
    if not (exists and exists[0]):
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, started_at, finished_at, outcome, pairs, differing, slow,"
            " extract(epoch FROM now() - finished_at)::float8 AS age_s, summary"
            " FROM replicator.parity_runs ORDER BY id DESC LIMIT 1"
        )
        row = cur.fetchone()
    return dict(row) if row is not None else None
