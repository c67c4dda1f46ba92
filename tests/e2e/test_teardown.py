"""`teardown` as an operator runs it once a migration is over."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from connectors.kafka_io import existing_topics
from tests.e2e.cli import Background, run_cli
from tests.support import Env, wait_for

ITEM = "CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL)"


def _count(conn_of: Callable[[], psycopg.Connection[Any]], query: str, *args: Any) -> int:
    with conn_of() as c:
        row = c.execute(query, args).fetchone()
        assert row is not None
        return int(row[0])


def test_teardown_refuses_a_running_pipeline_then_removes_what_it_left(
    env: Env, tmp_path: Path
) -> None:
    for conn in (env.legacy_conn, env.target_conn):
        with conn() as c:
            c.execute(ITEM)
    vars_ = {**env.env_vars(), "REPLICATOR_MAPPING": "identity:public.item"}
    slot = f"{env.name}_fwd"
    slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s"
    origins = "SELECT count(*) FROM pg_replication_origin WHERE roname = ANY(%s)"
    # Another pipeline whose name starts with this one's: its origin is not ours to drop.
    other = f"replicator_{env.name}_fwd_fwd_0"
    with env.target_conn() as c:
        c.execute("SELECT pg_replication_origin_create(%s)", (other,))

    with Background(["run"], vars_, tmp_path / "run.log"):
        with env.legacy_conn() as c:
            wait_for(
                lambda: (
                    c.execute(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
                    ).fetchone()
                    == (True,)
                ),
                60,
                what="the pipeline's slot",
            )
            c.execute("INSERT INTO item VALUES (1, 'one')")
        wait_for(
            lambda: _count(env.target_conn, "SELECT count(*) FROM item") == 1,
            60,
            what="the row on the target",
        )
        busy = run_cli(["teardown", "--yes"], vars_)
        assert busy.returncode == 2, busy.stdout + busy.stderr
        assert f"slot {slot} on legacy is read by process" in busy.stderr
        assert "stop `replicator run`" in busy.stderr
        assert _count(env.legacy_conn, slots, slot) == 1

    dry = run_cli(["teardown", "--dry-run", "--drop-state", "--drop-topics"], vars_)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    for expected in (
        slot,
        f"{env.name}_pub",
        f"replicator_{env.name}_fwd_0",
        f"{env.name}.fwd.changes",
        f"replicator_{env.name}_ddl_drop",  # the DDL capture's event triggers (docs/drift.md)
    ):
        assert expected in dry.stdout
    assert other not in dry.stdout
    assert "nothing was removed" in dry.stdout
    assert _count(env.legacy_conn, slots, slot) == 1

    unconfirmed = run_cli(["teardown"], vars_)
    assert unconfirmed.returncode == 2 and "needs confirmation" in unconfirmed.stderr

    done = run_cli(["teardown", "--yes", "--drop-state", "--drop-topics"], vars_)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _count(env.legacy_conn, slots, slot) == 0
    assert _count(env.legacy_conn, "SELECT count(*) FROM pg_publication") == 0
    assert _count(env.legacy_conn, "SELECT count(*) FROM pg_event_trigger") == 0  # DDL capture
    assert _count(env.target_conn, origins, [f"replicator_{env.name}_fwd_0"]) == 0
    assert _count(env.target_conn, origins, [other]) == 1
    for conn in (env.legacy_conn, env.target_conn):
        assert _count(conn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'replicator'") == 0
    assert _count(env.target_conn, "SELECT count(*) FROM item") == 1  # the data stays
    wait_for(
        lambda: (
            not {f"{env.name}.fwd.changes", f"{env.name}.fwd.dlq"}
            & existing_topics(env.services.kafka)
        ),
        30,
        what="the topics to be deleted",
    )

    again = run_cli(["teardown", "--yes"], vars_)
    assert again.returncode == 0 and "nothing to remove" in again.stdout
