"""``bench.live --workload tpcb``: pgbench's TPC-B script on legacy, through the reshaping
mapping ``bench.tpcb_mapping`` (plain Python converters), against a native subscription of the
same tables under the same load in the same run.

Legacy is ``pgbench -i -s N`` plus an identity key on ``pgbench_history`` (why: the mapping's
docstring), in a database whose time zone is UTC. Each side is measured in its own phase, the
replicator first (``replicator run``, its own process, after its backfill of the tables), then a
``CREATE SUBSCRIPTION`` (``copy_data``, so updates find their rows, as the replicator's find
them after its backfill) into a third database on the target cluster; the two never run at
once, as in ``bench.live``.

Lag is read from the rows: every TPC-B transaction inserts a history row whose ``mtime`` is the
source's ``CURRENT_TIMESTAMP`` (its transaction's start, a millisecond or so before its commit);
a probe reads the newest applied one (``max(created_at)`` of the target's ``transfer``,
``max(mtime)`` of the native copy; both indexed) every 10 ms, and a sample's lag is the clock at
the answer minus that time (one machine: the source's clock is this clock). So it includes the
transaction's own run time and the probe's polling, on both sides alike.

Rates: pgbench ``-R`` (a Poisson schedule) with several clients. 500 and 1,000 tps are measured
for a fixed time; then the rate steps up until a step fails: the lag climbs over the step (its
last quarter's median is more than ``CLIMB_MS`` above its first quarter's), or the target does
not catch up within ``CATCH_UP_S`` after it. The last step kept up gives the sustained rate (the
transactions pgbench completed per second, which is below the offered rate when legacy itself
saturates: then the step is marked ``source_limited`` and the search ends there, the last step
being legacy's own ceiling on this machine with that side's apply running beside it).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from bench.cpu import CpuSampler
from bench.harness import bench_env, emit, log
from bench.tpcb_mapping import LEGACY_HISTORY_KEY, TARGET_DDL
from replicator.stage_timings import stage_breakdown
from tests.e2e.cli import Background
from tests.support import Env, wait_for

MAPPING_REF = "bench.tpcb_mapping:MAPPING"
TABLES = ("pgbench_branches", "pgbench_tellers", "pgbench_accounts", "pgbench_history")
FIXED_RATES = (500, 1000)
POLL_S = 0.01
WARMUP_S = 2.0  # a step's first seconds are not measured (pgbench's connections)
CLIMB_MS = 200.0
CATCH_UP_S = 30.0
SOURCE_LIMITED = 0.9  # pgbench completing less than this share of the offered rate


@dataclass
class Sizes:
    scale: int
    clients: int
    fixed_s: float  # each fixed rate
    step_s: float  # each step of the search
    ramp: tuple[int, ...]  # offered rates after the fixed ones (0: unthrottled)


QUICK = Sizes(scale=1, clients=4, fixed_s=10, step_s=8, ramp=(2000, 0))
FULL = Sizes(scale=10, clients=8, fixed_s=30, step_s=15, ramp=(1500, 2000, 3000, 4500, 0))


@dataclass
class Step:
    offered: int  # 0: unthrottled
    tps: float  # completed by pgbench
    lags: list[tuple[float, float]] = field(default_factory=list)  # (time, lag ms)
    caught_up_s: float | None = None
    since: float = 0.0
    until: float = 0.0

    def pct(self, q: int) -> float:
        ms = [lag for _, lag in self.lags]
        if len(ms) < 2:
            return ms[0] if ms else float("nan")
        return statistics.quantiles(ms, n=100, method="inclusive")[q - 1]

    @property
    def climb_ms(self) -> float:
        ms = [lag for _, lag in self.lags]
        if len(ms) < 8:
            return 0.0
        q = len(ms) // 4
        return statistics.median(ms[-q:]) - statistics.median(ms[:q])

    @property
    def source_limited(self) -> bool:
        return self.offered > 0 and self.tps < SOURCE_LIMITED * self.offered

    @property
    def kept_up(self) -> bool:
        return bool(self.lags) and self.caught_up_s is not None and self.climb_ms <= CLIMB_MS

    def summary(self) -> dict[str, Any]:
        return {
            "offered_tps": self.offered or "unthrottled",
            "tps": round(self.tps, 1),
            "lag_p50_ms": round(self.pct(50), 1),
            "lag_p99_ms": round(self.pct(99), 1),
            "climb_ms": round(self.climb_ms, 1),
            "caught_up_s": None if self.caught_up_s is None else round(self.caught_up_s, 2),
            "kept_up": self.kept_up,
            "source_limited": self.source_limited,
        }


@dataclass
class Side:
    fixed: dict[int, Step]
    ramp: list[Step]

    @property
    def sustained(self) -> Step | None:
        kept = [s for s in (*self.fixed.values(), *self.ramp) if s.kept_up]
        return max(kept, key=lambda s: s.tps) if kept else None


def pgbench_path() -> str:
    found = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    if not Path(found).exists():
        raise SystemExit("pgbench not found: install postgresql-client-15 (or put it on PATH)")
    return found


def _pgbench(conninfo: str, *args: str, timeout: float) -> str:
    r = subprocess.run(
        [pgbench_path(), *args, conninfo],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise SystemExit(f"pgbench {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r.stdout + r.stderr


def prepare_legacy(env: Env, scale: int) -> None:
    with env.legacy_conn() as c:
        c.execute(
            sql.SQL("ALTER DATABASE {} SET timezone = 'UTC'").format(
                sql.Identifier(env.legacy.dbname)
            )
        )
    log(f"pgbench -i -s {scale} on legacy")
    _pgbench(env.legacy.conninfo(), "-i", "-q", "-s", str(scale), timeout=600)
    with env.legacy_conn() as c:
        c.execute(LEGACY_HISTORY_KEY)
        c.execute("VACUUM ANALYZE pgbench_history")
        c.execute("CHECKPOINT")


def _run_rate(conninfo: str, clients: int, rate: int, seconds: float) -> float:
    """pgbench's TPC-B script at ``rate`` tps (0: as fast as it goes); the tps it completed."""
    args = ["-n", "-b", "tpcb-like", "-c", str(clients), "-j", "2", "-T", str(round(seconds))]
    if rate:
        args += ["-R", str(rate)]
    out = _pgbench(conninfo, *args, timeout=seconds + 120)
    m = re.search(r"tps = ([0-9.]+)", out)
    if not m:
        raise SystemExit(f"no tps in pgbench's output:\n{out[-2000:]}")
    return float(m.group(1))


Newest = Callable[[psycopg.Connection[Any]], float]  # epoch seconds of the newest applied row


def newest(query: str) -> Newest:
    def read(conn: psycopg.Connection[Any]) -> float:
        row = conn.execute(query).fetchone()
        if not row or row[0] is None:
            return 0.0
        at: datetime = row[0]
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()

    return read


SOURCE_NEWEST = newest("SELECT max(mtime) FROM pgbench_history")
TARGET_NEWEST = newest("SELECT max(created_at) FROM transfer")


class _Probe(threading.Thread):
    """Samples now - newest applied row every POLL_S while the step runs."""

    def __init__(self, conninfo: str, read: Newest) -> None:
        super().__init__(daemon=True)
        self.conninfo, self.read = conninfo, read
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []

    def run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as c:
            while not self.stop.is_set():
                m = self.read(c)
                now = time.time()
                if m:
                    self.samples.append((now, (now - m) * 1000))
                time.sleep(POLL_S)


def _catch_up(source: str, target: str, read: Newest, timeout: float) -> float | None:
    """Seconds until the target holds the source's newest history row (None: not in time)."""
    with psycopg.connect(source, autocommit=True) as s:
        last = SOURCE_NEWEST(s)
    t0 = time.perf_counter()
    with psycopg.connect(target, autocommit=True) as c:
        while time.perf_counter() - t0 < timeout:
            if read(c) >= last:
                return time.perf_counter() - t0
            time.sleep(POLL_S)
    return None


def _step(
    source: str, target: str, read: Newest, clients: int, rate: int, seconds: float, who: str
) -> Step:
    probe = _Probe(target, read)
    probe.start()
    start = time.time()
    try:
        tps = _run_rate(source, clients, rate, seconds)
    finally:
        probe.stop.set()
        probe.join(5)
    until = time.time()
    step = Step(rate, tps, since=start + WARMUP_S, until=until)
    step.lags = [(t, lag) for t, lag in probe.samples if step.since <= t <= until]
    step.caught_up_s = _catch_up(source, target, read, CATCH_UP_S)
    log(
        f"{who}: {rate or 'unthrottled'} offered, {tps:,.0f} tps done; lag p50 "
        f"{step.pct(50):.0f} ms p99 {step.pct(99):.0f} ms, climb {step.climb_ms:.0f} ms, caught up"
        f" {'never' if step.caught_up_s is None else f'{step.caught_up_s:.2f}s'}"
        f"{' (source-limited)' if step.source_limited else ''}"
    )
    return step


def cpu_groups(env: Env, native_db: str = "") -> Callable[[str, bool], str | None]:
    """Where a step's CPU goes: the `replicator run` process (capture) and its apply worker
    child, pgbench, each database's backends (the walsender names no database: all of them,
    a neighbour's included, are one group), the shared Kafka broker."""

    def group(cmd: str, mine: bool) -> str | None:
        if mine:
            return "replicator_run" if " -m replicator " in f"{cmd} " else "apply_worker"
        if "pgbench" in cmd and " -b tpcb-like " in cmd:
            return "pgbench"
        if cmd.startswith("postgres: walsender"):
            return "walsenders"
        if cmd.startswith("postgres:"):
            for name, db in (
                ("legacy_postgres", env.legacy.dbname),
                ("target_postgres", env.target.dbname),
                ("native_postgres", native_db),
            ):
                if db and f" {db} " in cmd:
                    return name
            if "logical replication worker" in cmd and native_db:
                return "native_apply_worker"
            return None
        if "kafka.Kafka" in cmd:
            return "kafka_shared"
        return None

    return group


def measure(
    source: str,
    target: str,
    read: Newest,
    n: Sizes,
    who: str,
    cpu: CpuSampler | None = None,
) -> Side:
    side = Side({}, [])
    for rate in FIXED_RATES:
        if rate == 1000 and cpu is not None:
            with cpu:
                side.fixed[rate] = _step(source, target, read, n.clients, rate, n.fixed_s, who)
            continue
        side.fixed[rate] = _step(source, target, read, n.clients, rate, n.fixed_s, who)
    if not all(s.kept_up for s in side.fixed.values()):
        return side
    for rate in n.ramp:
        step = _step(source, target, read, n.clients, rate, n.step_s, who)
        side.ramp.append(step)
        if not step.kept_up or step.source_limited:
            break
    return side


# -- the two sides -------------------------------------------------------------------------------


def _backfilled(env: Env, proc: Background) -> bool:
    if proc.proc.poll() is not None:
        raise SystemExit(f"`replicator run` exited:\n{proc.output()[-3000:]}")
    with env.target_conn() as c:
        try:
            row = c.execute("SELECT status FROM replicator.backfill LIMIT 1").fetchone()
        except psycopg.Error:
            return False
    return bool(row and row[0] == "applied")


def replicator_side(
    env: Env, n: Sizes, logdir: Path
) -> tuple[Side, dict[str, Any], dict[str, Any]]:
    with env.target_conn() as c:
        for ddl in TARGET_DDL:
            c.execute(ddl)
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_METRICS__STAGE_TIMINGS_DIR": str(logdir / "timings"),
        "REPLICATOR_MAPPING": MAPPING_REF,
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "1",
    }
    proc = Background(["run"], vars_, logdir / "run.log")
    try:
        t0 = time.perf_counter()
        wait_for(lambda: _backfilled(env, proc), 900, what="the backfill of pgbench's tables")
        log(f"replicator: backfilled in {time.perf_counter() - t0:.1f}s")
        cpu = CpuSampler(cpu_groups(env))
        cpu.follow(proc.proc.pid)
        side = measure(
            env.legacy.conninfo(), env.target.conninfo(), TARGET_NEWEST, n, "replicator", cpu
        )
    finally:
        proc.stop()
        if "Traceback" in proc.output():
            log(proc.output()[-3000:])
    at = side.fixed[1000]
    stages = stage_breakdown(logdir / "timings", at.since, at.until)
    return side, stages, cpu.report()


@contextlib.contextmanager
def _native_db(env: Env) -> Iterator[str]:
    name = f"native_{uuid.uuid4().hex[:8]}"
    admin = env.services.target.dsn()
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield env.services.target.dsn(name)
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _synced(native: str) -> bool:
    with psycopg.connect(native, autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FILTER (WHERE srsubstate <> 'r'), count(*) FROM pg_subscription_rel"
        ).fetchone()
    return bool(row and row[0] == 0 and row[1] == len(TABLES))


def native_side(env: Env, n: Sizes) -> tuple[Side, dict[str, Any]]:
    sub = f"{env.name}_native"
    with _native_db(env) as native:
        # The same tables, empty: pgbench's drop/create/keys steps, and the history's key.
        _pgbench(native, "-i", "-I", "dtp", "-s", str(n.scale), timeout=120)
        with psycopg.connect(native, autocommit=True) as c:
            c.execute(LEGACY_HISTORY_KEY)
            c.execute("CREATE INDEX pgbench_history_mtime ON pgbench_history (mtime)")
        with env.legacy_conn() as c:
            c.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                    sql.Identifier(sub), sql.SQL(", ").join(map(sql.Identifier, TABLES))
                )
            )
        with psycopg.connect(native, autocommit=True) as c:
            c.execute(
                sql.SQL(
                    "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} "
                    "WITH (copy_data = true, streaming = off)"
                ).format(
                    sql.Identifier(sub), sql.Literal(env.legacy.conninfo()), sql.Identifier(sub)
                )
            )
        try:
            t0 = time.perf_counter()
            wait_for(lambda: _synced(native), 600, what="the subscription's initial copy")
            log(f"native: copied in {time.perf_counter() - t0:.1f}s")
            name = str(conninfo_to_dict(native)["dbname"])
            cpu = CpuSampler(cpu_groups(env, name))
            side = measure(env.legacy.conninfo(), native, SOURCE_NEWEST, n, "native", cpu)
            return side, cpu.report()
        finally:
            with psycopg.connect(native, autocommit=True) as c:
                c.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(sub)))


# -- the run ---------------------------------------------------------------------------------------


def _ms(x: float) -> float | None:
    return None if x != x else round(x, 1)  # NaN (no sample) → null


def main(quick: bool) -> dict[str, Any]:
    n = QUICK if quick else FULL
    with bench_env() as env, tempfile.TemporaryDirectory() as tmp:
        prepare_legacy(env, n.scale)
        ours, stages, cpu = replicator_side(env, n, Path(tmp))
        log(f"replicator: per-stage lag at 1,000 tps (ms): {stages}; CPU: {cpu}")
        time.sleep(1)  # the replicator's process is gone before the native phase starts
        theirs, native_cpu = native_side(env, n)
        log(f"native: CPU at 1,000 tps: {native_cpu}")
    best, native_best = ours.sustained, theirs.sustained
    p99 = ours.fixed[1000].pct(99)
    sustained = best.tps if best else 0.0
    native_sustained = native_best.tps if native_best else 0.0
    return emit(
        "live_tpcb",
        value=sustained,
        unit="TPC-B tps sustained",
        limit=native_sustained,
        goal="sustained >= 0.5 of native; lag p99 <= 250 ms at 1,000 tps",
        sustained_tps=round(sustained, 1),
        native_sustained_tps=round(native_sustained, 1),
        sustained_source_limited=bool(best and best.source_limited),
        native_sustained_source_limited=bool(native_best and native_best.source_limited),
        lag_p50_ms=_ms(ours.fixed[1000].pct(50)),
        lag_p99_ms=_ms(p99),
        lag_p50_ms_500=_ms(ours.fixed[500].pct(50)),
        lag_p99_ms_500=_ms(ours.fixed[500].pct(99)),
        native_lag_p50_ms=_ms(theirs.fixed[1000].pct(50)),
        native_lag_p99_ms=_ms(theirs.fixed[1000].pct(99)),
        native_lag_p50_ms_500=_ms(theirs.fixed[500].pct(50)),
        native_lag_p99_ms_500=_ms(theirs.fixed[500].pct(99)),
        tps_at_1000=round(ours.fixed[1000].tps, 1),
        lag_samples=len(ours.fixed[1000].lags),
        # Where the 1,000 tps step's transactions waited, from the capture's and apply's own
        # clocks (source commit -> producer -> Kafka ack -> read by apply -> target commit);
        # `lag_p*_ms` adds the transaction's run time before its commit and the probe's polling.
        lag_stages_ms=stages,
        # CPU seconds per process group during each side's 1,000 tps step.
        cpu_at_1000=cpu,
        native_cpu_at_1000=native_cpu,
        lag_goal_met=bool(p99 <= 250),
        sustained_goal_met=bool(native_sustained and sustained >= 0.5 * native_sustained),
        steps=[s.summary() for s in (*ours.fixed.values(), *ours.ramp)],
        native_steps=[s.summary() for s in (*theirs.fixed.values(), *theirs.ramp)],
        scale=n.scale,
        clients=n.clients,
        mapping=MAPPING_REF,
    )
