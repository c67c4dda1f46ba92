"""bench.validate's continuous-validation part: how long one walk of the bench's tables takes at
the default budget, and what continuous validation costs live throughput (rows applied per
second of a fixed burst of legacy writes, with it and without it; the goal is ≥ 0.9)."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from bench.harness import Timer, log
from replicator.config import Settings
from replicator.runtime.continuous import ContinuousValidation
from replicator.runtime.pipeline import Pipeline
from tests.support import Env, wait_for
from transforms.mcp_manager import MAPPING

BURST_TXNS = 400
PAIRS = 3
ROWS_PER_TXN = 25


def measure(env: Env, s: Settings, quick: bool) -> dict[str, Any]:
    budget = Settings().validation.rows_per_s
    with env.legacy_conn() as lc, env.target_conn() as tc:
        cover = _cover(env, s)
        # The first pipeline start creates the slot and backfills (the target is loaded already:
        # the backfill re-writes the same rows); each burst is then timed on a running pipeline.
        txns = BURST_TXNS // (4 if quick else 1)
        # A first burst warms up what the timed ones share (it pays for the backfill's tail).
        _burst(env, s, lc, tc, txns, continuous=False)
        # Without and with, alternated, the median of each: one pair could not tell the cost
        # from noise (1.52 and 0.79 on two runs of the same code).
        offs: list[float] = []
        ons: list[float] = []
        for _ in range(1 if quick else PAIRS):
            offs.append(_burst(env, s, lc, tc, txns, continuous=False))
            ons.append(_burst(env, s, lc, tc, txns, continuous=True))
        off, on = statistics.median(offs), statistics.median(ons)
    log(
        f"continuous: a walk at {budget:,.0f} rows/s took {cover:.2f}s; live {off:,.0f} → {on:,.0f} rows/s"
    )
    return {
        "continuous_budget_rows_per_s": budget,
        "continuous_cover_s": round(cover, 3),
        "continuous_rows_per_s_without": round(off, 1),
        "continuous_rows_per_s_with": round(on, 1),
        "continuous_overhead_ratio": round(on / off, 3) if off else None,
        "continuous_pairs": [[round(a, 1), round(b, 1)] for a, b in zip(offs, ons, strict=True)],
        "continuous_goal": "ratio >= 0.9",
    }


def _cover(env: Env, s: Settings) -> float:
    """One walk of every table at the default budget (no live sync yet: no markers)."""
    checker = ContinuousValidation(s, MAPPING)
    stop = threading.Event()
    with env.legacy_conn() as legacy, env.target_conn() as target, Timer() as t:
        from replicator.runtime.continuous import ensure

        ensure(target)
        checker._walk(legacy, target, stop)
    return t.seconds


def _burst(env: Env, s: Settings, lc: Any, tc: Any, txns: int, *, continuous: bool) -> float:
    settings = s.model_copy(
        update={"validation": s.validation.model_copy(update={"continuous": continuous})}
    )
    pipeline = Pipeline(settings, MAPPING)
    pipeline.start()
    try:
        wait_for(
            lambda: (
                tc.execute(
                    "SELECT to_regclass('replicator.backfill') IS NOT NULL AND NOT EXISTS"
                    " (SELECT 1 FROM replicator.backfill WHERE status <> 'applied')"
                    " AND EXISTS (SELECT 1 FROM replicator.backfill)"
                ).fetchone()
                == (True,)
            ),
            600,
            what="the backfill",
        )
        time.sleep(2.0 if continuous else 0.5)  # continuous validation under way
        before = int(tc.execute("SELECT count(*) FROM audit_log").fetchone()[0])
        rows = txns * ROWS_PER_TXN
        started = time.perf_counter()
        for _ in range(txns):
            lc.execute(
                "INSERT INTO audit_log (action, created_at) SELECT 'burst', now()"
                " FROM generate_series(1, %s)",
                (ROWS_PER_TXN,),
            )
        wait_for(
            lambda: (
                int(tc.execute("SELECT count(*) FROM audit_log").fetchone()[0]) >= before + rows
            ),
            600,
            what="the burst applied",
            interval=0.05,
        )
        return rows / (time.perf_counter() - started)
    finally:
        pipeline.shutdown()
