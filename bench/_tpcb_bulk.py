"""``bench.backfill --workload tpcb`` and ``bench.validate --workload tpcb``: pgbench's tables
through bench/tpcb_mapping.py — plain Python converters, no twins written by hand, so their SQL
forms are derived from their code and proved on the server (replicator.derived) — against the
same tables through bench/tpcb_twins.py (the same converters with hand-written twins: the
compiled path), in the same run on the same servers. ``ratio_vs_compiled`` is the plain
mapping's rows/s over the compiled one's (goal ≥ 0.5).

The legacy side is ``pgbench -i -s N`` (100,000 accounts per unit of scale) plus the history
key the mapping asks for and 10,000 history rows per unit (``pgbench -i`` leaves the history
empty; its rows carry the one twin the mapping has, ``to_utc``). The backfill is timed as
bench.backfill times the MCP one (its own ``replicator run``, a fresh pipeline each, the
backfill row's interval); validation as bench.validate (best of three, in-process).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import tpcb_mapping as plain
from bench import tpcb_twins as twins
from bench._tpcb import prepare_legacy
from bench.harness import BenchArgs, Timer, emit, log, settle
from replicator.runtime.gc_tuning import tune_gc
from replicator.validate.run import validate
from tests.support import Env, isolated_env, start_services

PLAIN_REF, TWINS_REF = "bench.tpcb_mapping:MAPPING", "bench.tpcb_twins:MAPPING"
HISTORY_PER_SCALE = 10_000


def prepare(env: Env, scale: int) -> None:
    prepare_legacy(env, scale)
    with env.legacy_conn() as c:
        c.execute(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)"
            " SELECT 1 + h %% (10 * %(s)s), 1 + h %% %(s)s, 1 + h %% (100000 * %(s)s),"
            " h %% 10001 - 5000, '2026-01-01'::timestamp + h * interval '1 ms'"
            " FROM generate_series(1, %(n)s) h",
            {"s": scale, "n": HISTORY_PER_SCALE * scale},
        )
    with env.target_conn() as c:
        for ddl in plain.TARGET_DDL:
            c.execute(ddl)
    settle(env, plain.MAPPING.forward.source_tables, "legacy")
    settle(env, (), "target")


def backfill_tpcb(args: BenchArgs, chunk_rows: int, backfill: Callable[..., Any]) -> dict[str, Any]:
    scale = int(args.raw.scale or (1 if args.quick else 10))
    runs: dict[str, Any] = {}
    svc = start_services()
    try:
        for label, ref, mapping in (
            ("compiled", TWINS_REF, twins.MAPPING),
            ("derived", PLAIN_REF, plain.MAPPING),
        ):
            with isolated_env(svc) as env, tempfile.TemporaryDirectory(prefix="bench-tpcb-") as tmp:
                log(f"{label}: pgbench scale {scale}, backfilling with {ref}…")
                prepare(env, scale)
                runs[label] = backfill(
                    env,
                    Path(tmp),
                    chunk_rows,
                    not args.raw.no_validate,
                    args.raw.apply_connections,
                    args.raw.compression,
                    mapping_ref=ref,
                    mapping=mapping,
                )
    finally:
        svc.close()
    d, c = runs["derived"], runs["compiled"]
    rate, limit = d.rows / d.seconds, c.rows / c.seconds
    log(f"derived {d.rows} rows in {d.seconds:.2f}s; compiled {c.rows} rows in {c.seconds:.2f}s")
    return emit(
        "backfill_tpcb_rows_per_s",
        value=rate,
        unit="rows/s",
        limit=limit,
        goal="ratio_vs_compiled >= 0.5 (the same tables through hand-written twins)",
        ratio_vs_compiled=round(rate / limit, 3),
        scale=scale,
        rows=d.rows,
        backfill_s=round(d.seconds, 3),
        compiled_rows=c.rows,
        compiled_backfill_s=round(c.seconds, 3),
        wall_s=round(d.wall_s, 3),
        compiled_wall_s=round(c.wall_s, 3),
        validation=d.validation,
        compiled_validation=c.validation,
        paths=d.paths,
        compiled_paths=c.paths,
    )


def validate_tpcb(args: BenchArgs) -> dict[str, Any]:
    from bench.validate import _load

    scale = int(args.raw.scale or (1 if args.quick else 10))
    svc = start_services()
    try:
        with isolated_env(svc) as env:
            log(f"pgbench scale {scale}; loading the target through the Python transforms…")
            prepare(env, scale)
            _load(env.legacy, env.target, plain.MAPPING)
            settle(env, plain.MAPPING.forward.target_tables, "target")
            tune_gc()
            s = env.settings()
            best: dict[str, float] = {}
            every: dict[str, list[float]] = {}
            reports = {}
            for _ in range(3):
                for label, mapping in (("compiled", twins.MAPPING), ("derived", plain.MAPPING)):
                    with Timer() as t:
                        report = validate(s, mapping, save=False)
                    if report.outcome != "clean":
                        raise SystemExit(f"{label}: validation failed: {report.to_json(limit=5)}")
                    reports[label] = report
                    every.setdefault(label, []).append(round(t.seconds, 3))
                    best[label] = min(best.get(label, t.seconds), t.seconds)
            with Timer() as in_python:
                by_python = validate(s, plain.MAPPING, save=False, python_path=True)
            if by_python.outcome != "clean":
                raise SystemExit(f"the Python path disagrees: {by_python.to_json(limit=5)}")
    finally:
        svc.close()
    rows = reports["derived"].rows_checked
    rate, limit = rows / best["derived"], reports["compiled"].rows_checked / best["compiled"]
    return emit(
        "validate_tpcb_rows_per_s",
        value=rate,
        unit="rows/s",
        limit=limit,
        goal="ratio_vs_compiled >= 0.5 (the same tables through hand-written twins)",
        ratio_vs_compiled=round(rate / limit, 3),
        scale=scale,
        rows_checked=rows,
        validate_s=round(best["derived"], 3),
        validate_runs_s=every["derived"],
        compiled_validate_s=round(best["compiled"], 3),
        compiled_runs_s=every["compiled"],
        python_path_s=round(in_python.seconds, 3),
        python_path_rows_per_s=round(rows / in_python.seconds, 1),
        tables_in_sql=sum(1 for t in reports["derived"].tables if t.path == "sql"),
        compiled_tables_in_sql=sum(1 for t in reports["compiled"].tables if t.path == "sql"),
        tables=len(reports["derived"].tables),
    )
