"""Query parity's cost to live sync: the live throughput while ``replicator parity --runs 100``
runs over the MCP Manager's pairs, against the throughput without it, and the parity run's own
time.

A writer keeps inserting audit entries on legacy (transactions of 20 rows, as fast as it can);
live sync carries them. Throughput is rows applied to the target per second over a window:
first without parity, then while the parity run reads both sides (its marker waits included).
The ratio (with / without) is the goal: parity is a read-only side job that must not slow the
migration it checks.

    python -m bench.parity [--quick] [--scale N] [--runs N]
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import Timer, bench_env, emit, log, parse_args
from replicator.parity import load, run_parity
from replicator.runtime.pipeline import Pipeline
from tests.support import Env, wait_for
from transforms.mcp_manager import MAPPING
from transforms.mcp_manager.generate import generate

PAIRS = Path(__file__).resolve().parents[1] / "transforms" / "mcp_manager" / "parity.toml"


def _count(env: Env, side: str) -> int:
    with env.legacy_conn() if side == "legacy" else env.target_conn() as c:
        row = c.execute("SELECT count(*) FROM audit_log").fetchone()
    return int(row[0]) if row else 0


def _writer(env: Env, stop: threading.Event, written: list[int]) -> None:
    with env.legacy_conn() as c:
        org = c.execute("SELECT id FROM organization ORDER BY id LIMIT 1").fetchone()[0]  # type: ignore[index]
        while not stop.is_set():
            with c.transaction():
                c.execute(
                    "INSERT INTO audit_log (organization_id, action, metadata, created_at)"
                    " SELECT %s, 'bench', '{\"n\": 1}', now() FROM generate_series(1, 20)",
                    (org,),
                )
            written[0] += 20


def _applied_rate(env: Env, seconds: float) -> float:
    before, start = _count(env, "target"), time.monotonic()
    time.sleep(seconds)
    return (_count(env, "target") - before) / (time.monotonic() - start)


def main() -> dict[str, Any]:
    args = parse_args(
        "parity",
        __doc__ or "",
        [
            ("--scale", {"type": int, "default": None, "help": "MCP data scale (default 1, 5)"}),
            ("--runs", {"type": int, "default": 100, "help": "timed reads per side and pair"}),
        ],
    )
    scale = int(args.raw.scale or (1 if args.quick else 5))
    window = 8.0 if args.quick else 30.0
    with bench_env() as env:
        env.mcp_schemas()
        s = env.settings()
        pipeline = Pipeline(s, MAPPING)
        pipeline.start()
        stop = threading.Event()
        try:
            log(f"generating scale {scale} through live sync…")
            generate(env.url("legacy"), scale=scale, seed=1, create_schema=False)
            wait_for(
                lambda: _count(env, "target") == _count(env, "legacy"), 300, what="rows applied"
            )
            written = [0]
            writer = threading.Thread(target=_writer, args=(env, stop, written), daemon=True)
            writer.start()
            time.sleep(2)  # the writer and apply in step
            without = _applied_rate(env, window)
            log(f"without parity: {without:,.0f} rows/s applied")
            result: dict[str, Any] = {}

            def parity() -> None:
                with Timer() as t:
                    result["report"] = run_parity(s, load(PAIRS), runs=args.raw.runs, save=False)
                result["seconds"] = t.seconds

            before, start = _count(env, "target"), time.monotonic()
            checker = threading.Thread(target=parity)
            checker.start()
            checker.join()
            with_parity = (_count(env, "target") - before) / (time.monotonic() - start)
            log(f"with parity: {with_parity:,.0f} rows/s applied; parity {result['seconds']:.1f}s")
        finally:
            stop.set()
            pipeline.shutdown()
        report = result["report"]
        return emit(
            "parity_live_throughput_ratio",
            value=with_parity,
            unit="rows/s",
            limit=without,
            goal="live throughput while parity runs >= 0.9 of without",
            scale=scale,
            runs=args.raw.runs,
            parity_s=round(result["seconds"], 2),
            pairs={p.name: p.verdict for p in report.pairs},
            target_p95_ms={p.name: p.target_ms["p95"] for p in report.pairs},
            legacy_p95_ms={p.name: p.legacy_ms["p95"] for p in report.pairs},
            rows_written=written[0],
        )


if __name__ == "__main__":
    main()
