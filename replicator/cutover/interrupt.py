"""SIGTERM and SIGINT during a switch: one orderly abort, never a half-done one.

A Kubernetes Job past its ``activeDeadlineSeconds``, a node drain or Ctrl-C sends SIGTERM (or
SIGINT) and, after a grace period, SIGKILL. The first signal becomes :class:`Interrupted`, raised
on the main thread where the switch runs, so it takes the same path as any failed step: before
the decision the old writer is unfenced from its record and the new one fenced again; past it
the old writer stays fenced and a rerun finishes. A second signal while that abort runs is
noted and ignored: an abort cut in half is what leaves two writers, or none.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from replicator.errors import CutoverAborted

log = logging.getLogger(__name__)


class Interrupted(CutoverAborted, KeyboardInterrupt):
    """The switch was asked to stop (SIGTERM, SIGINT). A ``KeyboardInterrupt`` too, so that
    psycopg cancels a statement it interrupts (the fence's lock wait) instead of leaving it to
    commit on the server after the abort."""

    def __init__(self, signame: str, step: str = "interrupted") -> None:
        super().__init__(
            f"stopped by {signame}",
            step=step,
            hint="`replicator status` says which database is the writer",
        )
        self.signame = signame


class SignalGuard:
    """While :meth:`armed`: the first SIGTERM/SIGINT raises :class:`Interrupted` on the main
    thread; inside :meth:`calm` (an abort, a rerun's recovery) it is only noted. Later signals
    are noted and ignored."""

    def __init__(self) -> None:
        self.fired: list[str] = []
        self._calm = 0
        self._raised = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        first = not self.fired
        self.fired.append(name)
        if not first or self._calm:
            log.warning("%s noted: the switch is putting things in order first", name)
            return
        self._raised = True
        raise Interrupted(name)

    def check(self) -> None:
        """At a step's start: a signal noted while calm stops the switch now. So does one whose
        :class:`Interrupted` was raised already: a step that begins while no abort is under
        way means a handler on the way (one that turns an error into a fallback) swallowed
        it, and the stop that was asked for must not turn into a switch that goes on."""
        if self.fired and not self._calm:
            if self._raised:
                log.warning("%s was asked for earlier: the switch stops now", self.fired[0])
            self._raised = True
            raise Interrupted(self.fired[0])

    @contextmanager
    def armed(self) -> Iterator[SignalGuard]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can be set on the main thread only
            return
        previous: dict[signal.Signals, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    @contextmanager
    def calm(self) -> Iterator[None]:
        self._calm += 1
        try:
            yield
        finally:
            self._calm -= 1
