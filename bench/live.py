"""Live sync, end to end: row changes per second from legacy commit to target commit, for one
bulk transaction and for many small transactions from concurrent clients, and the p50/p99 lag
at a fixed offered load; against PostgreSQL's native logical replication in the same run.

The replicator runs as the operator runs it (``replicator run``, its own process, identity
mapping on ``public.a`` and ``public.b``) into the target database. The limit is a
``CREATE SUBSCRIPTION … WITH (copy_data = false)`` from a publication of the same tables into a
third, identically shaped database on the target cluster. The two never run at once: on two
shared cores they would measure each other. The replicator goes first and is stopped (its slot
left idle, costing nothing); the subscription is created after, so it starts at that point of
the WAL and decodes only its own phase's writes.

    python -m bench.live [--quick] [--processes 2] [--workers N] [--tls] [--web run|separate]
    python -m bench.live --workload tpcb [--quick]

``--workload tpcb``: pgbench's TPC-B tables and script through a reshaping mapping with plain
Python converters, lag at 500 and 1,000 tps and the highest rate each side sustains, against a
native subscription (``bench/_tpcb.py``).

``--tls``: the replicator reaches Kafka over SASL_SSL (SCRAM-SHA-512, host name checked; a local
broker of its own) and both databases with sslmode=verify-full; the native subscription stays as
it is, so the ratio beside a plain run shows what TLS costs.

``--web`` measures the web page's cost: ``run`` serves it from ``replicator run``'s metrics port
(``metrics.web``: its sampler in the command's process), ``separate`` from a ``replicator web``
beside it; either way a poller stands in for an open page (state every second, history every
two, as the page's script does) for the whole replicator phase.
"""

from __future__ import annotations

import contextlib
import math
import socket
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import _live_load as load
from bench.harness import bench_env, emit, log, parse_args, peak_rss_mb
from replicator.stage_timings import stage_breakdown
from tests.e2e.cli import Background
from tests.support import Env, wait_for

OFFERED_RATE = 5_000  # row changes per second for the lag measurement (the figure)


@dataclass
class Sizes:
    bulk: int  # row changes in the bulk transaction
    clients: int
    txns: int  # per client, three row changes each
    paced_s: float


@dataclass
class Result:
    bulk: load.Bulk
    small: load.Small
    lag: load.Lag
    # Wall-clock span of the paced load's measured commits (after its warm-up).
    paced_since: float = 0.0
    paced_until: float = 0.0

    @property
    def changes(self) -> int:
        return self.bulk.changes + self.small.changes

    @property
    def rate(self) -> float:
        """Both throughput workloads together: all their row changes over all their time."""
        return self.changes / (self.bulk.visible_s + self.small.total_s)


def _workloads(legacy: str, target: str, ids: load.Ids, n: Sizes, who: str) -> Result:
    with psycopg.connect(target, autocommit=True) as tc:
        probe = load.has_row(tc)
        # A first row through the whole path: every connection open, every cache warm.
        warm = ids.take(1)
        with psycopg.connect(legacy, autocommit=True) as lc:
            lc.execute("INSERT INTO a (id, client, v) VALUES (%s, 0, 'warm')", (warm,))
        load.wait_visible(probe, warm, 120, f"{who}: warm-up")
        log(f"{who}: bulk transaction of {n.bulk:,} row changes")
        bulk = load.bulk(legacy, ids, probe, n.bulk, timeout=600)
        log(f"{who}: {n.clients} clients x {n.txns:,} small transactions")
        small = load.small(legacy, ids, probe, n.clients, n.txns, timeout=600)
    log(f"{who}: {OFFERED_RATE:,} row changes/s for {n.paced_s:.0f}s")
    since = time.time() + load.PACED_WARMUP_S
    lag = load.paced(legacy, ids, target, OFFERED_RATE, n.paced_s)
    r = Result(bulk, small, lag, since, time.time())
    log(
        f"{who}: bulk {bulk.rate:,.0f}/s (write {bulk.write_s:.2f}s, visible after "
        f"{bulk.visible_s:.2f}s); small {small.rate:,.0f}/s (offered {small.offered:,.0f}/s); "
        f"lag p50 {lag.pct(50):.0f} ms p99 {lag.pct(99):.0f} ms at {lag.offered:,.0f}/s"
    )
    return r


def _tables(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as c:
        for ddl in load.DDL:
            c.execute(ddl)


@contextlib.contextmanager
def _tls_vars(on: bool) -> Iterator[dict[str, str]]:
    """SASL_SSL to a local broker of its own (stopped after, if this run started it),
    verify-full to both (local) databases."""
    if not on:
        yield {}
        return
    from replicator.local import cluster as local_cluster
    from replicator.local import services as local_services
    from replicator.local import tls as local_tls

    for name in ("legacy", "target"):
        local_tls.enable_postgres_tls(local_services.start_postgres(name))
    before = local_cluster._load("tls")
    kafka = local_cluster.start_cluster("tls", sasl_ssl=True).settings()
    ca = str(local_tls.local_pki().ca)
    out = {f"REPLICATOR_KAFKA__{k.upper()}": str(v) for k, v in kafka.items()}
    for side in ("SOURCE", "TARGET"):
        out[f"REPLICATOR_{side}__SSLMODE"] = "verify-full"
        out[f"REPLICATOR_{side}__SSLROOTCERT"] = ca
    try:
        yield out
    finally:
        if before is None or not all(n.running for n in before.nodes):
            local_cluster.stop_cluster("tls")


def _replicator(
    env: Env,
    ids: load.Ids,
    n: Sizes,
    logdir: Path,
    processes: int,
    workers: int,
    web: str,
    extra: dict[str, str] | None = None,
) -> Result:
    """``replicator run`` (capture in the command's process, each apply worker in a child
    process), or with ``processes=2`` ``replicator capture`` and ``replicator apply`` as two
    commands. ``workers > 1`` is scale-out mode: that many partitions and apply workers."""
    vars_ = {
        **env.env_vars(),
        # Per-stage timings of every live transaction (replicator/stage_timings.py).
        "REPLICATOR_METRICS__STAGE_TIMINGS_DIR": str(logdir / "timings"),
        "REPLICATOR_MAPPING": "identity:public.a,public.b",
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "1",
        "REPLICATOR_KAFKA__PARTITIONS": str(workers),
        **(extra or {}),
    }
    scale = ["--workers", str(workers)]
    commands = [["run", *scale]] if processes == 1 else [["capture"], ["apply", *scale]]
    port = _free_port()
    if web == "run":
        vars_ |= {"REPLICATOR_METRICS__PORT": str(port), "REPLICATOR_METRICS__WEB": "true"}
    elif web == "separate":
        commands.append(["web", "--port", str(port)])
    procs = [Background(cmd, vars_, logdir / f"{cmd[0]}.log") for cmd in commands]
    poller = _Poller(port) if web != "none" else None

    def exited() -> bool:
        return any(p.proc.poll() is not None for p in procs)

    try:
        wait_for(
            lambda: _slot_active(env, f"{env.name}_fwd") or exited(),
            120,
            what="the replicator's slot",
        )
        if exited():
            raise SystemExit("replicator exited:\n" + "\n".join(p.output() for p in procs))
        if poller is not None:
            poller.start()
        return _workloads(env.legacy.conninfo(), env.target.conninfo(), ids, n, "replicator")
    finally:
        if poller is not None:
            poller.stop.set()
            log(f"web: {poller.polls} polls, {poller.failures} failed")
        for p in procs:
            p.stop()
            if "Traceback" in p.output():
                log(p.output()[-3000:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Poller(threading.Thread):
    """An open page: /api/state every second, /api/history every two."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.base = f"http://127.0.0.1:{port}"
        self.stop = threading.Event()
        self.polls = self.failures = 0

    def run(self) -> None:
        tick = 0
        while not self.stop.wait(1.0):
            paths = ["/api/state"] + (["/api/history?span=3600&points=720"] if tick % 2 else [])
            for path in paths:
                try:
                    with urllib.request.urlopen(self.base + path, timeout=5) as r:
                        r.read()
                    self.polls += 1
                except OSError:
                    self.failures += 1
            tick += 1


def _slot_active(env: Env, slot: str) -> bool:
    with env.legacy_conn() as c:
        row = c.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        return bool(row and row[0])


@contextlib.contextmanager
def _native_db(env: Env) -> Iterator[str]:
    """A third database on the target cluster, with the same tables; dropped afterwards."""
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


def _native(env: Env, ids: load.Ids, n: Sizes) -> Result:
    sub = f"{env.name}_native"
    with _native_db(env) as native:
        _tables(native)
        with env.legacy_conn() as c:
            c.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE a, b").format(sql.Identifier(sub)))
        with psycopg.connect(native, autocommit=True) as c:
            # Streaming off, the subscriber's best setting here for the bulk transaction: with
            # it on, the subscriber spools the transaction while it runs and applies it at
            # commit (190-241 k rows/s measured); off, the walsender spills it and the apply
            # worker applies it as it arrives after the commit (257-392 k rows/s).
            c.execute(
                sql.SQL(
                    "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} "
                    "WITH (copy_data = false, streaming = off)"
                ).format(
                    sql.Identifier(sub),
                    sql.Literal(env.legacy.conninfo()),
                    sql.Identifier(sub),
                )
            )
        try:
            wait_for(lambda: _slot_active(env, sub), 120, what="the subscription's slot")
            return _workloads(env.legacy.conninfo(), native, ids, n, "native")
        finally:
            with psycopg.connect(native, autocommit=True) as c:
                # Drops the subscription's slot on legacy too.
                c.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(sub)))


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def main() -> dict[str, Any]:
    args = parse_args(
        "live",
        __doc__ or "",
        [
            (
                "--processes",
                {
                    "type": int,
                    "choices": (1, 2),
                    "default": 1,
                    "help": "1: `replicator run`; 2: `replicator capture` + `replicator apply`",
                },
            ),
            (
                "--web",
                {
                    "choices": ("none", "run", "separate"),
                    "default": "none",
                    "help": "serve the web page from `run` or a separate `replicator web`, and"
                    " poll it as an open page does",
                },
            ),
            (
                "--workers",
                {
                    "type": int,
                    "default": 1,
                    "help": "apply workers; above 1, scale-out mode with as many partitions"
                    " (a source transaction is then applied as one target transaction per"
                    " partition)",
                },
            ),
            (
                "--workload",
                {
                    "choices": ("basic", "tpcb"),
                    "default": "basic",
                    "help": "basic: the identity mapping's bulk, small and paced loads; tpcb:"
                    " pgbench's TPC-B through a reshaping mapping (bench/_tpcb.py)",
                },
            ),
            (
                "--tls",
                {
                    "action": "store_true",
                    "help": "Kafka over SASL_SSL and both databases over verify-full",
                },
            ),
        ],
    )
    if args.raw.workload == "tpcb":
        from bench import _tpcb

        return _tpcb.main(args.quick)
    processes = int(args.raw.processes)
    workers = int(args.raw.workers)
    web = str(args.raw.web)
    n = (
        Sizes(bulk=100_000, clients=4, txns=1_500, paced_s=10)
        if args.quick
        else Sizes(bulk=1_000_000, clients=8, txns=5_000, paced_s=60)
    )
    ids = load.Ids()
    with bench_env() as env, tempfile.TemporaryDirectory() as tmp:
        _tables(env.legacy.conninfo())
        _tables(env.target.conninfo())
        with _tls_vars(bool(args.raw.tls)) as extra:
            ours = _replicator(env, ids, n, Path(tmp), processes, workers, web, extra)
        stages = stage_breakdown(Path(tmp) / "timings", ours.paced_since, ours.paced_until)
        log(f"replicator: per-stage lag of the paced load (ms): {stages}")
        time.sleep(1)  # the replicator's process is gone before the native phase starts
        theirs = _native(env, ids, n)
    p99 = ours.lag.pct(99)
    return emit(
        "live_throughput",
        value=ours.rate,
        unit="row changes/s",
        limit=theirs.rate,
        goal="ratio >= 0.5 of native; p99 lag <= 100 ms at 5,000 row changes/s",
        bulk_rows_per_s=round(ours.bulk.rate),
        bulk_native_rows_per_s=round(theirs.bulk.rate),
        bulk_ratio=_ratio(ours.bulk.rate, theirs.bulk.rate),
        small_rows_per_s=round(ours.small.rate),
        small_native_rows_per_s=round(theirs.small.rate),
        small_ratio=_ratio(ours.small.rate, theirs.small.rate),
        small_offered_rows_per_s=round(ours.small.offered),
        lag_offered_rows_per_s=round(ours.lag.offered),
        lag_p50_ms=round(ours.lag.pct(50), 1),
        lag_p99_ms=round(p99, 1) if not math.isnan(p99) else None,
        lag_samples=len(ours.lag.lags_ms),
        lag_missing=ours.lag.missing,
        # Where the paced load's transactions waited, from the capture's and apply's own
        # clocks (source commit -> handed to the producer -> acknowledged by Kafka -> read by
        # apply -> target commit); `lag_p*_ms` adds the probe's polling (every 10 ms).
        lag_stages_ms=stages,
        native_lag_p50_ms=round(theirs.lag.pct(50), 1),
        native_lag_p99_ms=round(theirs.lag.pct(99), 1),
        lag_goal_met=bool(p99 <= 100),
        processes=processes,
        workers=workers,
        tls=bool(args.raw.tls),
        web=web,
        bulk_changes=n.bulk,
        small_changes=ours.small.changes,
        peak_rss_mb=round(peak_rss_mb(), 1),
    )


if __name__ == "__main__":
    main()
