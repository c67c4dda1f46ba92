"""Repair throughput: differing keys repaired per second by `validate --repair`, through the
pipeline under live sync (the repair's marker, its snapshot chunk, apply, the check after).

The limit is the check a repair cannot do without: one full validation of the same tables,
timed in the same run, as keys per second (keys ÷ its seconds). The ratio says how much the
repair itself (marker, re-read, Kafka, apply) adds to it.

    python -m bench.repair [--quick] [--scale N] [--keys N]
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from bench.harness import Timer, bench_env, emit, log, parse_args, peak_rss_mb
from replicator.config import DatabaseSettings
from replicator.runtime.pipeline import Pipeline
from replicator.validate.repair import check, repair
from replicator.validate.run import validate
from tests.support import wait_for
from transforms.mcp_manager import MAPPING
from transforms.mcp_manager.generate import generate
from transforms.mcp_manager.legacy import create_legacy_schema
from transforms.mcp_manager.target_schema import apply_target_schema


def _url(db: DatabaseSettings) -> str:
    password = quote(db.password.get_secret_value(), safe="")
    return f"postgresql://{db.user}:{password}@{db.host}:{db.port}/{db.dbname}"


def main() -> dict[str, Any]:
    args = parse_args(
        "repair",
        __doc__ or "",
        [
            ("--scale", {"type": int, "default": None, "help": "MCP data scale (default 1, 10)"}),
            ("--keys", {"type": int, "default": None, "help": "keys damaged (default 300, 3000)"}),
        ],
    )
    scale = int(args.raw.scale or (1 if args.quick else 10))
    keys = int(args.raw.keys or (300 if args.quick else 3000))
    with bench_env() as env:
        create_legacy_schema(_url(env.legacy))
        apply_target_schema(_url(env.target))
        generate(_url(env.legacy), scale=scale, seed=1, create_schema=False)
        s = env.settings()
        pipeline = Pipeline(s, MAPPING)
        pipeline.start()  # fresh: slot, then a backfill of every table
        try:
            with env.target_conn() as c:
                wait_for(
                    lambda: (
                        c.execute("SELECT to_regclass('replicator.backfill')").fetchone() != (None,)
                        and c.execute(
                            "SELECT count(*) FILTER (WHERE status = 'applied') > 0"
                            " FROM replicator.backfill"
                        ).fetchone()
                        == (True,)
                    ),
                    600,
                    what="the backfill",
                )
                # Damage: changed columns, missing rows, extra rows (a third each).
                third = keys // 3
                c.execute(
                    "UPDATE audit_log SET action = action || '-x' WHERE id IN"
                    " (SELECT id FROM audit_log ORDER BY id LIMIT %s)",
                    (third,),
                )
                c.execute(
                    "DELETE FROM member WHERE id IN (SELECT id FROM member ORDER BY id LIMIT %s)",
                    (third,),
                )
                c.execute(
                    "INSERT INTO audit_log (id, action, created_at)"
                    " SELECT 900000000 + g, 'forged', now() FROM generate_series(1, %s) g",
                    (keys - 2 * third,),
                )
            with Timer() as first:
                report = validate(s, MAPPING)
            damaged = len(report.differences)
            log(f"{damaged} differences found in {first.seconds:.2f}s; repairing…")
            with Timer() as timer:
                fixed = repair(s, MAPPING, report)
                after = validate(s, MAPPING)
                check(fixed, after)
            repaired = fixed.count("repaired")
            if after.outcome != "clean" or repaired != damaged:
                raise SystemExit(f"the repair left differences: {fixed.to_json()['counts']}")
        finally:
            pipeline.shutdown()
        rate = repaired / timer.seconds
        limit = damaged / first.seconds
        log(f"repaired {repaired} keys in {timer.seconds:.2f}s ({rate:,.0f} keys/s)")
        return emit(
            "repair_keys_per_s",
            value=rate,
            unit="keys/s",
            limit=limit,
            goal="keys repaired per second; the limit is one full validation's keys/s",
            scale=scale,
            keys=repaired,
            repair_s=round(timer.seconds, 3),
            sent_s=round(fixed.seconds, 3),
            validate_s=round(first.seconds, 3),
            rows_checked=report.rows_checked,
            peak_rss_mb=round(peak_rss_mb(), 1),
        )


if __name__ == "__main__":
    main()
