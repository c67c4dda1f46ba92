"""A switch's point of no return: the decision, recorded on both databases before the hook.

Before the switch hook runs, the cutover (or rollback) writes one row — pipeline, action, run,
from and to direction — to ``replicator.switch_decision`` on the old writer, then on the new
writer. From then on the old writer is never unfenced, except when the hook itself says it did
not switch the application (a non-zero exit) and the rows are taken back first. After the hook,
one statement per side records the new direction and deletes the row. A row left behind is a
switch that stopped between those points: ``status`` names it, and running the same command
again finishes it (the hook runs again, so it must be idempotent; then the direction).

Invariant while a row exists: the old writer is fenced, its stream drained and verified, the new
direction's slot armed (and moved past the drain) and sequences set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

DECISION_SQL = """
CREATE TABLE IF NOT EXISTS replicator.switch_decision (
    name       text PRIMARY KEY,
    action     text NOT NULL,   -- cutover | rollback
    run_id     text NOT NULL,
    from_dir   text NOT NULL,
    to_dir     text NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now()
);
"""


def rerun(action: str) -> str:
    """The command that finishes (or reruns) a switch, as an operator types it."""
    return "`replicator rollback --yes`" if action == "rollback" else "`replicator cutover --yes`"


@dataclass(frozen=True)
class Decision:
    action: str
    run_id: str
    from_dir: str
    to_dir: str
    decided_at: str

    def explain(self) -> str:
        return (
            f"a {self.action} (run {self.run_id}, decided {self.decided_at[:19]}) stopped after"
            f" its point of no return: the old writer stays fenced and the application may"
            f" already write to the new one; run {rerun(self.action)} again to finish it"
        )

    def to_json(self) -> dict[str, str]:
        return {
            "action": self.action,
            "run_id": self.run_id,
            "from_direction": self.from_dir,
            "to_direction": self.to_dir,
            "decided_at": self.decided_at,
        }


def ensure_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute(DECISION_SQL)


def read(conn: psycopg.Connection[Any], name: str) -> Decision | None:
    row = conn.execute("SELECT to_regclass('replicator.switch_decision') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    got = conn.execute(
        "SELECT action, run_id, from_dir, to_dir, decided_at::text"
        " FROM replicator.switch_decision WHERE name = %s",
        (name,),
    ).fetchone()
    return Decision(*(str(v) for v in got)) if got else None


def record(name: str, action: str, run_id: str, from_dir: str, to_dir: str) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO replicator.switch_decision (name, action, run_id, from_dir, to_dir)"
        " VALUES ({}, {}, {}, {}, {}) ON CONFLICT (name) DO UPDATE SET action = EXCLUDED.action,"
        " run_id = EXCLUDED.run_id, from_dir = EXCLUDED.from_dir, to_dir = EXCLUDED.to_dir,"
        " decided_at = now()"
    ).format(*(sql.Literal(v) for v in (name, action, run_id, from_dir, to_dir)))


def forget(name: str, run_id: str | None = None) -> sql.Composed:
    """The decision deleted (only run ``run_id``'s, when given)."""
    q = sql.SQL("DELETE FROM replicator.switch_decision WHERE name = {}").format(sql.Literal(name))
    if run_id is not None:
        q = q + sql.SQL(" AND run_id = {}").format(sql.Literal(run_id))
    return q


def finish(name: str, direction: str) -> sql.Composed:
    """The direction recorded and the decision deleted: one statement, one transaction."""
    return sql.SQL(
        "WITH done AS (DELETE FROM replicator.switch_decision WHERE name = {n})"
        " INSERT INTO replicator.pipeline (name, desired_direction, observed_direction, state)"
        " VALUES ({n}, {d}, {d}, 'sync') ON CONFLICT (name) DO UPDATE SET"
        " desired_direction = EXCLUDED.desired_direction,"
        " observed_direction = EXCLUDED.observed_direction, state = 'sync', updated_at = now()"
    ).format(n=sql.Literal(name), d=sql.Literal(direction))
