"""Scale-out during the initial backfill: two `replicator apply` processes over a partitioned
changes topic, one killed while the snapshot loads. The survivor takes the snapshot (and every
partition held at the backfill's marker) over; the target converges with nothing lost.

It found a worker held at the marker that asked the target whether the snapshot phase had begun
only when a poll came back empty — never, while a writer's changes kept arriving: the survivor
then held its partitions for good (2 runs in 8 before the fix)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from tests.e2e.cli import Background
from tests.e2e.test_cluster_faults import _toml
from tests.e2e.test_faults import Writer, _converged, _schema, _slot_exists, _vars
from tests.support import Env, wait_for, wait_progressing


def _backfill(env: Env) -> tuple[str, int] | None:
    with env.target_conn() as c:
        try:
            row = c.execute(
                "SELECT b.status, coalesce(sum(p.rows_applied), 0) FROM replicator.backfill b"
                " LEFT JOIN replicator.backfill_progress p ON p.backfill_id = b.id GROUP BY b.id"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return (str(row[0]), int(row[1])) if row else None


@pytest.mark.parametrize("victim", [0, 1])
def test_an_apply_process_killed_during_the_backfill_leaves_it_to_the_other(
    env: Env, tmp_path: Path, victim: int
) -> None:
    _schema(env)
    with env.legacy_conn() as c:
        # Ids far above the writer's (it counts from 1).
        rows = "generate_series(10000001, 10400000) g"
        c.execute(f"INSERT INTO parent SELECT g, 'p' || g, g % 7 FROM {rows}")
        c.execute(f"INSERT INTO child SELECT g, g, 'c' FROM {rows}")
    vars_ = _vars(
        env,
        REPLICATOR_KAFKA__PARTITIONS="4",
        REPLICATOR_BACKFILL__CHUNK_ROWS="2000",
    )
    configs = [_toml(vars_, tmp_path / f"host{k}.toml") for k in (1, 2)]
    writer = Writer(env)
    with Background(["capture"], vars_, tmp_path / "capture.log") as cap:
        wait_for(lambda: _slot_exists(env) or cap.proc.poll() is not None, 90, what="the slot")
        hosts = [
            Background(["apply", "-c", str(c)], {}, tmp_path / f"{c.stem}.log") for c in configs
        ]
        try:
            writer.start()
            try:
                wait_for(
                    lambda: (b := _backfill(env)) is not None and b[0] == "snapshot",
                    120,
                    what="the snapshot loading",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {_backfill(env)}\n{cap.output()[-3000:]}") from None
            hosts[victim].kill9()
            killed = time.monotonic()
            try:
                wait_progressing(
                    lambda: _backfill(env),
                    lambda b: b is not None and b[0] == "applied",
                    stall=60,
                    what="the survivor to finish the backfill (status, rows loaded)",
                )
            except AssertionError as exc:
                with env.target_conn() as c:
                    state = c.execute(
                        "SELECT topic, partition, next_offset FROM replicator.offsets ORDER BY 1, 2"
                    ).fetchall()
                    barrier = c.execute("SELECT * FROM replicator.backfill_barrier").fetchall()
                raise AssertionError(
                    f"{exc}\noffsets {state}\nbarrier {barrier}\n--- survivor ---\n"
                    f"{hosts[1 - victim].output()[-5000:]}"
                ) from None
            took = time.monotonic() - killed
            writer.finish()
            try:
                _converged(env)
            except AssertionError as exc:
                logs = "\n".join(h.output()[-3000:] for h in hosts)
                raise AssertionError(f"{exc}\n--- apply ---\n{logs}") from None
            print(f"\nbackfill applied {took:.1f} s after the kill of apply process {victim}")
        finally:
            writer.stop.set()
            for h in hosts:
                h.stop()
        assert cap.proc.poll() is None, cap.output()
    survivor = hosts[1 - victim].output()
    assert "Traceback" not in survivor, survivor
