"""One start or stop of the local services at a time, across processes.

Two commands starting the services at once (two terminals; the demo beside the tests; a
benchmark beside ``replicator services start``) each found Kafka stopped and launched a broker on
the same data directory: the second broker failed on the directory's lock, its pid and ports
replaced the first one's in the registry, and the first broker kept running where no command
could stop it. The registry is also read, changed and written whole, so two writers lost each
other's entries. Under this lock the second command waits, then finds the services running.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import ParamSpec, TypeVar

from replicator.errors import PreconditionError

__all__ = ["exclusive", "held"]

P = ParamSpec("P")
R = TypeVar("R")

_held = threading.local()  # nesting depth in this thread: a start may call a stop


@contextlib.contextmanager
def held(state_dir: Path, timeout: float = 600.0) -> Iterator[None]:
    """Hold ``state_dir``/services.lock (nested holds in one thread are free)."""
    if getattr(_held, "depth", 0):
        _held.depth += 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    path = state_dir / "services.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PreconditionError(
                        f"another command has been starting or stopping the local services for "
                        f"{timeout:.0f}s ({path} is held)",
                        hint="wait for it to finish, or stop it; then run the command again",
                    ) from None
                time.sleep(0.2)
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0  # closing the file releases the lock


def exclusive(state_dir: Callable[[], Path]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the decorated start or stop under :func:`held`."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with held(state_dir()):
                return fn(*args, **kwargs)

        return run

    return wrap
