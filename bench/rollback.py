"""Rollback write pause under the cutover benchmark's load, and whether any write is lost.

The same setup as ``bench.cutover``: a synced ``replicator run`` process and an application
writing ~500 tx/s. It cuts over first (the writer moves to the target and the pipeline follows
into the reverse direction), waits until the target's writes flow back to legacy, then writes a
minute on the target (``--write-before``; --quick a few seconds) and rolls back with the writer
still going: the target is fenced, the reverse stream drains, and the
in-process switch hook points the writer at legacy again. The pause is the writer's view of the
rollback: first acknowledged legacy commit - last acknowledged target commit. ``ratio`` is
goal / pause (≥ 1 meets the 0.3 s goal). Zero lost writes: every acknowledged write — before the
cutover, between, and after the rollback — is on both sides once the forward stream delivered.

    python -m bench.rollback [--quick] [--rate 500] [--scale N] [--write-before 60]
"""

from __future__ import annotations

import time
from typing import Any

from bench._writer import PacedWriter, SyncedPipeline, lost_writes
from bench.cutover import bench_args, fence_to_switch, step_seconds, switch
from bench.harness import bench_env, emit, log


def main() -> dict[str, Any]:
    a = bench_args("rollback", __doc__ or "")
    if a.runs != 1:
        raise SystemExit("--runs is bench.cutover's: run bench.rollback once per run")
    quick, rate, scale, before = a.quick, a.rate, a.scale, a.before
    settle = 2.0 if quick else 5.0
    with bench_env() as env, SyncedPipeline(env, scale) as pipeline:
        log(f"synced at scale {scale}; writing {rate:.0f} tx/s, cutting over, then rolling back…")
        with PacedWriter(
            env, side="legacy", rate=rate, prefix="bench-r-", connections=a.writers
        ) as writer:
            time.sleep(settle)
            cut = switch(pipeline, writer, "cutover", "target")
            # The rollback's preflight wants the reverse stream running with little lag.
            pipeline.wait_flowing(writer)
            switched_at = len(writer.acked())
            time.sleep(before)  # the target's writes since the cutover are what a rollback checks
            written = len(writer.acked()) - switched_at
            back = switch(pipeline, writer, "rollback", "legacy")
            time.sleep(settle)
        pause = writer.pause("target", "legacy")
        cutover_pause = _cutover_pause(writer)
        lost = lost_writes(env, writer)
        refused = sum(1 for w in writer.writes if not w.ok)
        log(
            f"rollback pause {pause * 1000:.0f} ms (writer), fence→switch "
            f"{fence_to_switch(back) * 1000:.0f} ms; cutover pause {cutover_pause * 1000:.0f} ms;"
            f" {len(writer.acked())} acknowledged writes, {refused} refused, {lost} lost"
        )
        return emit(
            "rollback_write_pause_s",
            value=pause,
            unit="s",
            limit=a.goal_pause_s,
            goal=f"pause <= {a.goal_pause_s:g} s with zero lost writes at ~{rate:.0f} tx/s after a minute of writes",
            higher_is_better=False,
            fence_to_switch_s=round(fence_to_switch(back), 3),
            written_before_switch=written,
            lost_writes=lost,
            writes=len(writer.acked()),
            refused_writes=refused,
            rate_tx_s=round(writer.attempted_rate(), 1),
            steps_s=step_seconds(back),
            cutover_pause_s=round(cutover_pause, 3),
            cutover_fence_to_switch_s=round(fence_to_switch(cut), 3),
            scale=scale,
        )


def _cutover_pause(writer: PacedWriter) -> float:
    """The cutover's pause within the same run: last legacy ack before the first target ack."""
    first_target = min(w.at for w in writer.acked("target"))
    last_legacy = max(w.at for w in writer.acked("legacy") if w.at < first_target)
    return first_target - last_legacy


if __name__ == "__main__":
    main()
