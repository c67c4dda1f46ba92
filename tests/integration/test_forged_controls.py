"""Control messages forged on the source: any role that may connect to it can call
pg_logical_emit_message with the replicator's prefixes (PUBLIC may execute it). Before, a deeply
nested one stopped the capture for good (json's RecursionError), a malformed heartbeat, marker
or snapshot_done stopped apply at the same offset on every restart, a heartbeat dated in 2100
held the lag at zero, and with drift.apply_ddl a DDL record ran any ALTER TABLE on the target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.cli import Background, run_cli
from tests.support import Env, wait_for

FORGED = [
    ("replicator", "[" * 100_000),
    ("replicator", json.dumps({"kind": "heartbeat", "emitted_at": "2100-01-01T00:00:00+00:00"})),
    ("replicator", json.dumps({"kind": "heartbeat"})),
    ("replicator", json.dumps({"kind": "snapshot_done"})),
    ("replicator", json.dumps({"kind": "snapshot_done", "backfill_id": "x"})),
    ("replicator", json.dumps({"kind": "marker"})),
    ("replicator", json.dumps({"kind": "marker", "id": "m", "marker": "fence", "emitted_at": "x"})),
    ("replicator", json.dumps({"kind": "marker", "id": "m\u0000", "marker": "fence"})),
    ("replicator", '{"kind": "x", "s": "\\ud800"}'),  # the envelope's encoder refused it
    ("replicator", '{"kind": "x", "n": 18446744073709551616}'),  # a float: nothing to refuse
    ("replicator", "x"),
    (
        "replicator.ddl",
        json.dumps({"tag": "ALTER TABLE", "table": "public.item", "columns": {"id": 5}}),
    ),
    (
        "replicator.ddl",
        json.dumps(
            {
                "tag": "ALTER TABLE",
                "table": "public.item",
                "query": "ALTER TABLE secret ADD COLUMN stolen int",
            }
        ),
    ),
    (
        "replicator.ddl",
        json.dumps(
            {
                "tag": "ALTER TABLE",
                "table": "public.item",
                "query": "ALTER TABLE item ALTER COLUMN title TYPE int USING length(title)",
            }
        ),
    ),
]


def _status(vars_: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(run_cli(["status", "--json"], vars_).stdout)
    return out


def test_forged_controls_stop_nothing_and_change_nothing_on_the_target(
    env: Env, tmp_path: Path
) -> None:
    for conn in (env.legacy_conn(), env.target_conn()):
        with conn as c:
            c.execute("CREATE TABLE item (id int PRIMARY KEY, title text)")
            c.execute("CREATE TABLE secret (id int PRIMARY KEY)")
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:public.item",
        "REPLICATOR_DRIFT__APPLY_DDL": "true",
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "0.5",
    }
    with Background(["run"], vars_, tmp_path / "run.log") as proc:
        wait_for(
            lambda: (_status(vars_).get("source") or {}).get("slot_active"), 60, what="the pipeline"
        )
        with env.legacy_conn() as c:
            c.execute("INSERT INTO item VALUES (1, 'before')")
            for prefix, content in FORGED:
                c.execute("SELECT pg_logical_emit_message(false, %s, %s)", (prefix, content))
            c.execute("INSERT INTO item VALUES (2, 'after')")

        def landed() -> Any:
            with env.target_conn() as c:
                return c.execute("SELECT id, title FROM item ORDER BY id").fetchall()

        # The rows after the forged messages still arrive: neither capture nor apply stopped.
        assert wait_for(lambda: len(rows := landed()) == 2 and rows, 60, what="rows") == [
            (1, "before"),
            (2, "after"),
        ]
        assert proc.proc.poll() is None, proc.output()[-3000:]
        letters = json.loads(run_cli(["dlq", "list", "--json"], vars_).stdout)
        output = proc.output()
    reasons = sorted(str(x["reason"]) for x in letters)
    assert len(reasons) == 10, reasons  # every malformed control, each with its reason
    assert any("cannot read" in r and "depth limit" in r for r in reasons), reasons
    assert any("cannot read" in r and "surrogate" in r for r in reasons), reasons
    assert any("NUL" in r for r in reasons), reasons
    assert any("on the changes topic" in r for r in reasons), reasons
    with env.target_conn() as c:
        # Neither DDL record ran: one names another table than its statement alters, the
        # other evaluates a USING expression.
        assert c.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'secret'"
        ).fetchone() == (1,)
        assert c.execute(
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_name = 'item' AND column_name = 'title'"
        ).fetchone() == ("text",)
        notes = [
            str(r[0])
            for r in c.execute(
                "SELECT reason FROM replicator.schema_changes ORDER BY id"
            ).fetchall()
        ]
        # The heartbeat dated 2100 was stored as the target's now, and real ones replaced it:
        # the lag is measured by them, not held at zero until 2100.
        ahead = c.execute(
            "SELECT count(*) FROM replicator.heartbeats WHERE emitted_at > now() + interval '1 day'"
        ).fetchone()
    assert ahead == (0,)
    assert any("not replayed on the target: the statement alters secret" in n for n in notes), notes
    assert any("never ownership" in n for n in notes), notes
    assert "Traceback" not in output


def test_a_control_is_stored_in_apply_s_own_transaction_never_committed_ahead_of_it(
    env: Env,
) -> None:
    """A control arriving on a session with no transaction open yet (the rows ahead of it still
    in apply's batch, not flushed) was stored in a transaction of its own, committed at once
    (psycopg's conn.transaction() outside a transaction): a fence marker was then visible to
    the cutover's drain before the rows ahead of it, and the verify found them missing (the
    fault matrix, twice in one CI run). It joins apply's transaction, committed with its rows."""
    import psycopg

    from connectors.envelope import Envelope
    from replicator.apply.controls import act_on_control
    from replicator.state import ensure_schema

    s = env.settings()
    with psycopg.connect(s.target.conninfo(), autocommit=True) as c:
        ensure_schema(c)

    class Worker:  # what act_on_control reads of an apply worker
        topic, changes_topic, snapshot_topic = "t.fwd.changes", "t.fwd.changes", "t.fwd.snapshot"
        _current = (0, 7)
        _marker_waiting = False
        dead: list[Any] = []

        def __init__(self, conn: psycopg.Connection[Any]) -> None:
            self.conn = conn

        def _dead(self, *args: Any) -> None:
            self.dead.append(args)

    def markers(conn: psycopg.Connection[Any]) -> int:
        n = conn.execute("SELECT count(*) FROM replicator.markers WHERE marker_id = 'm1'")
        return int(n.fetchone()[0])  # type: ignore[index]

    with (
        psycopg.connect(s.target.conninfo()) as apply_conn,
        psycopg.connect(s.target.conninfo(), autocommit=True) as drain,
    ):
        worker = Worker(apply_conn)
        marker = {"kind": "marker", "marker": "fence", "id": "m1"}
        act_on_control(worker, Envelope("o", 0, 100, None, control=marker), 0, None)
        assert worker._marker_waiting and not worker.dead
        assert markers(drain) == 0  # not before apply's commit
        apply_conn.commit()
        assert markers(drain) == 1
        # A control the target refuses takes only its savepoint back: apply's transaction and
        # what it wrote before stay.
        bad = {
            "kind": "marker",
            "marker": "fence",
            "id": "m2",
            "emitted_at": "2026-12-08T00:00:00+20:00",
        }
        apply_conn.execute(
            "INSERT INTO replicator.markers (topic, marker_id, partition, kind,"
            " commit_lsn) VALUES ('t', 'm0', 0, 'x', 1)"
        )
        act_on_control(worker, Envelope("o", 0, 101, None, control=bad), 0, None)
        apply_conn.commit()
        assert drain.execute(
            "SELECT marker_id FROM replicator.markers WHERE marker_id IN ('m0', 'm2')"
        ).fetchall() == [("m0",)]
    assert len(Worker.dead) == 1 and "refused" in Worker.dead[0][0].message
