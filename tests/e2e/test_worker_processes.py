"""`replicator run` applies in a child process; a kill -9 of the command takes the child with it
(no orphan keeps applying beside the next run), and the next run loses nothing."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.e2e.cli import Background
from tests.support import Env, wait_for


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has stopped; only its reaping is left


def _rows(env: Env, which: str) -> list[tuple[object, ...]]:
    conn = env.legacy_conn() if which == "legacy" else env.target_conn()
    with conn as c:
        return c.execute("SELECT id, v FROM item ORDER BY id").fetchall()


def test_kill_9_of_run_takes_its_apply_process_with_it(env: Env, tmp_path: Path) -> None:
    for conn in (env.legacy_conn(), env.target_conn()):
        with conn as c:
            c.execute("CREATE TABLE item (id int PRIMARY KEY, v text NOT NULL)")
    vars_ = {**env.env_vars(), "REPLICATOR_MAPPING": "identity:public.item"}
    first = Background(["run"], vars_, tmp_path / "run1.log")
    try:
        with env.legacy_conn() as c:
            c.execute("INSERT INTO item SELECT g, 'a' FROM generate_series(1, 100) g")
        wait_for(lambda: _rows(env, "target") == _rows(env, "legacy"), 90, what="the first rows")
        workers = [
            p
            for p in _children(first.proc.pid)
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        assert workers, "no apply worker process under `replicator run`"
        os.kill(first.proc.pid, signal.SIGKILL)  # the command alone, not its process group
        first.proc.wait()
        wait_for(lambda: not any(_alive(p) for p in workers), 30, what="the orphaned worker")
    finally:
        first.stop()
    with env.legacy_conn() as c:
        c.execute("UPDATE item SET v = 'b' WHERE id % 2 = 0")
        c.execute("INSERT INTO item SELECT g, 'c' FROM generate_series(101, 150) g")
    with Background(["run"], vars_, tmp_path / "run2.log") as second:
        wait_for(lambda: _rows(env, "target") == _rows(env, "legacy"), 90, what="convergence")
        assert second.proc.poll() is None, second.output()
    assert "Traceback" not in second.output(), second.output()
