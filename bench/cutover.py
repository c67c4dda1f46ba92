"""Cutover write pause under a steady write load, and whether any acknowledged write is lost.

An application writes one ``audit_log`` row per transaction at ~500 tx/s on legacy while a
synced ``replicator run`` (its own process) streams forward. The cutover fences legacy, drains,
verifies, syncs sequences, arms the reverse stream, and at the switch hook points the writer at
the target (the hook is an in-process call, so its own run time is excluded). The pause is the
writer's view: first acknowledged target commit - last acknowledged legacy commit. The goal is
≤ 0.3 s after a minute of writes (the pause must not grow with what was written since the last
validation), so ``limit`` is 0.3 and ``ratio`` is goal / pause (≥ 1 meets it); ``steps_s`` says
where the pause went (``fence``, ``drain``, ``verify``, ``decide``, ``switch`` are inside it). Zero lost writes:
every acknowledged write is on both sides once the reverse stream has delivered the target's.

    python -m bench.cutover [--quick] [--rate 500] [--scale N] [--write-before 60]
"""

from __future__ import annotations

import time
from typing import Any

from bench._writer import InProcessSwitch, PacedWriter, SyncedPipeline, lost_writes
from bench.harness import bench_env, emit, log, parse_args
from replicator.cutover.plan import Outcome, StepResult
from replicator.errors import ReplicatorError

GOAL_PAUSE_S = 0.3
# Writes before the switch: the pause must not grow with what was written since the last
# validation, so the benchmark writes a minute's worth first (--quick: a few seconds).
WRITE_BEFORE_S = 60.0
WRITE_BEFORE_QUICK_S = 5.0


def step_seconds(out: Outcome) -> dict[str, float]:
    return {st.name: round(st.seconds, 4) for st in out.steps}


def fence_to_switch(out: Outcome) -> float:
    """The fenced window by the cutover's own clock: fence commit → switch done."""
    return float(out.pause_s or 0.0)


def switch(pipeline: SyncedPipeline, writer: PacedWriter, action: str, new_side: str) -> Outcome:
    """Run ``action`` with the writer going; the hook points the writer at ``new_side``."""

    def report(r: StepResult) -> None:
        log(f"  {action} {r.name:<13} {'ok' if r.ok else 'FAILED'} {r.seconds * 1000:8.1f} ms")

    try:
        out = InProcessSwitch(
            pipeline.settings,
            pipeline.mapping,
            action=action,
            report=report,
            on_switch=lambda: writer.switch_to(new_side),
        ).run()
    except ReplicatorError as exc:  # an aborted switch is a result to report, not a crash
        raise SystemExit(f"{action} aborted: {exc.message}\n  hint: {exc.hint}") from None
    if not out.switched:
        raise SystemExit(f"{action} did not switch: {[(s.name, s.detail) for s in out.steps]}")
    return out


def bench_args(name: str, doc: str) -> tuple[bool, float, int, float]:
    args = parse_args(
        name,
        doc,
        [
            ("--rate", {"type": float, "default": 500.0, "help": "writer transactions per second"}),
            ("--scale", {"type": int, "default": None, "help": "MCP data scale (default 1, 5)"}),
            (
                "--write-before",
                {
                    "type": float,
                    "default": None,
                    "help": f"seconds of writes before the switch (default {WRITE_BEFORE_S:.0f},"
                    f" --quick {WRITE_BEFORE_QUICK_S:.0f})",
                },
            ),
        ],
    )
    scale = args.raw.scale or (1 if args.quick else 5)
    before = args.raw.write_before
    if before is None:
        before = WRITE_BEFORE_QUICK_S if args.quick else WRITE_BEFORE_S
    return args.quick, float(args.raw.rate), int(scale), float(before)


def main() -> dict[str, Any]:
    quick, rate, scale, before = bench_args("cutover", __doc__ or "")
    settle = 2.0 if quick else 5.0
    with bench_env() as env, SyncedPipeline(env, scale) as pipeline:
        log(f"synced at scale {scale}; writing {rate:.0f} tx/s on legacy, then cutting over…")
        with PacedWriter(env, side="legacy", rate=rate, prefix="bench-c-") as writer:
            time.sleep(before)
            written = len(writer.acked())
            out = switch(pipeline, writer, "cutover", "target")
            time.sleep(settle)
        pause = writer.pause("legacy", "target")
        lost = lost_writes(env, writer)
        refused = sum(1 for w in writer.writes if not w.ok)
        log(
            f"pause {pause * 1000:.0f} ms (writer), fence→switch {fence_to_switch(out) * 1000:.0f} ms;"
            f" {len(writer.acked())} acknowledged writes, {refused} refused, {lost} lost"
        )
        return emit(
            "cutover_write_pause_s",
            value=pause,
            unit="s",
            limit=GOAL_PAUSE_S,
            goal="pause <= 0.3 s with zero lost writes at ~500 tx/s after a minute of writes",
            higher_is_better=False,
            fence_to_switch_s=round(fence_to_switch(out), 3),
            written_before_switch=written,
            lost_writes=lost,
            writes=len(writer.acked()),
            refused_writes=refused,
            rate_tx_s=round(writer.attempted_rate(), 1),
            steps_s=step_seconds(out),
            scale=scale,
        )


if __name__ == "__main__":
    main()
