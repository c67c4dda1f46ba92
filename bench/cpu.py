"""Where a benchmark's CPU time goes, per process group, from /proc (Linux).

Short-lived processes (a PostgreSQL backend per connection) are caught by sampling every
``interval`` seconds and keeping each process's last reading; a backend that lives less than one
interval is missed, so the figures are lower bounds. Groups are decided by the caller from the
command line (a PostgreSQL backend's names its database).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _Proc:
    cmd: str
    cpu_s: float
    parent: int
    started: int  # clock ticks after boot: tells a reused pid from the same process


def _read(pid: str) -> _Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return None
    cmd = raw.replace(b"\0", b" ").decode("utf-8", "replace")
    return _Proc(cmd, (int(stat[11]) + int(stat[12])) / _TICK, int(stat[1]), int(stat[19]))


def _all() -> dict[int, _Proc]:
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            got = _read(pid)
            if got is not None:
                out[int(pid)] = got
    return out


class CpuSampler:
    """CPU seconds per group between start and stop. ``group(cmdline, is_descendant)`` names a
    process's group (None: not counted); ``is_descendant``: the process descends from the pid
    :meth:`follow` was given (the product's processes, not a neighbour's)."""

    def __init__(self, group: Callable[[str, bool], str | None], interval: float = 0.2) -> None:
        self.group = group
        self.interval = interval
        self.root: int | None = None
        self._base: dict[int, _Proc] = {}
        self._last: dict[int, _Proc] = {}
        self._mine: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.wall_s = 0.0

    def __enter__(self) -> CpuSampler:
        self._base = _all()
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """Take the last sample (once; later calls change nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall_s = time.monotonic() - self._started

    def follow(self, pid: int) -> None:
        self.root = pid

    def _sample(self) -> None:
        now = _all()
        self._last.update(now)
        if self.root is not None:
            for pid in now:
                p, seen = pid, 0
                while p > 1 and seen < 64 and p in now:
                    if p == self.root or p in self._mine:
                        self._mine.add(pid)
                        break
                    p, seen = now[p].parent, seen + 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, proc in self._last.items():
            name = self.group(proc.cmd, pid in self._mine)
            if name is None:
                continue
            before = self._base.get(pid)
            same = before is not None and before.started == proc.started
            used = proc.cpu_s - (before.cpu_s if same and before is not None else 0.0)
            out[name] = round(out.get(name, 0.0) + used, 2)
        return out

    def report(self) -> dict[str, Any]:
        """CPU seconds per group, and how busy the machine's cores were with them."""
        got = self.seconds()
        cores = os.cpu_count() or 1
        return {
            "cpu_s": got,
            "cpu_busy_ratio": round(sum(got.values()) / max(self.wall_s * cores, 1e-9), 3),
            "cores": cores,
        }
