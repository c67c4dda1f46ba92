"""What a switch is and what it leaves: the plan of one direction's switch, the steps' results,
the outcome (``--json``), and the journal of every step in the target's ``replicator`` schema.

In the write pause the journal's rows are held back and written once it is over: a connection
and an insert per step were milliseconds of pause each.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from connectors import pg
from replicator.config import DatabaseSettings, Settings
from replicator.errors import ReplicatorError
from replicator.state import ensure_schema
from transforms.api import Direction, MappingSet

JOURNAL_SQL = """
CREATE TABLE IF NOT EXISTS replicator.cutover_journal (
    run_id      text        NOT NULL,
    action      text        NOT NULL,   -- cutover | rollback | dry-run
    step        text        NOT NULL,
    ok          boolean     NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms double precision NOT NULL,
    detail      text
);
"""


@dataclass
class Plan:
    """One direction's switch: from ``old`` (fenced) to ``new`` (becomes the writer)."""

    action: str  # "cutover" | "rollback"
    old: DatabaseSettings
    new: DatabaseSettings
    old_dir: str  # the direction that drains: "fwd" for a cutover
    new_dir: str  # the direction armed at the switch: "rev" for a cutover
    drain: Direction  # the mapping of the draining direction
    arm: Direction  # the mapping of the direction armed at the switch


def plan_for(s: Settings, mapping: MappingSet, action: str) -> Plan:
    if action == "cutover":
        return Plan("cutover", s.source, s.target, "fwd", "rev", mapping.forward, mapping.reverse)
    return Plan("rollback", s.target, s.source, "rev", "fwd", mapping.reverse, mapping.forward)


@dataclass
class StepResult:
    name: str
    ok: bool
    seconds: float
    detail: str = ""
    # Wall-clock time the step ended (made as it ends): the journal's start time comes from it,
    # not from when the row is written, since rows held in the pause are written after it.
    ended_at: float = field(default_factory=time.time)


@dataclass
class Outcome:
    action: str
    run_id: str
    switched: bool
    dry_run: bool
    steps: list[StepResult] = field(default_factory=list)
    pause_s: float | None = None  # fence commit → switch (or unfence, for a dry run)
    preflight_problems: list[str] = field(default_factory=list)
    resumed_run_id: str | None = None  # a rerun that finished this earlier run's switch


class Journal:
    """The steps of run ``run_id``, journaled on the target; held back while ``held``."""

    def __init__(self, s: Settings, plan: Plan, run_id: str) -> None:
        self.s = s
        self.plan = plan
        self.run_id = run_id
        self.conn: psycopg.Connection[Any] | None = None  # the target, when held open
        self._held: list[StepResult] | None = None

    def hold(self) -> None:
        self._held = []

    def add(self, r: StepResult) -> None:
        if self._held is not None:
            self._held.append(r)  # in the pause: written once it is over
            return
        self._write([r])

    def release(self) -> None:
        held, self._held = self._held, None
        if held:
            self._write(held)

    def _write(self, rows: list[StepResult]) -> None:
        db = self.s.target
        values = [
            (
                self.run_id,
                self.plan.action,
                r.name,
                r.ok,
                r.ended_at - r.seconds,
                r.seconds * 1000,
                r.detail,
            )
            for r in rows
        ]
        insert = (
            "INSERT INTO replicator.cutover_journal VALUES"
            " (%s, %s, %s, %s, to_timestamp(%s), %s, %s)"
        )
        try:
            if self.conn is not None and not self.conn.closed:
                with pg.translated(db.masked()), self.conn.cursor() as cur:
                    cur.executemany(insert, values)
                return
            with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
                ensure_schema(conn)
                conn.execute(JOURNAL_SQL)
                with conn.cursor() as cur:
                    cur.executemany(insert, values)
        except ReplicatorError:
            pass  # the journal must never turn a good cutover into a failed one


def outcome_json(out: Outcome) -> str:
    return json.dumps(
        {
            "action": out.action,
            "run_id": out.run_id,
            "switched": out.switched,
            "dry_run": out.dry_run,
            "pause_s": out.pause_s,
            "resumed_run_id": out.resumed_run_id,
            "steps": [
                {"name": r.name, "ok": r.ok, "seconds": round(r.seconds, 4), "detail": r.detail}
                for r in out.steps
            ],
        }
    )
