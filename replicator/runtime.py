"""Long-running processes: capture and apply, alone or together, stopped cleanly by a signal.

Each stage runs in its own thread; the first non-retriable error stops every stage and is
re-raised to the caller, so ``replicator run`` exits with the error instead of limping on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from replicator.apply import ApplyWorker
from replicator.backfill import Backfill, ProgressFn, unfinished
from replicator.capture import Capture
from replicator.config import Settings
from replicator.errors import ReplicatorError
from transforms.api import MappingSet

log = logging.getLogger(__name__)


@dataclass
class Pipeline:
    settings: Settings
    mapping: MappingSet
    capture: Capture | None = None
    backfill: Backfill | None = None
    workers: list[ApplyWorker] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(
        self,
        *,
        run_capture: bool = True,
        run_apply: bool = True,
        workers: int = 1,
        backfill: bool | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        """Start the stages. ``backfill=None`` backfills when this start created the slot (a
        fresh pipeline); True and False force it either way."""
        s = self.settings
        if run_capture:
            self.capture = Capture(s, self.mapping.forward.source_tables)
            created = self.capture.prepare()
            self._spawn("capture", self.capture.run)
            if backfill or (backfill is None and (created is not None or unfinished(s))):
                self.backfill = Backfill(s, self.mapping.forward)
                bf = self.backfill
                self._spawn("backfill", lambda stop: bf.run(stop, progress))
        if run_apply:
            for i in range(workers):
                worker = ApplyWorker(s, self.mapping.forward)
                self.workers.append(worker)
                self._spawn(f"apply-{i}", worker.run)

    def _spawn(self, name: str, target: Callable[[threading.Event], object]) -> None:
        def body() -> None:
            try:
                target(self.stop)
            except BaseException as exc:
                if self.error is None:
                    self.error = exc
                if isinstance(exc, ReplicatorError):
                    log.error("%s stopped: %s", name, exc)
                else:
                    log.exception("%s crashed", name)
                self.stop.set()

        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def wait(self, timeout: float | None = None) -> None:
        """Block until stopped (by :meth:`shutdown` or an error); re-raise a stage's error."""
        self.stop.wait(timeout)
        if self.stop.is_set():
            self.join()

    def shutdown(self) -> None:
        self.stop.set()
        self.join()

    def join(self) -> None:
        for t in self._threads:
            t.join(timeout=60)
        if self.error is not None:
            raise self.error
