"""Backfill throughput through Kafka with the MCP Manager transforms, against a raw COPY pipe.

The product: ``replicator run`` (its own process, as an operator starts it) on a fresh pipeline
creates the slot and backfills every mapped legacy table — keyset chunks read as text, the
snapshot topic, the forward transforms, COPY-staged upserts into the Drizzle schema — until
``replicator.backfill`` says ``applied``. Its time is the backfill row's own interval on the
target (``started_at`` → ``finished_at``, so the process start-up is not counted; the wall time
from launch is reported beside it). Then a full ``replicator validate`` proves the target equal
to the transformed legacy data (its outcome is in the JSON; anything but clean fails the run;
``--no-validate`` skips it). At the default scale this is the million-row backfill the tests
run at a quarter of the size.

The limit, timed in the same run on the same servers: the same legacy tables streamed with
``COPY … TO STDOUT (FORMAT binary)`` straight into ``COPY … FROM STDIN (FORMAT binary)`` of an
identically shaped copy (the legacy schema, indexes included) in a scratch database on the
target server, one table after another, foreign-key triggers off as apply has them. Goal: ratio
≥ 0.5. Beside it, the ceiling any backfill has: the backfilled target tables piped the same way
into an empty copy of the Drizzle schema (text ids, JSONB, its extra indexes), timed after the
run; ``raw_s / target_copy_s`` bounds the ratio from above. Peak RSS is the high-water mark
(``VmHWM`` from /proc, read just before it is stopped) of the ``replicator run`` process plus
its apply worker processes, not this benchmark process's.

    python -m bench.backfill [--quick] [--scale N]     (1 unit of scale ≈ 2,360 legacy rows)
    python -m bench.backfill --workload tpcb [--quick] [--scale N]   (pgbench scale: 100,000 accounts)
    python -m bench.backfill --vs-pgcopydb [--quick] [--scale N]    (bench._pgcopydb: pgbench tables)
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench._writer import MAPPING_REF
from bench.cpu import CpuSampler
from bench.harness import Timer, bench_env, emit, log, parse_args, settle
from replicator.config import BackfillSettings, KafkaSettings
from replicator.validate.run import validate
from tests.e2e.cli import Background
from tests.support import Env, wait_for
from transforms.api import MappingSet
from transforms.loader import load_mapping
from transforms.mcp_manager import MAPPING
from transforms.mcp_manager.legacy import create_legacy_schema
from transforms.mcp_manager.target_schema import apply_target_schema

# The product's default (backfill.chunk_rows); a chunk of wide rows is split into messages
# that fit the broker (replicator.backfill.reader.snapshot_messages).
CHUNK_ROWS = 5_000

WORKLOADS = (
    "mcp: the MCP Manager tables (default); tpcb: pgbench's tables through bench/tpcb_mapping.py"
    " (plain Python converters, derived SQL forms) against bench/tpcb_twins.py (hand-written"
    " twins) in the same run: ratio_vs_compiled"
)


def _ident(table: str) -> sql.Identifier:
    return sql.Identifier(*table.split(".", 1))


def copy_pipe(
    env: Env, src_conninfo: str, tables: list[str], create_schema: Callable[[str], None]
) -> tuple[int, float]:
    """Binary COPY pipe of ``tables`` from ``src_conninfo`` into a scratch database on the
    target server that ``create_schema`` shapes (indexes included): (rows, seconds)."""
    scratch = f"{env.target_db}_raw"
    server = env.services.target
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        db = server.settings(scratch)
        pw = db.password.get_secret_value()
        create_schema(f"postgresql://{db.user}:{pw}@{db.host}:{db.port}/{scratch}")
        rows = 0
        with (
            psycopg.connect(src_conninfo, autocommit=True) as src,
            psycopg.connect(db.conninfo()) as dst,
        ):
            dst.execute("SET session_replication_role = replica")
            with Timer() as t:
                for table in tables:
                    out_stmt = sql.SQL("COPY {} TO STDOUT (FORMAT binary)").format(_ident(table))
                    in_stmt = sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(_ident(table))
                    with (
                        src.cursor().copy(out_stmt) as cp_out,
                        dst.cursor() as cur,
                        cur.copy(in_stmt) as cp_in,
                    ):
                        for block in cp_out:
                            cp_in.write(block)
                dst.commit()
            for table in tables:
                got = dst.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(_ident(table))
                ).fetchone()
                rows += int(got[0]) if got else 0
        return rows, t.seconds
    finally:
        with psycopg.connect(server.dsn(), autocommit=True) as c:
            c.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch))
            )


def raw_copy(env: Env, tables: list[str]) -> tuple[int, float]:
    """The limit: the legacy tables piped into a copy of the legacy schema."""
    return copy_pipe(env, env.legacy.conninfo(), tables, create_legacy_schema)


def target_copy(env: Env, tables: list[str]) -> tuple[int, float]:
    """The backfilled target tables piped into an empty copy of the Drizzle schema: what
    writing the target's shape alone costs (text ids, JSONB, its extra indexes)."""
    return copy_pipe(env, env.target.conninfo(), tables, apply_target_schema)


def _cpu_group(env: Env) -> Callable[[str, bool], str | None]:
    """The benchmark's process groups: its own PostgreSQL backends and Kafka broker (not a
    neighbour's on the same machine), and the `replicator run` process tree."""
    root = str(Path(__file__).resolve().parents[1])

    def group(cmd: str, mine: bool) -> str | None:
        if mine:
            return "replicator"
        if cmd.startswith("postgres:"):
            if f" {env.target_db} " in cmd:
                return "target_postgres"
            if f" {env.legacy_db} " in cmd:
                return "legacy_postgres"
            return None
        if "kafka.Kafka" in cmd and root in cmd:
            return "kafka"
        return None

    return group


def _peak_rss_mb(pid: int) -> float:
    """The process's resident-set high-water mark (Linux ``VmHWM``) plus its descendants' (the
    apply worker processes), 0 if unreadable."""
    total = 0.0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _peak_rss_mb(int(child))
    return total


@dataclass
class BackfillRun:
    status: str
    rows: int  # legacy rows read into the snapshot topic
    seconds: float  # backfill started → applied (the target's clock)
    reading: bool  # until every chunk is in Kafka
    wall_s: float = 0.0  # from launching `replicator run`
    read_wall_s: float = 0.0  # launch → every chunk in Kafka (±0.2 s polling): the rest is apply
    peak_rss_mb: float = 0.0
    validation: str = "skipped"  # replicator validate's outcome on the backfilled target
    validate_s: float = 0.0
    paths: dict[str, str] | None = None  # how each table loaded: sql, or python: <why>
    cpu: dict[str, Any] | None = None  # CPU seconds per process group, launch → applied


def _status(env: Env) -> BackfillRun | None:
    """The pipeline's backfill as the target records it, if it started."""
    with env.target_conn() as c:
        try:
            row = c.execute(
                "SELECT b.status, (SELECT coalesce(sum(p.rows_read), 0) FROM"
                " replicator.backfill_progress p WHERE p.backfill_id = b.id),"
                " extract(epoch FROM coalesce(b.finished_at, now()) - b.started_at), b.reading,"
                # Applied once the indexes its load set aside are rebuilt too (issue 34).
                " EXISTS (SELECT 1 FROM replicator.set_aside s WHERE s.backfill_id = b.id)"
                " FROM replicator.backfill b LIMIT 1"
            ).fetchone()
        except psycopg.Error:
            return None  # the replicator schema is not there yet
    if row is None:
        return None
    status = "rebuilding indexes" if row[0] == "applied" and row[4] else str(row[0])
    return BackfillRun(status, int(row[1]), float(row[2]), bool(row[3]))


def backfill(
    env: Env,
    logdir: Path,
    chunk_rows: int,
    check: bool = True,
    connections: int | None = None,
    compression: str | None = None,
    mapping_ref: str = MAPPING_REF,
    mapping: MappingSet = MAPPING,
    extra_vars: dict[str, str] | None = None,
) -> BackfillRun:
    """``replicator run`` on a fresh pipeline until its backfill is applied; then (``check``)
    a full validation while it still runs, so the benchmark also proves the result equal."""
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": mapping_ref,
        "REPLICATOR_CAPTURE__STATUS_INTERVAL_S": "0.5",
        "REPLICATOR_BACKFILL__CHUNK_ROWS": str(chunk_rows),
    }
    vars_.update(extra_vars or {})
    if connections is not None:
        vars_["REPLICATOR_BACKFILL__APPLY_CONNECTIONS"] = str(connections)
    if compression is not None:
        vars_["REPLICATOR_KAFKA__COMPRESSION"] = compression
    started = time.monotonic()
    read_at: list[float] = []
    sampler = CpuSampler(_cpu_group(env))
    with sampler, Background(["run"], vars_, logdir / "run.log") as proc:
        sampler.follow(proc.proc.pid)

        def applied() -> bool:
            if proc.proc.poll() is not None:
                raise SystemExit(f"`replicator run` exited:\n{proc.output()[-3000:]}")
            st = _status(env)
            if st is not None and not st.reading and not read_at:
                read_at.append(time.monotonic())
            return st is not None and st.status == "applied"

        wait_for(applied, 3600, what="the backfill to be applied")
        wall = time.monotonic() - started
        sampler.stop()
        rss = _peak_rss_mb(proc.proc.pid)
        outcome, validate_s = "skipped", 0.0
        if check:
            log("applied; validating the target against the transformed legacy data…")
            with Timer() as t:
                if mapping is MAPPING and mapping_ref != MAPPING_REF:
                    mapping = load_mapping(mapping_ref)
                report = validate(env.settings(), mapping, save=False)
            outcome, validate_s = report.outcome, t.seconds
            if outcome != "clean":
                raise SystemExit(f"validation after the backfill failed: {report.to_json(limit=5)}")
    run = _status(env)
    assert run is not None
    run.wall_s, run.peak_rss_mb = wall, rss
    run.cpu = sampler.report()
    with env.target_conn() as c:
        run.paths = {
            str(t): str(p)
            for t, p in c.execute(
                "SELECT table_name, path FROM replicator.backfill_progress ORDER BY 1"
            ).fetchall()
        }
    run.validation, run.validate_s = outcome, validate_s
    run.read_wall_s = (read_at[0] if read_at else time.monotonic()) - started
    return run


def main() -> dict[str, Any]:
    if "--vs-pgcopydb" in sys.argv:
        from bench._pgcopydb import main as vs_pgcopydb

        return vs_pgcopydb()
    args = parse_args(
        "backfill",
        __doc__ or "",
        [
            ("--scale", {"type": int, "default": None, "help": "MCP data scale (default 40, 400)"}),
            ("--chunk-rows", {"type": int, "default": CHUNK_ROWS, "help": "backfill.chunk_rows"}),
            ("--no-validate", {"action": "store_true", "help": "skip the validation at the end"}),
            ("--compression", {"default": None, "help": "kafka.compression (default: lz4)"}),
            ("--workload", {"choices": ["mcp", "tpcb"], "default": "mcp", "help": WORKLOADS}),
            (
                "--apply-connections",
                {"type": int, "default": None, "help": "backfill.apply_connections"},
            ),
        ],
    )
    chunk_rows = int(args.raw.chunk_rows)
    if args.raw.workload == "tpcb":
        from bench._tpcb_bulk import backfill_tpcb

        return backfill_tpcb(args, chunk_rows, backfill)
    scale = int(args.raw.scale or (40 if args.quick else 400))
    tables = list(MAPPING.forward.source_tables)
    with bench_env() as env, tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        log(f"generating the MCP schemas at scale {scale}…")
        with Timer() as gen:
            env.mcp_schemas(scale=scale, seed=1)
        log(f"generated in {gen.seconds:.1f}s; raw COPY pipe of {len(tables)} tables…")
        settle(env, tables, "legacy")
        settle(env, (), "target")
        raw_rows, raw_s = raw_copy(env, tables)
        settle(env, (), "target")
        log(f"raw pipe: {raw_rows} rows in {raw_s:.2f}s; backfilling through Kafka…")
        connections = args.raw.apply_connections
        compression = args.raw.compression
        run = backfill(
            env, Path(tmp), chunk_rows, not args.raw.no_validate, connections, compression
        )
        target_tables = list(MAPPING.forward.target_tables)
        log("copying the backfilled target tables into an empty Drizzle schema…")
        # The best of two, after the target settled: the ceiling is never inflated by
        # background work the backfill left behind (the ratio can only come out lower).
        settle(env, target_tables, "target")
        ceilings = [target_copy(env, target_tables) for _ in range(2)]
        target_rows, target_s = min(ceilings, key=lambda c: c[1])
        rows = run.rows
        if rows != raw_rows:
            log(f"note: the backfill read {rows} rows, the raw pipe copied {raw_rows}")
        rate, limit = rows / run.seconds, raw_rows / raw_s
        log(
            f"backfill: {rows} rows in {run.seconds:.2f}s ({rate:,.0f} rows/s; {run.wall_s:.2f}s"
            f" from launch, all chunks in Kafka at {run.read_wall_s:.2f}s); raw pipe {limit:,.0f} rows/s;"
            f" peak RSS {run.peak_rss_mb:.0f} MB"
        )
        return emit(
            "backfill_rows_per_s",
            value=rate,
            unit="rows/s",
            limit=limit,
            goal=(
                "ratio_vs_target_copy >= 0.7 (the same rows in the target's shape by a binary"
                " COPY pipe); ratio >= 0.5 of a raw binary COPY pipe"
            ),
            scale=scale,
            chunk_rows=chunk_rows,
            apply_connections=connections or BackfillSettings().apply_connections,
            compression=compression or KafkaSettings().compression,
            rows=rows,
            backfill_s=round(run.seconds, 3),
            read_wall_s=round(run.read_wall_s, 3),
            wall_s=round(run.wall_s, 3),
            raw_rows=raw_rows,
            raw_s=round(raw_s, 3),
            # The same data written in the target's shape by a binary COPY pipe: no backfill
            # can write the target faster, so raw_s / target_copy_s bounds the ratio above.
            target_rows=target_rows,
            target_copy_s=round(target_s, 3),
            target_copy_runs_s=[round(t, 3) for _, t in ceilings],
            ratio_ceiling_target_copy=round(raw_s / target_s, 3),
            ratio_vs_target_copy=round(target_s / run.seconds, 3),
            generate_s=round(gen.seconds, 1),
            peak_rss_mb=round(run.peak_rss_mb, 1),
            validation=run.validation,
            validate_s=round(run.validate_s, 1),
            rss_of="the `replicator run` process and its apply worker processes (VmHWM, summed)",
            paths=run.paths,
            # Where the time goes: CPU seconds per process group from launch to applied, and
            # how busy they kept the machine's cores (1.0: every core all the time).
            **(run.cpu or {}),
        )


if __name__ == "__main__":
    main()
