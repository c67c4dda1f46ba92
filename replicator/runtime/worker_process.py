"""An apply worker in a process of its own, run by the pipeline like any other stage.

Why processes: capture, the backfill reader and apply are CPU-bound Python, and threads of one
interpreter take turns on one lock. Apply is the heavier stage (it parses, transforms and
formats every row); in its own process it runs beside capture on another core, and several
workers scale with the cores instead of sharing one. Kafka and the target's ``replicator``
schema already carry everything between the stages, so a process needs nothing shared.

The parent keeps a thread per child (the stage as the pipeline sees it): it asks the child to
stop when the stage stops, and re-raises the child's error so that the pipeline stops as it
would for a thread. The child dies with its parent, even when the parent is killed with
SIGKILL, so a killed ``replicator run`` never leaves a worker applying behind the next one.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from replicator.config import Settings
from replicator.errors import ReplicatorError
from replicator.health import StageHealth

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_S = 60.0

LogSetup = Callable[[], None]


class WorkerProcessError(ReplicatorError):
    """An apply worker process ended without saying why (killed, or out of memory)."""


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies; elsewhere, watch the parent."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def _watch_parent(parent: int, stop: threading.Event) -> None:
    # Where prctl is missing: an orphan is re-parented; stop then.
    while not stop.wait(1.0):
        if os.getppid() != parent:
            os._exit(1)


def _child(
    settings: Settings,
    dir_name: str,
    parent: int,
    errors: Connection,
    log_setup: LogSetup | None,
    health: StageHealth,
) -> None:
    _die_with_parent(parent)
    # The terminal's Ctrl-C reaches the whole process group: the parent decides when to stop,
    # and says so with SIGTERM (not a multiprocessing Event: setting one waits for its waiters
    # to wake, and a waiter in a child that died never does).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if log_setup is not None:
        log_setup()
    from replicator.apply.worker import ApplyWorker
    from replicator.runtime.gc_tuning import tune_gc
    from transforms.loader import load_mapping

    threading.Thread(target=_watch_parent, args=(parent, stop), daemon=True).start()
    try:
        mapping = load_mapping(settings.mapping)
        direction = mapping.forward if dir_name == "fwd" else mapping.reverse
        target = settings.target if dir_name == "fwd" else settings.source
        tune_gc()
        worker = ApplyWorker(settings, direction, dir_name=dir_name, target=target, health=health)
        worker.run(stop)
    except BaseException as exc:
        try:
            errors.send(exc)
        except Exception:  # an exception that does not pickle: its text is enough
            errors.send(WorkerProcessError(f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    finally:
        errors.close()


class ApplyProcess:
    """One apply worker in a child process; :meth:`run` is the stage body (blocks until done)."""

    def __init__(
        self, settings: Settings, dir_name: str, name: str, log_setup: LogSetup | None = None
    ) -> None:
        self.settings = settings
        self.dir_name = dir_name
        self.name = name
        self.log_setup = log_setup
        self.pid: int | None = None
        # In shared memory: the child's loop reports, the parent's /healthz and /readyz read.
        self.health = StageHealth(shared=True)

    def run(self, stop: threading.Event) -> None:
        # spawn, not fork: the parent has threads (Kafka clients, capture) that fork would
        # copy in whatever state they were in.
        ctx = multiprocessing.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_child,
            args=(self.settings, self.dir_name, os.getpid(), send, self.log_setup, self.health),
            name=f"replicator-{self.name}",
            daemon=True,
        )
        # Linux ties the child's death signal to the thread that started it: this one, which
        # lives until the child is joined.
        proc.start()
        send.close()
        self.pid = proc.pid
        try:
            while proc.is_alive() and not stop.is_set():
                proc.join(0.2)
        finally:
            if proc.is_alive():
                proc.terminate()
            proc.join(STOP_TIMEOUT_S)
            if proc.is_alive():
                log.warning("%s did not stop within %.0fs; killing it", self.name, STOP_TIMEOUT_S)
                proc.kill()
                proc.join()
        error: BaseException | None = None
        with contextlib.suppress(EOFError, OSError):
            if receive.poll():
                error = receive.recv()
        receive.close()
        if error is not None:
            raise error
        if proc.exitcode != 0 and not stop.is_set():
            raise WorkerProcessError(
                f"{self.name} (pid {proc.pid}) exited with code {proc.exitcode}",
                hint="see the log above for its last words; restart the command to resume",
            )
