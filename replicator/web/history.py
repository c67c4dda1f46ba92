"""What the web page's chart shows: a fixed-size ring of samples kept in memory.

One sample a second for 24 h is 86,400 rows; each column is an ``array('d')`` (8 bytes a value,
about 4 MB in all), so the ring costs no garbage collection and no database. The page never
gets the raw ring: :meth:`History.series` folds a time span into at most ``points`` buckets —
the highest lag of a bucket (a spike must not be averaged away), the mean of the rates — so a
day of history is as small and as fast to send as an hour.
"""

from __future__ import annotations

import math
import threading
from array import array
from dataclasses import dataclass
from typing import Any

# The columns of a sample, in order; NaN where a value was unknown at that moment.
COLUMNS = ("lag_s", "rows_per_s", "messages_in_per_s", "messages_applied_per_s", "wal_bytes_per_s")
# How each column is folded into a bucket: the highest lag, the mean of rates.
_PEAK = {"lag_s"}


@dataclass(frozen=True)
class Sample:
    t: float  # epoch seconds
    lag_s: float | None
    rows_per_s: float | None
    messages_in_per_s: float | None
    messages_applied_per_s: float | None
    wal_bytes_per_s: float | None


def _num(v: float | None) -> float:
    return math.nan if v is None else float(v)


class History:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._t = array("d", [0.0]) * capacity
        self._cols = {c: array("d", [math.nan]) * capacity for c in COLUMNS}
        self._next = 0  # slot of the next sample
        self._size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def add(self, s: Sample) -> None:
        with self._lock:
            i = self._next
            self._t[i] = s.t
            for c in COLUMNS:
                self._cols[c][i] = _num(getattr(s, c))
            self._next = (i + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)

    def _ordered(self) -> tuple[array[float], dict[str, array[float]]]:
        """Oldest first (a copy, taken under the lock)."""
        with self._lock:
            start = (self._next - self._size) % self.capacity
            if start + self._size <= self.capacity:
                sl = slice(start, start + self._size)
                return self._t[sl], {c: a[sl] for c, a in self._cols.items()}
            return (
                self._t[start:] + self._t[: self._next],
                {c: a[start:] + a[: self._next] for c, a in self._cols.items()},
            )

    def series(self, span_s: float, points: int, now: float) -> dict[str, Any]:
        """The last ``span_s`` seconds before ``now`` as at most ``points`` buckets of equal
        width: ``{"t": [...], "lag_s": [...], ...}``, a bucket's time its end, None for a gap."""
        points = max(1, points)
        t, cols = self._ordered()
        lo = now - span_s
        # Samples are appended in time order: find the first one inside the span.
        first = _bisect(t, lo)
        width = span_s / points
        out: dict[str, list[float | None]] = {"t": [], **{c: [] for c in COLUMNS}}
        acc: dict[str, list[float]] = {c: [] for c in COLUMNS}
        bucket = -1
        for i in range(first, len(t)):
            b = min(points - 1, int((t[i] - lo) / width))
            if b != bucket:
                if bucket >= 0:
                    _flush(out, acc, lo + (bucket + 1) * width)
                bucket = b
            for c in COLUMNS:
                v = cols[c][i]
                if v == v:  # not NaN
                    acc[c].append(v)
        if bucket >= 0:
            _flush(out, acc, lo + (bucket + 1) * width)
        return {"span_s": span_s, "points": len(out["t"]), **out}


def _bisect(t: array[float], x: float) -> int:
    lo, hi = 0, len(t)
    while lo < hi:
        mid = (lo + hi) // 2
        if t[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _flush(out: dict[str, list[float | None]], acc: dict[str, list[float]], end: float) -> None:
    out["t"].append(round(end, 3))
    for c, vals in acc.items():
        if not vals:
            out[c].append(None)
        elif c in _PEAK:
            out[c].append(round(max(vals), 4))
        else:
            out[c].append(round(sum(vals) / len(vals), 2))
        vals.clear()
