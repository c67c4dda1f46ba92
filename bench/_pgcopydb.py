"""``python -m bench.backfill --vs-pgcopydb [--quick] [--scale N]``: our backfill against pgcopydb.

pgcopydb is what a PostgreSQL user reaches for to copy a database (Debian's package; the
bootstrap installs it). The data: pgbench's tables at ``--scale`` (20 by default, 2 with
``--quick``: 100,000 accounts a unit), the three that have a primary key (``pgbench_history`` is
empty after ``pgbench -i``). In one run, on the same servers, each timed phase after the servers
settled (VACUUM ANALYZE, CHECKPOINT):

1. ``pgcopydb copy table-data --table-jobs 2`` into a scratch database on the target server
   holding the same pre-created schema as ours (``pgbench -i -I dtp``: tables and primary keys);
2. ``pgcopydb clone --table-jobs 2 --index-jobs 2`` into an empty database (schema, data, then
   indexes and constraints);
3. ``replicator run`` with ``identity:`` on a fresh pipeline into the pre-created schema, timed
   as ``bench.backfill`` times it (the backfill row's interval on the target; the wall time from
   launch beside it), then validated.

``ratio_vs_pgcopydb`` is our rows/s ÷ copy table-data's rows/s, ``ratio_vs_pgcopydb_clone`` the
same against clone (both from pgcopydb's wall time, a process start included; ``_wall`` ratios
use ours from launch too). The snapshot's trip through Kafka is then timed on its own
(``bench._kafka_trip``): ``kafka_round_trip_s`` and its share of our backfill time. Without a ``pgcopydb`` on PATH it says so and prints a JSON line with
``skipped``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from bench._kafka_trip import kafka_round_trip
from bench.backfill import backfill
from bench.harness import Timer, bench_env, emit, log, parse_args, settle
from replicator.config import DatabaseSettings
from tests.support import Env

TABLES = ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers"]
GOAL = "ratio_vs_pgcopydb >= 1.0 at scale 20 (issue 34), validation clean"
INSTALL = "install it (apt-get install pgcopydb; deploy/local/bootstrap.sh does) and run again"


def _uri(db: DatabaseSettings) -> str:
    pw = quote(db.password.get_secret_value(), safe="")
    return f"postgresql://{quote(db.user, safe='')}:{pw}@{db.host}:{db.port}/{db.dbname}?sslmode=disable"


def _pgbench(db: DatabaseSettings, scale: int, steps: str) -> None:
    subprocess.run(
        ["pgbench", "-i", "-q", "-I", steps, "-s", str(scale), db.conninfo()],
        check=True,
        capture_output=True,
    )


def _scratch(env: Env, suffix: str) -> DatabaseSettings:
    name = f"{env.target_db}_{suffix}"
    with psycopg.connect(env.services.target.dsn(), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return env.services.target.settings(name)


def _drop(env: Env, db: DatabaseSettings) -> None:
    with psycopg.connect(env.services.target.dsn(), autocommit=True) as c:
        c.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db.dbname))
        )


def _rows(db: DatabaseSettings) -> int:
    with psycopg.connect(db.conninfo()) as c:
        return sum(
            int(
                c.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*t.split(".")))
                ).fetchone()[0]
            )  # type: ignore[index]
            for t in TABLES
        )


def _digest(db: DatabaseSettings) -> list[Any]:
    with psycopg.connect(db.conninfo()) as c:
        return [
            c.execute(
                sql.SQL("SELECT count(*), sum(hashtext(t::text)::numeric) FROM {} t").format(
                    sql.Identifier(*name.split("."))
                )
            ).fetchone()
            for name in TABLES
        ]


def _pgcopydb(
    args: list[str], source: DatabaseSettings, target: DatabaseSettings, log_to: Path
) -> float:
    """One pgcopydb command with its own work directory; its wall time (its log: ``log_to``)."""
    work = Path(tempfile.mkdtemp(prefix="pgcopydb-", dir=log_to.parent))
    filters = work.parent / f"{work.name}.filters"
    filters.write_text("[include-only-table]\n" + "\n".join(TABLES) + "\n")
    cmd = ["pgcopydb", *args, "--source", _uri(source), "--target", _uri(target)]
    cmd += ["--dir", str(work), "--filters", str(filters), "--table-jobs", "2"]
    with Timer() as t, open(log_to, "wb") as out:
        done = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ}, check=False
        )
    if done.returncode != 0:
        tail = log_to.read_text(errors="replace")[-2000:]
        raise SystemExit(f"pgcopydb {args[0]} failed ({done.returncode}):\n{tail}")
    return t.seconds


def main() -> dict[str, Any]:
    args = parse_args(
        "backfill --vs-pgcopydb",
        __doc__ or "",
        [
            ("--vs-pgcopydb", {"action": "store_true", "help": "this comparison"}),
            ("--scale", {"type": int, "default": None, "help": "pgbench scale (20; --quick: 2)"}),
            ("--no-validate", {"action": "store_true", "help": "skip the validation at the end"}),
        ],
    )
    if shutil.which("pgcopydb") is None:
        log(f"pgcopydb is not on PATH: the comparison is skipped; {INSTALL}")
        return emit(
            "backfill_vs_pgcopydb",
            value=0.0,
            unit="rows/s",
            limit=0.0,
            goal=GOAL,
            skipped=f"pgcopydb is not installed: {INSTALL}",
        )
    scale = int(args.raw.scale or (2 if args.quick else 20))
    with bench_env() as env, tempfile.TemporaryDirectory(prefix="bench-pgcopydb-") as tmp:
        log(f"pgbench -i at scale {scale} on legacy…")
        with Timer() as gen:
            _pgbench(env.legacy, scale, "dtGvp")
            _pgbench(env.target, scale, "dtp")  # the pre-created schema: tables, primary keys
        copy_db, clone_db = _scratch(env, "pgcopydb"), _scratch(env, "clone")
        try:
            _pgbench(copy_db, scale, "dtp")
            settle(env, TABLES, "legacy")
            settle(env, (), "target")
            log("pgcopydb copy table-data into the pre-created schema…")
            copy_s = _pgcopydb(["copy", "table-data"], env.legacy, copy_db, Path(tmp) / "copy.log")
            rows = _rows(copy_db)
            settle(env, (), "target")
            log(f"{rows} rows in {copy_s:.2f}s; pgcopydb clone into an empty database…")
            clone_s = _pgcopydb(
                ["clone", "--index-jobs", "2"], env.legacy, clone_db, Path(tmp) / "clone.log"
            )
            clone_rows = _rows(clone_db)
        finally:
            _drop(env, copy_db)
            _drop(env, clone_db)
        settle(env, (), "target")
        log(f"clone: {clone_rows} rows in {clone_s:.2f}s; replicator run (identity)…")
        run = backfill(env, Path(tmp), 5_000, False, mapping_ref="identity:" + ",".join(TABLES))
        if not args.raw.no_validate:
            # An identity mapping declares no keys for `replicator validate`: every table's
            # rows are compared as a whole, by count and an order-independent hash sum.
            log("comparing the target's tables with legacy's…")
            run.validation = "clean" if _digest(env.legacy) == _digest(env.target) else "differs"
            if run.validation != "clean":
                raise SystemExit("the backfilled target differs from legacy")
        settle(env, (), "target")
        log("the snapshot's trip through Kafka, on its own…")
        trip = kafka_round_trip(env.settings())
        ours, theirs, clone = run.rows / run.seconds, rows / copy_s, clone_rows / clone_s
        log(
            f"replicator: {run.rows} rows in {run.seconds:.2f}s ({run.wall_s:.2f}s from launch);"
            f" pgcopydb copy table-data {copy_s:.2f}s, clone {clone_s:.2f}s"
        )
        return emit(
            "backfill_vs_pgcopydb",
            value=ours,
            unit="rows/s",
            limit=theirs,
            goal=GOAL,
            scale=scale,
            rows=run.rows,
            backfill_s=round(run.seconds, 3),
            wall_s=round(run.wall_s, 3),
            pgcopydb_rows=rows,
            pgcopydb_copy_s=round(copy_s, 3),
            pgcopydb_clone_rows=clone_rows,
            pgcopydb_clone_s=round(clone_s, 3),
            ratio_vs_pgcopydb=round(ours / theirs, 3),
            ratio_vs_pgcopydb_clone=round(ours / clone, 3),
            ratio_vs_pgcopydb_wall=round(run.rows / run.wall_s / theirs, 3),
            ratio_vs_pgcopydb_clone_wall=round(run.rows / run.wall_s / clone, 3),
            generate_s=round(gen.seconds, 1),
            validation=run.validation,
            **trip,
            kafka_round_trip_share=round(trip["kafka_round_trip_s"] / run.seconds, 3),
            paths=run.paths,
            **(run.cpu or {}),
        )
