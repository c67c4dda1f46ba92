"""/healthz and /readyz of the long-running commands, as a kubelet's probes see them."""

from __future__ import annotations

import os
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

from tests.e2e.cli import Background
from tests.support import Env, wait_for

ITEM = "CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str] | None:
    """(status, body), or None while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return None


def test_run_is_live_throughout_and_ready_once_it_syncs(env: Env, tmp_path: Path) -> None:
    with env.legacy_conn() as c:
        c.execute(ITEM)
    with env.target_conn() as c:
        c.execute(ITEM)
    port = _free_port()
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:public.item",
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "0.5",
        "REPLICATOR_METRICS__PORT": str(port),
    }
    with Background(["run"], vars_, tmp_path / "run.log") as proc:
        # The endpoints answer before the pipeline is up, and say it is not ready yet.
        first = wait_for(
            lambda: _get(port, "/readyz") or proc.proc.poll() is not None, 60, 0.02, "/readyz"
        )
        assert first is not True, proc.output()
        assert first[0] == 503 and first[1].strip(), first

        answers: list[tuple[int, str]] = []

        def ready() -> bool:
            live, rd = _get(port, "/healthz"), _get(port, "/readyz")
            assert live is not None and rd is not None, proc.output()
            answers.append(live)
            return rd[0] == 200 and rd[1] == "ok\n"

        wait_for(ready, 60, 0.1, "/readyz 200")
        assert all(a == (200, "ok\n") for a in answers), answers

        # Ready means synced: a change made now arrives.
        with env.legacy_conn() as c:
            c.execute("INSERT INTO item VALUES (1, 'after ready')")
        with env.target_conn() as c:
            wait_for(
                lambda: c.execute("SELECT count(*) FROM item").fetchone() == (1,), 30, what="row"
            )
        assert _get(port, "/readyz") == (200, "ok\n")
        metrics = _get(port, "/metrics")
        assert metrics is not None and "replicator_part_up{" in metrics[1]
    out = proc.output()
    assert "Traceback" not in out, out


def test_apply_is_live_but_not_ready_while_the_target_is_unreachable(
    env: Env, tmp_path: Path
) -> None:
    port = _free_port()
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:public.item",
        "REPLICATOR_METRICS__PORT": str(port),
        "REPLICATOR_TARGET__PORT": "1",  # nothing listens there
    }
    with Background(["apply"], vars_, tmp_path / "apply.log") as proc:

        def reason() -> str | bool:
            rd = _get(port, "/readyz")
            if proc.proc.poll() is not None:
                return True
            # "apply-0: starting" first, then what the worker is waiting for.
            return rd is not None and rd[0] == 503 and "retrying" in rd[1] and rd[1]

        body = wait_for(reason, 60, 0.1, "/readyz to name the apply worker's problem")
        assert body is not True, proc.output()
        assert body.startswith("apply-0: ") and ":1/" in body, body  # the target, as configured
        assert env.target.password.get_secret_value() not in body
        assert _get(port, "/healthz") == (200, "ok\n")  # an outage is no reason to restart
        assert proc.proc.poll() is None
    assert "Traceback" not in proc.output()


def _spawned_children(pid: int) -> list[int]:
    # Every thread's: a worker process is started by its stage's thread.
    children = [
        c for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()
    ]
    return [
        int(c)
        for c in children
        if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()  # not the resource tracker
    ]


def test_a_wedged_apply_process_fails_liveness_until_it_moves_again(
    env: Env, tmp_path: Path
) -> None:
    with env.legacy_conn() as c:
        c.execute(ITEM)
    with env.target_conn() as c:
        c.execute(ITEM)
    port = _free_port()
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:public.item",
        "REPLICATOR_METRICS__PORT": str(port),
        "REPLICATOR_METRICS__STALL_AFTER_S": "4",
    }
    with Background(["run"], vars_, tmp_path / "run.log") as proc:
        wait_for(lambda: _get(port, "/readyz") == (200, "ok\n"), 60, 0.1, "/readyz 200")
        (child,) = _spawned_children(proc.proc.pid)  # `run`'s apply worker process
        os.kill(child, signal.SIGSTOP)  # wedged: alive, its loop no longer comes round
        try:
            live = wait_for(
                lambda: (r := _get(port, "/healthz")) is not None and r[0] == 503 and r[1],
                30,
                0.2,
                "/healthz 503",
            )
            assert live.startswith("apply-0: no progress for "), live
            rd = _get(port, "/readyz")
            assert rd is not None and rd[0] == 503 and "apply-0: no progress" in rd[1]
        finally:
            os.kill(child, signal.SIGCONT)
        wait_for(lambda: _get(port, "/healthz") == (200, "ok\n"), 30, 0.2, "/healthz 200 again")
        wait_for(lambda: _get(port, "/readyz") == (200, "ok\n"), 60, 0.2, "/readyz 200 again")
    assert "Traceback" not in proc.output()
