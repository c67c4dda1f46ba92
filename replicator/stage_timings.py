"""Where a live change waits between its source commit and its target commit: per-stage
timings, written as CSV lines when ``metrics.stage_timings_dir`` is set (off by default).

- The capture writes one line per Kafka message: ``partition, offset, ready_at, sent_at,
  acked_at`` — when the first transaction in it was decoded, when the message was handed to the
  producer, when Kafka acknowledged it (the producer's callback, on its I/O thread).
- Each apply worker writes one line per source transaction it commits: ``partition, offset,
  commit_ts, read_at, committed_at`` — the source commit time (the envelope's ``commit_ts``),
  when apply had the message from the consumer, when the target transaction committed.

Joined by (partition, offset), a transaction's wait splits into capture (commit → handed to
the producer), Kafka (→ acknowledged), fetch (→ read by apply) and apply (→ target commit);
``bench.live`` does that (:func:`stage_breakdown`). Times are the wall clock (``time.time()``),
the clock PostgreSQL stamps commits with, so only processes on the source's host compare well.
The hot path pays a ``None`` check when off; when on, a tuple per transaction and a write per
commit or acknowledgement.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

STAGES = ("capture", "kafka", "fetch", "apply", "total")


def _open(directory: str, role: str) -> TextIO:
    Path(directory).mkdir(parents=True, exist_ok=True)
    # Line-buffered: a line reaches the file whole, whichever thread writes it.
    return open(Path(directory) / f"{role}-{os.getpid()}.csv", "a", buffering=1)


class CaptureTimings:
    """The capture's side: when each message was ready, handed over and acknowledged."""

    def __init__(self, directory: str) -> None:
        self._file = _open(directory, "capture")

    def sent(self, future: Any, ready_at: float) -> None:
        """``future``: the producer's future for one message, whose first transaction the
        capture had decoded at ``ready_at``."""
        sent_at = time.time()
        write = self._file.write

        def acked(md: Any) -> None:
            write(f"{md.partition},{md.offset},{ready_at:.6f},{sent_at:.6f},{time.time():.6f}\n")

        future.add_callback(acked)

    def close(self) -> None:
        self._file.close()


class ApplyTimings:
    """An apply worker's side: the transactions of the open batch, written when it commits."""

    def __init__(self, directory: str) -> None:
        self._file = _open(directory, "apply")
        self._pending: list[tuple[int, int, str | None, float]] = []

    def read(self, partition: int, offset: int, env: Any, read_at: float) -> None:
        """One envelope of the message at (partition, offset): a source transaction's last
        (or only) part is timed; slices before it and control messages are not."""
        if env.last and env.control is None:
            self._pending.append((partition, offset, env.commit_ts, read_at))

    def committed(self) -> None:
        if not self._pending:
            return
        at = time.time()
        self._file.write(
            "".join(f"{p},{o},{ts},{r:.6f},{at:.6f}\n" for p, o, ts, r in self._pending)
        )
        self._pending = []

    def forget(self) -> None:
        """The open batch was rolled back: its transactions will be read again."""
        self._pending = []

    def close(self) -> None:
        self._file.close()


class NoApplyTimings(ApplyTimings):
    """Timings off: every call does nothing (the worker calls without checking)."""

    def __init__(self) -> None:
        pass

    def read(self, partition: int, offset: int, env: Any, read_at: float) -> None:
        pass

    def committed(self) -> None:
        pass

    def forget(self) -> None:
        pass

    def close(self) -> None:
        pass


def apply_timings(directory: str) -> ApplyTimings:
    """An apply worker's timings: written under ``directory``, or none when it is empty."""
    return ApplyTimings(directory) if directory else NoApplyTimings()


# -- analysis (bench.live) ----------------------------------------------------------------------


def _rows(directory: Path, role: str) -> Iterable[list[str]]:
    for path in sorted(directory.glob(f"{role}-*.csv")):
        for line in path.read_text().splitlines():
            fields = line.split(",")
            if len(fields) == 5:  # a line cut short by a kill is skipped
                yield fields


def stage_samples(directory: Path, since: float, until: float) -> dict[str, list[float]]:
    """Per-stage waits in milliseconds of every transaction committed on the source between
    ``since`` and ``until`` (wall clock), joined from the capture's and apply's lines."""
    sent: dict[tuple[int, int], tuple[float, float]] = {}
    for p, o, _ready, handed, acked in _rows(directory, "capture"):
        sent[(int(p), int(o))] = (float(handed), float(acked))
    out: dict[str, list[float]] = {name: [] for name in STAGES}
    for p, o, ts, r, c in _rows(directory, "apply"):
        if ts == "None":
            continue
        commit = dt.datetime.fromisoformat(ts).timestamp()
        if not since <= commit <= until:
            continue
        read, done = float(r), float(c)
        out["apply"].append((done - read) * 1000)
        out["total"].append((done - commit) * 1000)
        times = sent.get((int(p), int(o)))
        if times is not None:
            sent_at, acked_at = times
            out["capture"].append((sent_at - commit) * 1000)
            out["kafka"].append((acked_at - sent_at) * 1000)
            out["fetch"].append((read - acked_at) * 1000)
    return out


def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


def stage_breakdown(directory: Path, since: float, until: float) -> dict[str, Any]:
    """``{stage: {"p50": ms, "p99": ms}}`` plus the number of transactions measured."""
    samples = stage_samples(directory, since, until)
    result: dict[str, Any] = {
        name: {"p50": _pct(v, 50), "p99": _pct(v, 99)} for name, v in samples.items()
    }
    result["transactions"] = len(samples["total"])
    return result
