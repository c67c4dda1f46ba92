"""Long-running processes: capture and apply, alone or together, following the pipeline's
direction, stopped cleanly by a signal.

The direction (``fwd``: legacy → target, ``rev``: target → legacy after a cutover) is stored in
the ``replicator`` schema; ``cutover`` and ``rollback`` change it. A running pipeline reconciles
toward it (ARCHITECTURE.md section 8): when it flips, the stages of the old direction stop (the
old slot, drained by the cutover, is dropped so it retains no WAL) and those of the new one
start. Processes on other machines follow the same way, without an RPC layer.

Each stage runs in its own thread; the first non-retriable error stops every stage and is
re-raised to the caller, so ``replicator run`` exits with the error instead of limping on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from connectors import pg
from replicator.apply import ApplyWorker
from replicator.backfill import Backfill, ProgressFn, unfinished
from replicator.capture import Capture
from replicator.config import DatabaseSettings, Settings
from replicator.errors import ReplicatorError
from replicator.state import ensure_schema
from transforms.api import MappingSet

log = logging.getLogger(__name__)

RECONCILE_INTERVAL_S = 0.5


def desired_direction(s: Settings) -> str:
    """The direction the pipeline should run: the target's record first, else legacy's."""
    for db in (s.target, s.source):
        try:
            with pg.connect(db, autocommit=True) as conn, pg.translated(db.masked()):
                ensure_schema(conn)
                row = conn.execute(
                    "SELECT desired_direction FROM replicator.pipeline WHERE name = %s", (s.name,)
                ).fetchone()
        except ReplicatorError:
            continue
        if row is not None:
            return str(row[0])
    return "fwd"


@dataclass
class Pipeline:
    settings: Settings
    mapping: MappingSet
    capture: Capture | None = None
    backfill: Backfill | None = None
    workers: list[ApplyWorker] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    direction: str = "fwd"
    _stage_stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _supervisor: threading.Thread | None = None

    def start(
        self,
        *,
        run_capture: bool = True,
        run_apply: bool = True,
        workers: int = 1,
        backfill: bool | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        """Start the stages of the current direction, and follow direction changes.

        ``backfill=None`` backfills when this start created the forward slot (a fresh pipeline)
        or finds an interrupted backfill; True and False force it either way."""
        self._options = (run_capture, run_apply, workers)
        self.direction = desired_direction(self.settings)
        self._start_stages(backfill, progress)
        self._supervisor = threading.Thread(target=self._reconcile, name="reconcile", daemon=True)
        self._supervisor.start()

    def _start_stages(
        self, backfill: bool | None = None, progress: ProgressFn | None = None
    ) -> None:
        s, d = self.settings, self.direction
        run_capture, run_apply, workers = self._options
        direction = self.mapping.forward if d == "fwd" else self.mapping.reverse
        source, target = (s.source, s.target) if d == "fwd" else (s.target, s.source)
        self._stage_stop = threading.Event()
        self._threads = []
        self.workers = []
        log.info(
            "pipeline %s: running the %s direction", s.name, "forward" if d == "fwd" else "reverse"
        )
        if run_capture:
            self.capture = Capture(s, direction.source_tables, direction=d, source=source)
            created = self.capture.prepare()
            self._spawn("capture", self.capture.run)
            wanted = backfill or (backfill is None and (created is not None or unfinished(s)))
            if d == "fwd" and wanted:
                self.backfill = Backfill(s, direction)
                bf = self.backfill
                self._spawn("backfill", lambda stop: bf.run(stop, progress))
        if run_apply:
            for i in range(workers):
                worker = ApplyWorker(s, direction, dir_name=d, target=target)
                self.workers.append(worker)
                self._spawn(f"apply-{i}", worker.run)

    def _stop_stages(self) -> None:
        self._stage_stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _reconcile(self) -> None:
        while not self.stop.wait(RECONCILE_INTERVAL_S):
            try:
                wanted = desired_direction(self.settings)
                if wanted == self.direction:
                    continue
                log.info("pipeline %s: direction changed to %s", self.settings.name, wanted)
                old = self.direction
                self._stop_stages()
                self._drop_drained_slot(old)
                self.direction = wanted
                self._start_stages(backfill=False)
            except BaseException as exc:
                self._fail("reconcile", exc)
                return

    def _drop_drained_slot(self, direction: str) -> None:
        """The old direction's slot was drained by the switch; left alone it would retain WAL."""
        if not self._options[0]:
            return
        db: DatabaseSettings = self.settings.source if direction == "fwd" else self.settings.target
        with (
            contextlib.suppress(ReplicatorError),
            pg.connect(db, autocommit=True) as conn,
            pg.translated(db.masked()),
        ):
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active",
                (self.settings.slot(direction),),
            )

    def _spawn(self, name: str, target: Callable[[threading.Event], object]) -> None:
        stop = self._stage_stop

        def body() -> None:
            try:
                target(stop)
            except BaseException as exc:
                self._fail(name, exc)

        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _fail(self, name: str, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if isinstance(exc, ReplicatorError):
            log.error("%s stopped: %s", name, exc)
        else:
            log.exception("%s crashed", name)
        self.stop.set()
        self._stage_stop.set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until stopped (by :meth:`shutdown` or an error); re-raise a stage's error."""
        self.stop.wait(timeout)
        if self.stop.is_set():
            self.join()

    def shutdown(self) -> None:
        self.stop.set()
        self.join()

    def join(self) -> None:
        self._stage_stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=60)
        for t in self._threads:
            t.join(timeout=60)
        if self.error is not None:
            raise self.error
