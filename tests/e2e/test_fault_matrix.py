"""The switch's fault matrix: each fault kind at each step boundary of a cutover and of a
rollback, under writers, against the real implementation (the CLI's own process for signals).

After the fault, and again after the documented recovery (the same command run again when a
decision is pending, else ``replicator recover``), every cell asserts:

- **I1** at every sampled instant (every few ms, fault and recovery included) at most one
  database is unfenced;
- **I2** after recovery exactly one database takes the application role's writes, and
  ``status`` names that one with nothing flagged;
- **I3** every write the application committed, on whichever side took it, is on the final
  writer;
- **I4** both sides' table privileges are exactly what they were before the cell.

The application writes as its own role, which holds its privileges through a group role (the
fence must revoke them from the group and give them back there). Two writers run throughout:
the *current* one follows the switch hook (it writes to the new side once the hook has begun),
the *stale* one keeps writing to the old side (an instance that never heard of the switch).

Before the matrix the pipeline goes through one clean cutover and rollback, so the target is
fenced as it is after any rollback: a target that has never been the writer is not fenced by
the replicator, and I1 there is the application's (docs/cutover.md).

The matrix prints itself as a table. Marked ``faults``: `./run-tests.sh -m "not faults"`
leaves it out of a quick local run; CI runs it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from replicator.config import Settings
from replicator.cutover import faults, recover
from replicator.cutover.switch import Cutover
from replicator.errors import ReplicatorError
from replicator.runtime.pipeline import Pipeline
from replicator.status import collect
from replicator.validate.run import validate
from tests.e2e.cli import run_cli
from tests.support import Env, Services, isolated_env, wait_for
from transforms.loader import load_mapping

pytestmark = [pytest.mark.e2e, pytest.mark.faults]
SUMMARY: list[str] = []  # the matrix as a table, for the session's terminal summary

STEP_POINTS = [
    "preflight",
    "arm",
    "pre-verify",
    "catch-up",
    "fence",
    "fence:locking",
    "drain",
    "verify",
    "decide",
    "decide:new",
    "switch",
    "switch:hook",
    "finish",
    "finish:source",
]
# The expensive kinds where what they leave behind differs: before anything is blocked, in the
# fence's lock wait, in the pause, between the two decisions, in the hook, after it.
SIGNAL_POINTS = [
    "arm",
    "fence:locking",
    "drain",
    "verify",
    "decide",
    "decide:new",
    "switch:hook",
    "finish:source",
]
SIGKILL_POINTS = [
    "arm",
    "catch-up",
    "fence:locking",
    "drain",
    "verify",
    "decide",
    "decide:new",
    "switch:hook",
    "finish",
    "finish:source",
]
DROP_OLD_POINTS = ["fence:locking", "drain", "verify", "decide", "decide:new", "finish"]
DROP_NEW_POINTS = ["drain", "verify", "decide", "decide:new", "finish"]
# A hook that says it did not switch, one that hangs after switching, one that cannot run, one
# killed (OOM, a signal) after switching: killed or timed out, it may have switched.
HOOK_KINDS = ["hook-fails", "hook-hangs", "hook-refused", "hook-killed"]


@dataclass(frozen=True)
class Cell:
    action: str
    point: str
    kind: str

    @property
    def old(self) -> str:
        return "legacy" if self.action == "cutover" else "target"

    @property
    def new(self) -> str:
        return "target" if self.action == "cutover" else "legacy"

    def __str__(self) -> str:
        return f"{self.action}:{self.point}:{self.kind}"


def _cells() -> list[Cell]:
    out = []
    for action in ("cutover", "rollback"):
        out += [Cell(action, p, "raise") for p in STEP_POINTS]
        out += [Cell(action, p, "sigkill") for p in SIGKILL_POINTS]
        out += [Cell(action, p, "sigterm") for p in SIGNAL_POINTS]
        out += [Cell(action, p, "drop-old") for p in DROP_OLD_POINTS]
        out += [Cell(action, p, "drop-new") for p in DROP_NEW_POINTS]
        out += [Cell(action, "switch:hook", k) for k in HOOK_KINDS]
    return out


@dataclass
class Row:
    cell: Cell
    left: str = ""  # what the fault left: writer, decision
    recovery: str = ""
    final: str = ""
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


@dataclass
class World:
    env: Env
    s: Settings
    pipeline: Pipeline
    role: str
    group: str
    tmp: Path
    rows: list[Row] = field(default_factory=list)
    first_acl: dict[str, list[tuple[str, str]]] | None = None
    writer_acl: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def conn(self, side: str, *, app: bool = False) -> psycopg.Connection[Any]:
        db = self.env.legacy if side == "legacy" else self.env.target
        if app:
            return psycopg.connect(
                db.conninfo(user=self.role, password="app-secret"), autocommit=True
            )
        return psycopg.connect(db.conninfo(), autocommit=True)


def _grant(w: World) -> None:
    for side in ("legacy", "target"):
        with w.conn(side) as c:
            c.execute(f'CREATE ROLE "{w.group}" NOLOGIN')
            c.execute(f'CREATE ROLE "{w.role}" LOGIN PASSWORD \'app-secret\' IN ROLE "{w.group}"')
            c.execute(
                f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{w.group}"'
            )
            c.execute(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{w.group}"')


def _drop_roles(w: World) -> None:
    for side in ("legacy", "target"):
        with contextlib.suppress(psycopg.Error), w.conn(side) as c:
            for r in (w.role, w.group):
                c.execute(f'DROP OWNED BY "{r}"; DROP ROLE "{r}"')


def _direction_of(writer: str) -> str:
    return "fwd" if writer == "legacy" else "rev"


def _follow(w: World, writer: str) -> None:
    d = _direction_of(writer)
    wait_for(
        lambda: w.pipeline.direction == d and bool(w.pipeline.workers),
        60,
        what=f"the pipeline to run {d}",
    )


@pytest.fixture(scope="module")
def world(services: Services) -> Iterator[World]:
    with isolated_env(services) as env, tempfile.TemporaryDirectory() as tmp:
        env.mcp_schemas(scale=1, seed=5)
        role, group = f"app_{env.name}", f"appw_{env.name}"
        s = env.settings(
            cutover={
                "max_lag_s": 10.0,
                "drain_timeout_s": 20.0,
                "app_roles": [role],
                "hook_timeout_s": 1.5,
            }
        )
        pipeline = Pipeline(s, load_mapping("transforms.mcp_manager:MAPPING"))
        w = World(env, s, pipeline, role, group, Path(tmp))
        _grant(w)
        pipeline.start()
        try:
            wait_for(lambda: _backfill_applied(w), 120, what="the backfill")
            assert validate(s, pipeline.mapping).outcome == "clean"
            # One clean round: the target ends fenced, as after any rollback. Each side's
            # privileges while it is the writer are noted: I4 for a switched cell.
            assert Cutover(s, pipeline.mapping).run().switched
            _follow(w, "target")
            w.writer_acl["target"] = _acl(w)["target"]
            assert Cutover(s, pipeline.mapping, action="rollback").run().switched
            _follow(w, "legacy")
            w.writer_acl["legacy"] = _acl(w)["legacy"]
            yield w
        finally:
            pipeline.shutdown()
            SUMMARY[:] = _matrix_lines(w.rows)  # printed by tests/conftest.py at the end
            _drop_roles(w)


def _backfill_applied(w: World) -> bool:
    with w.conn("target") as c:
        try:
            row = c.execute("SELECT status FROM replicator.backfill LIMIT 1").fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0] == "applied")


# -- what runs beside a cell ---------------------------------------------------------------------


class Monitor:
    """Samples both sides' fence every few ms: I1 is that never both are unfenced."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.stop = threading.Event()
        self.samples = 0
        self.both_open: list[float] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._guarded, daemon=True)

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # a monitor that died would prove nothing: say so
            self.error = exc

    def _run(self) -> None:
        q = "SELECT count(*) FROM pg_trigger WHERE tgname = 'replicator_fence'"
        with self.w.conn("legacy") as lc, self.w.conn("target") as tc:
            while not self.stop.is_set():
                legacy = lc.execute(q).fetchone()[0]  # type: ignore[index]
                target = tc.execute(q).fetchone()[0]  # type: ignore[index]
                self.samples += 1
                if not legacy and not target:
                    self.both_open.append(time.monotonic())
                time.sleep(0.003)

    def __enter__(self) -> Monitor:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


class Writers:
    """The application: a current writer that follows the hook, a stale one on the old side."""

    def __init__(self, w: World, cell: Cell, flag: Path) -> None:
        self.w, self.cell, self.flag = w, cell, flag
        self.stop = threading.Event()
        self.committed: dict[str, str] = {}  # tag → side
        self.attempts = 0
        self.threads = [
            threading.Thread(target=self._run, args=("c",), daemon=True),
            threading.Thread(target=self._run, args=("s",), daemon=True),
        ]

    def _side(self, who: str) -> str:
        if who == "s":
            return self.cell.old
        return self.cell.new if self.flag.exists() else self.cell.old

    def _run(self, who: str) -> None:
        conns: dict[str, psycopg.Connection[Any]] = {}
        n = 0
        try:
            while not self.stop.is_set():
                side = self._side(who)
                n += 1
                tag = f"m-{self.cell}-{who}{n}"
                try:
                    if side not in conns or conns[side].closed:
                        conns[side] = self.w.conn(side, app=True)
                    conns[side].execute(
                        "INSERT INTO audit_log (action, target, created_at) VALUES (%s, 'x', now())",
                        (tag,),
                    )
                    self.committed[tag] = side
                except psycopg.Error:
                    pass  # refused (fenced, revoked) or cut: not committed
                self.attempts += 1
                time.sleep(0.004)
        finally:
            for c in conns.values():
                c.close()

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


# -- one cell ------------------------------------------------------------------------------------


def _acl(w: World) -> dict[str, list[tuple[str, str]]]:
    q = (
        "SELECT c.relname, array(SELECT x::text FROM unnest(c.relacl) x ORDER BY 1)::text"
        " FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'"
        " ORDER BY 1"
    )
    out = {}
    for side in ("legacy", "target"):
        with w.conn(side) as c:
            out[side] = [(str(a), str(b)) for a, b in c.execute(q).fetchall()]
    return out


def _accepts(w: World, side: str) -> bool:
    """Does ``side`` take the application role's writes now (in a transaction rolled back)?"""
    try:
        with w.conn(side, app=True) as c:
            c.autocommit = False
            c.execute("INSERT INTO audit_log (action, created_at) VALUES ('probe', now())")
            c.rollback()
            return True
    except psycopg.Error:
        return False


def _hook(w: World, cell: Cell, flag: Path) -> str:
    script = w.tmp / f"hook-{abs(hash(str(cell)))}.sh"
    body = {
        "hook-fails": "echo not switched >&2; exit 3",
        "hook-hangs": f"touch '{flag}'; sleep 30",
        "hook-killed": f"touch '{flag}'; kill -KILL $$",
    }.get(cell.kind, f"touch '{flag}'")
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    if cell.kind == "hook-refused":
        return str(w.tmp / "no-such-hook")
    return str(script)


def _run_faulty(w: World, cell: Cell, hook: str) -> str:
    """The switch with the cell's fault; returns how it ended, in words."""
    if cell.kind in ("sigkill", "sigterm"):
        env = {
            **w.env.env_vars(),
            "REPLICATOR_CUTOVER__MAX_LAG_S": "10",
            "REPLICATOR_CUTOVER__DRAIN_TIMEOUT_S": "20",
            "REPLICATOR_CUTOVER__HOOK_TIMEOUT_S": "1.5",
            "REPLICATOR_CUTOVER__APP_ROLES": f'["{w.role}"]',
            "REPLICATOR_CUTOVER_FAULT": f"{cell.point}={cell.kind}",
        }
        r = run_cli([cell.action, "--yes", "--switch-hook", hook], env, timeout=120)
        if cell.point.endswith(":locking"):
            assert faults.WAITED in r.stderr, r.stderr  # the fault hit the wait it names
        if cell.kind == "sigkill":
            assert r.returncode == -signal.SIGKILL, (r.returncode, r.stdout, r.stderr)
        else:
            assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        return f"exit {r.returncode}"
    fault_env = (
        {}
        if cell.kind.startswith("hook-")
        else {"REPLICATOR_CUTOVER_FAULT": f"{cell.point}={cell.kind}"}
    )
    old = {k: os.environ.get(k) for k in fault_env}
    os.environ.update(fault_env)
    landed = len(faults.LANDED)
    try:
        out = Cutover(w.s, w.pipeline.mapping, action=cell.action, switch_hook=hook).run()
        return "switched" if out.switched else "not switched"
    except ReplicatorError as exc:
        return f"error at {getattr(exc, 'step', '?')}"
    finally:
        if cell.point.endswith(":locking") and cell.kind != "raise":
            assert faults.LANDED[landed:] == [faults.WAITED], faults.LANDED
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _recover(w: World, cell: Cell, good_hook: str) -> str:
    st = recover.read_state(w.s)
    if st.decision is not None:
        out = Cutover(
            w.s, w.pipeline.mapping, action=st.decision["action"], switch_hook=good_hook
        ).run()
        assert out.switched
        return f"rerun {st.decision['action']}"
    if st.writer is None or st.problems:
        r = run_cli(["recover", "--yes"], {**w.env.env_vars()}, timeout=60)
        assert r.returncode == 0, (r.stdout, r.stderr)
        return "recover"
    return "none needed"


def _check(w: World, row: Row, baseline: dict[str, Any], mon: Monitor, writers: Writers) -> None:
    cell, fail = row.cell, row.failures
    if mon.error is not None or mon.samples < 10:
        fail.append(f"I1 unproven: the monitor took {mon.samples} samples ({mon.error!r})")
    if mon.both_open:
        fail.append(f"I1: both sides unfenced in {len(mon.both_open)} of {mon.samples} samples")
    accepting = [side for side in ("legacy", "target") if _accepts(w, side)]
    st = collect(w.s)
    named = (st.writer or {}).get("writer")
    problems = (st.writer or {}).get("problems")
    row.final = ",".join(accepting) or "none"
    if len(accepting) != 1:
        fail.append(f"I2: {len(accepting)} sides take writes ({accepting})")
    elif named != accepting[0] or problems:
        fail.append(f"I2: status names {named!r} ({problems}), the writer is {accepting[0]}")
    if len(accepting) == 1:
        final = accepting[0]
        _follow(w, final)
        want = set(writers.committed)

        def present() -> set[str]:
            with w.conn(final) as c:
                rows = c.execute(
                    "SELECT action FROM audit_log WHERE action LIKE %s", (f"m-{cell}-%",)
                ).fetchall()
            return {r[0] for r in rows}

        with contextlib.suppress(AssertionError):
            wait_for(lambda: want <= present(), 30, what="the writes on the final writer")
        lost = want - present()
        if lost:
            fail.append(
                f"I3: {len(lost)} committed write(s) missing on {final}: {sorted(lost)[:3]}"
            )
    acl = _acl(w)
    if row.final == cell.old and acl != baseline:
        fail.append("I4: table privileges differ from before the cell")
    if row.final == cell.new:
        # Switched: the new writer's privileges as they were when it last was the writer; the
        # old side's application writes revoked (given back by the switch that makes it the
        # writer again: the last test of this module checks the round trip).
        if acl[cell.new] != w.writer_acl[cell.new]:
            fail.append(f"I4: {cell.new}'s privileges differ from when it was the writer")
        with w.conn(cell.old) as c:
            left = c.execute(
                "SELECT count(*) FROM unnest(%s::text[]) t"
                " WHERE has_table_privilege(%s, t, 'INSERT')",
                (["public.audit_log", "public.mcp_server"], w.role),
            ).fetchone()
        if left and left[0]:
            fail.append(f"I4: the application role still writes to {cell.old}")


def _ensure_writer(w: World, side: str) -> None:
    st = recover.read_state(w.s)
    if st.writer == side and not st.problems:
        _follow(w, side)
        return
    action = "cutover" if side == "target" else "rollback"
    assert Cutover(w.s, w.pipeline.mapping, action=action).run().switched
    _follow(w, side)


def _run_cell(w: World, cell: Cell) -> Row:
    row = Row(cell)
    start = time.monotonic()
    _ensure_writer(w, cell.old)
    baseline = _acl(w)
    flag = w.tmp / f"switched-{abs(hash(str(cell)))}"
    good = w.tmp / f"good-{abs(hash(str(cell)))}.sh"
    good.write_text(f"#!/bin/sh\ntouch '{flag}'\n")
    good.chmod(0o755)
    with Monitor(w) as mon, Writers(w, cell, flag) as writers:
        time.sleep(0.2)
        # A fault at fence:locking brings its own lock for the fence to wait on (faults.py).
        row.left = _run_faulty(w, cell, _hook(w, cell, flag))
        time.sleep(0.1)
        left = recover.read_state(w.s)
        row.left += f"; writer {left.writer or 'none'}" + (" (decision)" if left.decision else "")
        row.recovery = _recover(w, cell, str(good))
        time.sleep(0.2)
    _check(w, row, baseline, mon, writers)
    row.seconds = time.monotonic() - start
    return row


@pytest.mark.parametrize("cell", _cells(), ids=str)
def test_fault_matrix(world: World, cell: Cell) -> None:
    if world.first_acl is None:
        world.first_acl = _acl(world) if recover.read_state(world.s).writer == "legacy" else None
    row = _run_cell(world, cell)
    world.rows.append(row)
    assert not row.failures, f"{cell}: " + "; ".join(row.failures)


def test_fault_matrix_leaves_privileges_as_they_began(world: World) -> None:
    """I4 over the whole matrix: back on legacy, both sides' privileges are the first cell's."""
    if world.first_acl is None:
        pytest.skip("no cell of the matrix ran in this session (selected out)")
    _ensure_writer(world, "legacy")
    assert _acl(world) == world.first_acl


def _matrix_lines(rows: list[Row]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "switch fault matrix (I1 one writer at most, I2 exactly one after recovery and status"
        " names it, I3 no committed write lost, I4 privileges as before)",
        f"{'action':<9} {'point':<14} {'fault':<13} {'left':<38} {'recovery':<17} {'writer':<7}"
        f" {'s':>5}  result",
    ]
    for r in rows:
        c = r.cell
        ok = "ok I1-I4" if not r.failures else "FAIL " + "; ".join(r.failures)
        lines.append(
            f"{c.action:<9} {c.point:<14} {c.kind:<13} {r.left[:38]:<38} {r.recovery:<17}"
            f" {r.final:<7} {r.seconds:5.1f}  {ok}"
        )
    return lines
