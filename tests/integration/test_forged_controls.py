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
