"""The application under a switch: a paced writer, and a pipeline synced the way an operator
would have it before a cutover. Shared by ``bench.cutover`` and ``bench.rollback``.

The writer inserts one ``audit_log`` row per transaction (autocommit) at a steady rate on
whichever side is the writer, and records every attempt: its tag, the side, whether it was
acknowledged, and when the acknowledgement came back. The write pause is what the application
sees: the first acknowledged commit on the new side minus the last one on the old side. A write
refused by the fence (an error) is not acknowledged, so the application knows to retry it; a lost
write is an *acknowledged* one missing from either side once sync has caught up.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import log
from replicator.cutover.switch import Cutover
from replicator.validate.run import validate
from tests.e2e.cli import Background
from tests.support import Env, wait_for
from transforms.api import MappingSet
from transforms.loader import load_mapping

MAPPING_REF = "transforms.mcp_manager:MAPPING"
INSERT = "INSERT INTO audit_log (action, target, created_at) VALUES (%s, 'bench', now())"


@dataclass(frozen=True)
class Write:
    tag: str
    side: str  # "legacy" | "target"
    ok: bool
    at: float  # monotonic time the statement returned (acknowledged, or refused)


class PacedWriter:
    """One row per transaction at ``rate`` tx/s on the current side, until stopped, from
    ``connections`` sessions (threads) each writing ``rate / connections`` on a schedule offset
    from the others', as an application's connection pool would.

    The schedule is absolute (``start + n / rate``), so a slow statement is caught up after
    rather than lowering the rate; a backlog longer than 50 ms is dropped instead of burst, as
    an application whose requests time out would."""

    def __init__(
        self,
        env: Env,
        *,
        side: str = "legacy",
        rate: float = 500.0,
        prefix: str = "w",
        connections: int = 1,
    ) -> None:
        self.env = env
        self.rate = rate
        self.prefix = prefix
        self.side = side
        self.connections = max(1, connections)
        self.writes: list[Write] = []  # appended by every thread (list.append is atomic)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"writer-{i}", daemon=True)
            for i in range(self.connections)
        ]
        self.error: BaseException | None = None

    def switch_to(self, side: str) -> None:
        """What the operator's switch hook does: point the application at ``side``."""
        self.side = side

    def _run(self, index: int) -> None:
        try:
            conns = {"legacy": self.env.legacy_conn(), "target": self.env.target_conn()}
        except BaseException as exc:
            self.error = exc
            return
        period, n = self.connections / self.rate, 0
        # One writer keeps its tags as they were; several name theirs by writer.
        prefix = self.prefix if self.connections == 1 else f"{self.prefix}{index}-"
        start = self._start + index * period / self.connections
        try:
            while not self._stop.is_set():
                due = start + n * period
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                elif now - due > 0.05:
                    n = int((now - start) / period)  # drop the backlog rather than burst
                n += 1
                side = self.side
                tag = f"{prefix}{n}"
                try:
                    conns[side].execute(INSERT, (tag,))
                    ok = True
                except psycopg.Error:
                    ok = False  # refused (fenced): the application would retry it
                self.writes.append(Write(tag, side, ok, time.monotonic()))
        finally:
            for c in conns.values():
                c.close()

    def __enter__(self) -> PacedWriter:
        self._start = time.monotonic() + 0.2  # every session connected before the first write
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    # -- what the run shows ------------------------------------------------------------------

    def acked(self, side: str | None = None) -> list[Write]:
        return [w for w in self.writes if w.ok and (side is None or w.side == side)]

    def pause(self, old: str, new: str) -> float:
        """Last acknowledged commit on ``old`` → first acknowledged commit on ``new``."""
        olds = [w.at for w in self.acked(old)]
        news = [w.at for w in self.acked(new) if olds and w.at > max(olds)]
        if not news:
            raise SystemExit(f"no acknowledged write on {old} followed by one on {new}")
        return min(news) - max(olds)

    def attempted_rate(self) -> float:
        """Transactions attempted per second (refused ones included): the load that was offered."""
        if len(self.writes) < 2:
            return 0.0
        ats = [w.at for w in self.writes]
        return len(ats) / (max(ats) - min(ats))


def tags_on(conn: psycopg.Connection[Any], prefix: str) -> set[str]:
    with conn:
        rows = conn.execute(
            "SELECT action FROM audit_log WHERE action LIKE %s", (prefix + "%",)
        ).fetchall()
    return {str(r[0]) for r in rows}


def lost_writes(env: Env, writer: PacedWriter, timeout: float = 60.0) -> int:
    """Acknowledged writes missing from either side once sync has had ``timeout`` to deliver
    them (writes after the switch reach the old side through the newly armed stream)."""
    acked = {w.tag for w in writer.acked()}

    def missing() -> int:
        on_legacy = tags_on(env.legacy_conn(), writer.prefix)
        on_target = tags_on(env.target_conn(), writer.prefix)
        return len(acked - on_legacy) + len(acked - on_target)

    deadline = time.monotonic() + timeout
    left = missing()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = missing()
    return left


class InProcessSwitch(Cutover):
    """A cutover whose switch hook is a call, not a command: it points the writer at the new
    side the moment the hook would run, so the measured pause excludes the hook's own time."""

    def __init__(self, *args: Any, on_switch: Callable[[], None], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._on_switch = on_switch

    def _run_hook(self) -> None:
        self._on_switch()


class SyncedPipeline:
    """``replicator run`` as its own process (its threads do not share the writer's GIL) over the
    MCP schemas at ``scale``, backfilled and validated clean: what a cutover's preflight wants."""

    def __init__(self, env: Env, scale: int) -> None:
        self.env = env
        self.scale = scale
        self.settings = env.settings(cutover={"max_lag_s": 5.0, "drain_timeout_s": 30.0})
        self._dir = tempfile.TemporaryDirectory(prefix="bench-run-")
        self.proc: Background | None = None
        self.mapping: MappingSet = load_mapping(MAPPING_REF)

    def __enter__(self) -> SyncedPipeline:
        env = self.env
        env.mcp_schemas(scale=self.scale, seed=1)
        vars_ = {
            **env.env_vars(),
            "REPLICATOR_MAPPING": MAPPING_REF,
            "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "1",
            "REPLICATOR_CAPTURE__STATUS_INTERVAL_S": "0.5",
            "REPLICATOR_APPLY__BATCH_MAX_WAIT_MS": "20",
        }
        self.proc = Background(["run"], vars_, Path(self._dir.name) / "run.log")
        try:
            wait_for(self._backfilled, 180, what="the backfill")
            report = validate(self.settings, self.mapping)
            if report.outcome != "clean":
                raise SystemExit(f"validation before the switch is not clean: {report.outcome}")
        except BaseException:
            self.__exit__()  # `with` does not exit what failed to enter: no orphan process
            raise
        return self

    def _backfilled(self) -> bool:
        assert self.proc is not None
        if self.proc.proc.poll() is not None:
            raise SystemExit(f"`replicator run` exited:\n{self.proc.output()[-3000:]}")
        with self.env.target_conn() as c:
            try:
                row = c.execute("SELECT status FROM replicator.backfill LIMIT 1").fetchone()
            except psycopg.Error:
                return False
        return bool(row and row[0] == "applied")

    def wait_flowing(self, writer: PacedWriter, timeout: float = 60.0) -> None:
        """Wait until the writer's latest acknowledged write reached the other side too: the
        pipeline has followed the switch and the new direction runs end to end."""
        last = writer.acked()[-1]
        other = self.env.target_conn if last.side == "legacy" else self.env.legacy_conn
        wait_for(
            lambda: last.tag in tags_on(other(), writer.prefix),
            timeout,
            what=f"{last.side}'s writes through the {'forward' if last.side == 'legacy' else 'reverse'} stream",
        )

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            code, self.proc = self.proc.stop(), None
            out = (Path(self._dir.name) / "run.log").read_text(errors="replace")
            if "Traceback" in out or code not in (0, -15, 143):
                log(f"`replicator run` exited with {code}:\n{out[-3000:]}")
        self._dir.cleanup()
