"""Cutover against real PostgreSQL and Kafka with the MCP mapping and a writer running throughout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from replicator.cutover import Cutover
from replicator.errors import CutoverAborted
from replicator.runtime import Pipeline
from replicator.validate import validate
from tests.support import Env, wait_for
from transforms.loader import load_mapping


def _url(env: Env, side: str) -> str:
    db = env.legacy if side == "legacy" else env.target
    return f"postgresql://{db.user}:{db.password.get_secret_value()}@{db.host}:{db.port}/{db.dbname}"


@pytest.fixture
def synced(env: Env) -> Iterator[tuple[Any, Pipeline]]:
    from transforms.mcp_manager.generate import generate
    from transforms.mcp_manager.legacy import create_legacy_schema
    from transforms.mcp_manager.target_schema import apply_target_schema

    create_legacy_schema(_url(env, "legacy"))
    generate(_url(env, "legacy"), scale=1, seed=3)
    apply_target_schema(_url(env, "target"))
    s = env.settings(cutover={"max_lag_s": 5.0, "drain_timeout_s": 20.0})
    pipeline = Pipeline(s, load_mapping("transforms.mcp_manager:MAPPING"))
    pipeline.start()
    try:
        wait_for(lambda: _backfill_applied(env), 120, what="the backfill")
        report = validate(s, pipeline.mapping)
        assert report.outcome == "clean", report
        yield s, pipeline
    finally:
        pipeline.shutdown()


def _backfill_applied(env: Env) -> bool:
    with env.target_conn() as c:
        try:
            row = c.execute("SELECT status FROM replicator.backfill LIMIT 1").fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0] == "applied")


class AuditWriter:
    """The application: audit rows on legacy until it is told the target is the writer."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.on_target = threading.Event()
        self.stop = threading.Event()
        self.legacy_ok: list[str] = []
        self.legacy_failed: list[str] = []
        self.target_ok: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        legacy = self.env.legacy_conn()
        target = self.env.target_conn()
        while not self.stop.is_set():
            n += 1
            tag = f"w{n}"
            if self.on_target.is_set():
                target.execute("INSERT INTO audit_log (action, target, created_at) VALUES (%s, 'x', now())", (tag,))
                self.target_ok.append(tag)
            else:
                try:
                    legacy.execute("INSERT INTO audit_log (action, target, created_at) VALUES (%s, 'x', now())", (tag,))
                    self.legacy_ok.append(tag)
                except psycopg.Error:
                    self.legacy_failed.append(tag)
            time.sleep(0.002)
        legacy.close()
        target.close()

    def __enter__(self) -> AuditWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def _tags(conn: psycopg.Connection[Any]) -> set[str]:
    with conn:
        return {r[0] for r in conn.execute("SELECT action FROM audit_log WHERE action LIKE 'w%'").fetchall()}


def test_cutover_with_a_writer_running_loses_and_splits_nothing(env: Env, synced: Any) -> None:
    s, pipeline = synced
    hook_flag = env.legacy_db + ".switched"
    with AuditWriter(env) as w:
        time.sleep(0.5)
        out = Cutover(s, pipeline.mapping, switch_hook=f"touch /tmp/{hook_flag}").run()
        w.on_target.set()
        time.sleep(0.5)
    assert out.switched and out.pause_s is not None
    assert [st.name for st in out.steps] == ["preflight", "fence", "drain", "verify", "sequences", "reverse slot", "switch"]
    legacy_rows = _tags(env.legacy_conn())
    target_rows = _tags(env.target_conn())
    assert set(w.legacy_ok) == legacy_rows  # a write refused by the fence never committed on legacy
    assert set(w.legacy_ok) <= target_rows  # every write committed before the fence is in the target
    assert set(w.target_ok) <= target_rows and w.target_ok  # after the switch, writes succeed on the target
    with env.legacy_conn() as c, pytest.raises(psycopg.Error, match="fenced"):
        c.execute("INSERT INTO audit_log (action, created_at) VALUES ('late', now())")
    with env.target_conn() as c:
        assert c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (s.slot("rev"),)).fetchone()[0] == 1  # type: ignore[index]
        steps = c.execute("SELECT step FROM replicator.cutover_journal WHERE run_id = %s", (out.run_id,)).fetchall()
        assert len(steps) == 7


def test_failure_at_each_step_leaves_legacy_writable_and_sync_running(env: Env, synced: Any) -> None:
    s, pipeline = synced
    for i, step in enumerate(["preflight", "fence", "drain", "verify", "sequences", "reverse slot", "switch"]):
        with pytest.raises(CutoverAborted) as err:
            Cutover(s, pipeline.mapping, fail_at=step).run()
        assert err.value.step == step
        with env.legacy_conn() as c:
            c.execute("INSERT INTO audit_log (action, created_at) VALUES (%s, now())", (f"after-{i}",))
            assert c.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'replicator_fence'").fetchone()[0] == 0  # type: ignore[index]
        wait_for(lambda: f"after-{i}" in _actions(env), 30, what=f"sync after an abort at {step}")
        with env.target_conn() as c:
            assert c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (s.slot("rev"),)).fetchone()[0] == 0  # type: ignore[index]


def test_dry_run_changes_nothing_and_reports_the_pause(env: Env, synced: Any) -> None:
    s, pipeline = synced
    out = Cutover(s, pipeline.mapping).run(dry_run=True)
    assert not out.switched and out.pause_s is not None and out.pause_s < 30
    assert [st.name for st in out.steps] == ["preflight", "fence", "drain", "verify", "unfence"]
    with env.legacy_conn() as c:
        c.execute("INSERT INTO audit_log (action, created_at) VALUES ('after-dry-run', now())")
    wait_for(lambda: "after-dry-run" in _actions(env), 30, what="sync after the dry run")


def test_preflight_lists_every_reason(env: Env) -> None:
    with env.legacy_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY)")
    s = env.settings(cutover={"max_lag_s": 0.5})
    with pytest.raises(CutoverAborted) as err:
        Cutover(s, load_mapping("identity:public.item")).run()
    text = str(err.value)
    assert "no backfill has run" in text
    assert "lag" in text


def _actions(env: Env) -> set[str]:
    with env.target_conn() as c:
        return {r[0] for r in c.execute("SELECT action FROM audit_log").fetchall()}
