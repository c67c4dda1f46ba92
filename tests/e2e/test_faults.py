"""Issue 5's fault proofs, with the CLI run the way an operator runs it: kill -9 of apply workers
under a continuous write load on related tables, and restarts of the target and of the broker.
After each ordeal the target equals legacy and the insert-only audit rows are counted exactly."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.cli import Background
from tests.support import Env, Services, wait_for

SCHEMA = """
CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL, org int NOT NULL);
CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent ON DELETE CASCADE,
                    note text);
CREATE TABLE audit (id bigserial PRIMARY KEY, what text NOT NULL, at timestamptz NOT NULL);
"""
TABLES = ["parent", "child", "audit"]


def _schema(env: Env) -> None:
    with env.legacy_conn() as c:
        c.execute(SCHEMA)
    with env.target_conn() as c:
        c.execute(SCHEMA)


def _vars(env: Env, **extra: str) -> dict[str, str]:
    return {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:public.parent,public.child,public.audit",
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "1",
        "REPLICATOR_APPLY__BATCH_MAX_WAIT_MS": "20",
        **extra,
    }


class Writer(threading.Thread):
    """The legacy application: parents with children in one transaction, updates, deletes,
    and an audit row per transaction. Keeps going through nothing but its own database."""

    def __init__(self, env: Env) -> None:
        super().__init__(daemon=True)
        self.dsn = env.legacy.conninfo()
        self.stop = threading.Event()
        self.commits = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(5)
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                i = 0
                while not self.stop.is_set():
                    i += 1
                    with c.transaction():
                        c.execute("INSERT INTO parent VALUES (%s, %s, %s)", (i, f"p{i}", i % 7))
                        c.execute("INSERT INTO child VALUES (%s, %s, 'new')", (i, i))
                        if i % 3 == 0:
                            j = rng.randint(1, i)
                            c.execute("UPDATE parent SET name = name || '+' WHERE id = %s", (j,))
                            c.execute(
                                "UPDATE child SET note = %s WHERE parent_id = %s", (f"u{i}", j)
                            )
                        if i % 7 == 0:
                            c.execute("DELETE FROM parent WHERE id = %s", (rng.randint(1, i),))
                        c.execute("INSERT INTO audit (what, at) VALUES (%s, now())", (f"tx{i}",))
                    self.commits += 1
                    time.sleep(0.002)
        except BaseException as exc:  # reported by the test, never swallowed
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        assert self.error is None, self.error


def _snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    with conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in TABLES}


def _converged(env: Env) -> None:
    expected = _snapshot(env.legacy_conn())
    try:
        wait_for(lambda: _snapshot(env.target_conn()) == expected, 120, what="target == legacy")
    except AssertionError:
        raise AssertionError(_difference(expected, _snapshot(env.target_conn()))) from None
    with env.legacy_conn() as c:
        audits = c.execute("SELECT count(*) FROM audit").fetchone()[0]  # type: ignore[index]
    with env.target_conn() as c:
        assert c.execute("SELECT count(*) FROM audit").fetchone()[0] == audits  # type: ignore[index]


def _difference(legacy: dict[str, list[Any]], target: dict[str, list[Any]]) -> str:
    out = []
    for t in TABLES:
        a, b = set(legacy[t]), set(target[t])
        out.append(
            f"{t}: {len(a)} legacy rows, only on legacy {sorted(a - b)[:5]}, "
            f"only on target {sorted(b - a)[:5]}"
        )
    return "target != legacy: " + "; ".join(out)


def _slot_exists(env: Env) -> bool:
    with env.legacy_conn() as c:
        row = c.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (f"{env.name}_fwd",)
        ).fetchone()
    return row is not None


def _applied_rows(env: Env) -> int:
    return _audits(env.target_conn())


@pytest.fixture
def capture(env: Env, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A running `replicator capture` over a 3-partition topic; yields the variables to use."""
    _schema(env)
    vars_ = _vars(env, REPLICATOR_KAFKA__PARTITIONS="3")
    with Background(["capture"], vars_, tmp_path / "capture.log") as cap:
        wait_for(lambda: _slot_exists(env) or cap.proc.poll() is not None, 60, what="the slot")
        assert cap.proc.poll() is None, cap.output()
        yield vars_
        assert cap.proc.poll() is None, cap.output()
        assert "Traceback" not in cap.output()


def test_kill_9_of_apply_workers_five_times_loses_and_duplicates_nothing(
    env: Env, capture: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(11)
    # Two apply processes in one consumer group: each kill also forces a rebalance.
    workers = [Background(["apply"], capture, tmp_path / f"apply{k}.log") for k in range(2)]
    writer = Writer(env)
    writer.start()
    try:
        for n in range(5):
            before = _applied_rows(env)
            wait_for(lambda b=before: _applied_rows(env) > b, 60, what=f"progress before kill {n}")
            time.sleep(rng.uniform(0.2, 2.0))
            k = rng.randrange(2)
            workers[k].kill9()
            assert "Traceback" not in workers[k].output()
            time.sleep(rng.uniform(0.0, 1.0))
            workers[k] = Background(["apply"], capture, tmp_path / f"apply{k}.log")
        writer.finish()
        _converged(env)
    finally:
        writer.stop.set()
        for w in workers:
            w.stop()
    for w in workers:
        assert "Traceback" not in w.output(), w.output()


def test_target_restart_during_load_loses_nothing(
    services: Services, env: Env, tmp_path: Path
) -> None:
    if services.kind != "local":
        pytest.skip("restarts a local PostgreSQL cluster")
    from replicator.local import services as ls

    # A target cluster of its own: restarting the shared one would disturb other tests.
    cluster = ls.start_postgres("faults_target")
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {env.target_db}")
            c.execute(f"CREATE DATABASE {env.target_db}")
        with psycopg.connect(cluster.dsn(env.target_db), autocommit=True) as c:
            c.execute(SCHEMA)
        with env.legacy_conn() as c:
            c.execute(SCHEMA)
        vars_ = _vars(
            env,
            REPLICATOR_TARGET__HOST=cluster.host,
            REPLICATOR_TARGET__PORT=str(cluster.port),
            REPLICATOR_TARGET__PASSWORD=cluster.password,
        )
        target = lambda: psycopg.connect(cluster.dsn(env.target_db), autocommit=True)  # noqa: E731
        writer = Writer(env)
        with Background(["run"], vars_, tmp_path / "run.log") as run:
            wait_for(lambda: _slot_exists(env) or run.proc.poll() is not None, 60, what="the slot")
            writer.start()
            try:
                wait_for(lambda: _audits(target()) > 50, 60, what="apply under way")
                ls.restart_postgres("faults_target", mode="immediate")
                before = writer.commits
                wait_for(lambda: writer.commits > before + 200, 60, what="writes after restart")
                writer.finish()
                expected = _snapshot(env.legacy_conn())
                wait_for(lambda: _snapshot(target()) == expected, 120, what="target == legacy")
            finally:
                writer.stop.set()
            assert run.proc.poll() is None, run.output()
        assert "Traceback" not in run.output(), run.output()
    finally:
        ls.destroy_postgres("faults_target")


def _audits(conn: psycopg.Connection[Any]) -> int:
    with conn:
        return int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])  # type: ignore[index]


@pytest.mark.exclusive  # restarts the shared broker: run-tests.sh runs it alone
def test_broker_restart_during_load_loses_nothing(
    services: Services, env: Env, tmp_path: Path
) -> None:
    if services.kind != "local":
        pytest.skip("restarts the local Kafka broker")
    from replicator.local import services as ls

    _schema(env)
    vars_ = _vars(env)
    writer = Writer(env)
    with Background(["run"], vars_, tmp_path / "run.log") as run:
        wait_for(lambda: _slot_exists(env) or run.proc.poll() is not None, 60, what="the slot")
        writer.start()
        try:
            wait_for(lambda: _applied_rows(env) > 50, 60, what="apply under way")
            ls.stop_kafka(kill=True)
            time.sleep(2)  # writes pile up in the WAL while the broker is gone
            ls.start_kafka()
            before = writer.commits
            wait_for(lambda: writer.commits > before + 200, 60, what="writes after the restart")
            writer.finish()
            try:
                _converged(env)
            except AssertionError as exc:  # what the replicator logged says why
                raise AssertionError(
                    f"{exc}\n--- replicator run ---\n{run.output()[-6000:]}"
                ) from None
        finally:
            writer.stop.set()
            ls.start_kafka()
        assert run.proc.poll() is None, run.output()
    assert "Traceback" not in run.output(), run.output()
