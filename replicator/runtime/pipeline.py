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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from connectors import pg
from replicator.apply.worker import ApplyWorker
from replicator.backfill.needed import slot_was_lost, wanted
from replicator.backfill.reader import Backfill, ProgressFn
from replicator.capture import Capture
from replicator.config import DatabaseSettings, Settings
from replicator.errors import ReplicatorError
from replicator.health import StageHealth
from replicator.runtime.worker_process import ApplyProcess, LogSetup
from replicator.state import ensure_schema
from transforms.api import MappingSet

log = logging.getLogger(__name__)

RECONCILE_INTERVAL_S = 0.5


def desired_direction(s: Settings) -> str:
    """The direction the pipeline should run: the target's record first, else legacy's."""
    watch = DirectionWatch(s, create_schema=True)
    try:
        # At start a stage must run to report its health: with the target down, legacy's
        # record (both are written by a switch) stands in. Following later never guesses.
        return watch.read(fallback=True) or "fwd"
    finally:
        watch.close()


class DirectionWatch:
    """Reads the desired direction, keeping one connection per side between reads: the
    supervisor asks twice a second, and a connection (plus the schema DDL) each time cost as
    much CPU as a tenth of the apply worker."""

    def __init__(self, s: Settings, *, create_schema: bool = False) -> None:
        self.s = s
        self.create_schema = create_schema
        self._conns: dict[str, psycopg.Connection[Any]] = {}

    def read(self, *, fallback: bool = False) -> str | None:
        """The desired direction; None when it cannot be told (the target, where a switch
        records it first, is unreachable), unless ``fallback`` takes legacy's record then.
        Following a guessed "fwd" after a cutover would drop the live reverse slot."""
        for side, db in (("target", self.s.target), ("source", self.s.source)):
            try:
                try:
                    row = self._query(side, db)
                except ReplicatorError:
                    # The held connection may just have been closed under us (a restart, a
                    # fence terminating sessions): a fresh one decides whether the side is down.
                    self._drop(side)
                    row = self._query(side, db)
            except ReplicatorError:
                self._drop(side)
                if side == "target" and not fallback:
                    return None
                continue
            if row is not None:
                return str(row[0])
        return "fwd"  # recorded nowhere: a pipeline that never switched

    def _query(self, side: str, db: DatabaseSettings) -> tuple[Any, ...] | None:
        conn = self._conns.get(side)
        if conn is None or conn.closed:
            conn = self._conns[side] = pg.connect(db.conninfo(), autocommit=True)
        with pg.translated(db.masked()):
            if self.create_schema:
                ensure_schema(conn)
            try:
                return conn.execute(
                    "SELECT desired_direction FROM replicator.pipeline WHERE name = %s",
                    (self.s.name,),
                ).fetchone()
            except psycopg.errors.UndefinedTable:
                return None  # nothing recorded on this side yet

    def _drop(self, side: str) -> None:
        conn = self._conns.pop(side, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        for side in list(self._conns):
            self._drop(side)


@dataclass
class Pipeline:
    settings: Settings
    mapping: MappingSet
    capture: Capture | None = None
    backfill: Backfill | None = None
    workers: list[ApplyWorker | ApplyProcess] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    direction: str = "fwd"
    # The running stages, with the vital signs of each (:mod:`replicator.health`), and since
    # when the current set is (being) started: a direction change starts a new set.
    stages: list[tuple[str, threading.Thread, StageHealth | None]] = field(default_factory=list)
    stages_since: float = field(default_factory=time.monotonic)
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
        processes: bool = False,
        log_setup: LogSetup | None = None,
    ) -> None:
        """Start the stages of the current direction, and follow direction changes.

        ``backfill=None`` backfills when this start created the forward slot (a fresh pipeline),
        finds an interrupted backfill (resumed), or finds none of every table ever recorded (a
        first run that stopped before its backfill began); True and False force it either way.
        ``processes`` runs each apply worker in a child process
        (:mod:`replicator.runtime.worker_process`), which loads the mapping from the settings
        (``log_setup`` configures its logging)."""
        self._options = (run_capture, run_apply, workers)
        self._processes = (processes, log_setup)
        self.direction = desired_direction(self.settings)
        self._start_stages(backfill, progress)
        self._supervisor = threading.Thread(target=self._reconcile, name="reconcile", daemon=True)
        self._supervisor.start()

    def _start_stages(
        self,
        backfill: bool | None = None,
        progress: ProgressFn | None = None,
        *,
        switched: bool = False,
    ) -> None:
        """``switched``: started for a direction a switch recorded (no first backfill; a
        forward slot found lost is still re-synced)."""
        s, d = self.settings, self.direction
        run_capture, run_apply, workers = self._options
        direction = self.mapping.forward if d == "fwd" else self.mapping.reverse
        source, target = (s.source, s.target) if d == "fwd" else (s.target, s.source)
        self._stage_stop = threading.Event()
        self._threads = []
        self.stages = []
        self.stages_since = time.monotonic()
        self.workers = []
        log.info(
            "pipeline %s: running the %s direction", s.name, "forward" if d == "fwd" else "reverse"
        )
        if run_capture:
            self.capture = Capture(s, direction.source_tables, direction=d, source=source)
            created = self.capture.prepare()
            self._spawn("capture", self.capture.run, self.capture.health)
            needed, tables = (True, None) if backfill else (False, None)
            if backfill is None and d == "fwd":
                needed, tables = (
                    (True, None) if created is not None else wanted(s, direction.source_tables)
                )
            # After a rollback the forward slot was armed by it: one created as the pipeline
            # follows the switch replaces a lost one, as at a start.
            lost = d == "fwd" and created is not None and (backfill is None or switched)
            if lost and slot_was_lost(s):
                log.error(
                    "pipeline %s: the forward slot %s was gone and is created anew; changes"
                    " made on legacy while it was missing were never captured: re-syncing"
                    " every table (emptied first, so deletes in the gap are not kept)",
                    s.name,
                    s.slot(d),
                )
                needed, tables = True, list(direction.source_tables)  # truncate, then load
            if d == "fwd" and needed:
                self.backfill = Backfill(s, direction, tables=tables)
                bf = self.backfill
                self._spawn("backfill", lambda stop: bf.run(stop, progress))
        if run_apply:
            processes, log_setup = self._processes
            for i in range(workers):
                worker: ApplyWorker | ApplyProcess
                if processes:
                    worker = ApplyProcess(s, d, f"apply-{i}", log_setup)
                else:
                    worker = ApplyWorker(s, direction, dir_name=d, target=target)
                self.workers.append(worker)
                self._spawn(f"apply-{i}", worker.run, worker.health)
        if run_apply and d == "fwd" and s.validation.continuous:
            from replicator.runtime.continuous import ContinuousValidation

            checker = ContinuousValidation(s, self.mapping)
            self._spawn("validate", checker.run)  # no liveness: a large table takes a while

    def _stop_stages(self) -> None:
        self._stage_stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _reconcile(self) -> None:
        watch = DirectionWatch(self.settings)
        try:
            self._follow(watch)
        finally:
            watch.close()

    def _follow(self, watch: DirectionWatch) -> None:
        while not self.stop.wait(RECONCILE_INTERVAL_S):
            try:
                wanted = watch.read()
                if wanted is None or wanted == self.direction:
                    continue  # unknown (target unreachable): keep running as we are
                log.info("pipeline %s: direction changed to %s", self.settings.name, wanted)
                old = self.direction
                self._stop_stages()
                self._drop_drained_slot(old)
                if self.stop.is_set():
                    return  # shut down meanwhile: starting the new stages would orphan them
                self.direction = wanted
                self._start_stages(backfill=False, switched=True)
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
            pg.connect(db.conninfo(), autocommit=True) as conn,
            pg.translated(db.masked()),
        ):
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active",
                (self.settings.slot(direction),),
            )

    def _spawn(
        self,
        name: str,
        target: Callable[[threading.Event], object],
        health: StageHealth | None = None,
    ) -> None:
        stop = self._stage_stop

        def body() -> None:
            try:
                target(stop)
            except BaseException as exc:
                self._fail(name, exc)

        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        self._threads.append(t)
        self.stages.append((name, t, health))

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
        # The supervisor may have started a new generation of stages (a direction change) after
        # the first set(): that generation has its own stop event.
        self._stage_stop.set()
        for t in self._threads:
            t.join(timeout=60)
        if self.error is not None:
            raise self.error
