"""Liveness and readiness of a long-running process (``run``, ``capture``, ``apply``).

Served as ``/healthz`` and ``/readyz`` beside ``/metrics`` (:mod:`replicator.status.endpoints`),
for Kubernetes probes and anyone else who asks. Unlike ``/metrics`` and ``status``, they ask no
database and no broker: they read what the stages of this process report about themselves.

- **Live**: every stage's loop came round within ``metrics.stall_after_s``. A stage waiting
  for an unreachable database still comes round (it retries), so an outage is not a reason to
  restart the process; a stage stuck in a call that never returns, or one that died, is.
- **Ready**: live, and every stage is doing its job: the capture streams from its slot and
  Kafka acknowledges what it sends; an apply worker is connected to the target and Kafka and
  holds partitions. Not ready says why, in the stage's own words ("apply-0:
  postgresql://u:***@db:5432/t: cannot connect (…) (retrying)").
  Lag is not part of it: a worker catching up is doing exactly its job (lag is in
  ``/metrics`` and ``status``).

A stage keeps its vital signs in a :class:`StageHealth`, in shared memory when the stage is an
apply worker in a child process, so that the parent's endpoints see the child's loop.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"

_REASON_BYTES = 240


class StageHealth:
    """A stage's vital signs: when its loop last came round, and whether it is doing its job
    or waiting (and for what). Cheap to update from a hot loop: two stores, no lock (a probe
    reading half an update sees the previous or the next state, either is true enough)."""

    def __init__(self, *, shared: bool = False) -> None:
        # [last beat (time.monotonic(), one clock for every process on the host), ready 1/0]
        self._nums: Any
        self._why: Any
        if shared:
            ctx = multiprocessing.get_context("spawn")
            self._nums = ctx.RawArray(ctypes.c_double, 2)
            self._why = ctx.RawArray(ctypes.c_char, _REASON_BYTES)
        else:
            self._nums = (ctypes.c_double * 2)()
            self._why = (ctypes.c_char * _REASON_BYTES)()
        self.waiting("starting")

    def beat(self) -> None:
        """The loop came round (or a retry's wait goes on), its state unchanged."""
        self._nums[0] = time.monotonic()

    def ready(self) -> None:
        """The loop came round, doing its job."""
        self._nums[0] = time.monotonic()
        self._nums[1] = 1.0

    def waiting(self, reason: str) -> None:
        """The loop came round, but the stage waits (connecting, retrying, no partition)."""
        self._why.value = reason.encode()[: _REASON_BYTES - 1]
        self._nums[0] = time.monotonic()
        self._nums[1] = 0.0

    def snapshot(self) -> tuple[float, bool, str]:
        """(last beat, ready, what it waits for: empty when ready)."""
        ready = self._nums[1] == 1.0
        why = "" if ready else bytes(self._why.value).decode(errors="replace")
        return float(self._nums[0]), ready, why


def waiting_sleep(health: StageHealth, stop: threading.Event) -> Callable[[float], None]:
    """A retry's sleep that keeps the stage's beat: waiting out a retry is not a wedge, however
    long ``retry.max_wait_s`` is. Returns early when the stage is stopped."""

    def sleep(seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and not stop.wait(min(left, 1.0)):
            health.beat()

    return sleep


@dataclass(frozen=True)
class StageView:
    """One stage as the decision sees it."""

    name: str
    running: bool  # its thread is alive (for a worker process: so is the child)
    last_beat: float  # time.monotonic() when its loop last came round
    ready: bool
    reason: str = ""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...] = ()

    def text(self) -> str:
        return "ok\n" if self.ok else "".join(f"{r}\n" for r in self.reasons)


@dataclass(frozen=True)
class ProcessView:
    """What the decision needs to know about the process as a whole."""

    stages: Sequence[StageView]
    stages_since: float  # time.monotonic() when the current stages were (being) started
    stall_after_s: float
    failed: str | None = None  # a stage's error: the process is stopping because of it
    stopping: bool = False


def liveness(p: ProcessView, now: float) -> Verdict:
    """Live unless a stage failed, or a stage's loop has not come round for ``stall_after_s``.

    Starting is never a reason: creating the slot waits for every transaction running on the
    source to end, however long that takes, and a restart would only begin the wait again.
    """
    if p.failed is not None:
        return Verdict(False, (f"stopped by an error: {p.failed}",))
    reasons = tuple(
        f"{st.name}: no progress for {now - st.last_beat:.0f}s"
        + ("" if st.running else " (not running)")
        for st in p.stages
        if now - st.last_beat > p.stall_after_s
    )
    return Verdict(not reasons, reasons)


def readiness(p: ProcessView, now: float) -> Verdict:
    """Ready when live and every stage does its job."""
    live = liveness(p, now)
    if not live.ok:
        return live
    if p.stopping:
        return Verdict(False, ("stopping",))
    if not p.stages:
        return Verdict(
            False,
            (
                "starting: preparing the slot, publication and topics "
                f"({now - p.stages_since:.0f}s; creating a slot waits for the source's "
                "running transactions)",
            ),
        )
    reasons = []
    for st in p.stages:
        if not st.running:
            reasons.append(f"{st.name}: not running")
        elif not st.ready:
            reasons.append(f"{st.name}: {st.reason or 'not ready'}")
    return Verdict(not reasons, tuple(reasons))


class RunningStages(Protocol):
    """What :func:`process_view` reads of a :class:`replicator.runtime.Pipeline` (named by
    shape: this module is a leaf the stages import)."""

    stages: list[tuple[str, threading.Thread, StageHealth | None]]
    stages_since: float
    error: BaseException | None
    stop: threading.Event


def process_view(pipeline: RunningStages, stall_after_s: float) -> ProcessView:
    """The running pipeline's stages as the decision sees them."""
    stages = []
    for name, thread, health in list(pipeline.stages):
        if health is None:
            continue  # a stage that ends by design (the backfill reader): its error stops all
        beat, ready, why = health.snapshot()
        stages.append(StageView(name, thread.is_alive(), beat, ready, why))
    err = pipeline.error
    return ProcessView(
        stages=stages,
        stages_since=pipeline.stages_since,
        stall_after_s=stall_after_s,
        failed=None if err is None else (getattr(err, "message", None) or type(err).__name__),
        stopping=pipeline.stop.is_set(),
    )
