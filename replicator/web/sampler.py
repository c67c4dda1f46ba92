"""One sampler per server: collects the pipeline's status once an interval for every viewer.

However many browsers poll, the databases and Kafka see one ``status`` collection per
interval, on one kept session per database and one Kafka consumer: the sampler keeps the latest state as ready-made JSON bytes, and the ring of
:mod:`replicator.web.history` for the chart. Rates (rows, messages, WAL bytes per second) are
differences of the counters between two samples; a counter that went backwards (a new
direction after a switch) gives no rate for that sample rather than a negative one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson

from connectors import pg
from connectors.kafka_io import OffsetReader
from replicator.config import Settings
from replicator.errors import ReplicatorError
from replicator.status.overview import Status, collect
from replicator.web.details import read_details
from replicator.web.history import History, Sample

log = logging.getLogger(__name__)


@dataclass
class Counters:
    t: float
    direction: str
    rows: int | None  # rows applied, all tables
    produced: int | None  # end offsets of the changes topic, all partitions
    applied: int | None  # next offsets stored by apply, all partitions
    confirmed_lsn: int | None  # the slot's confirmed_flush_lsn


def counters(st: Status, details: dict[str, Any], t: float) -> Counters:
    kafka, tgt = st.kafka, st.target
    return Counters(
        t=t,
        direction=st.direction,
        rows=sum(tgt.rows_applied.values()) if tgt is not None else None,
        produced=sum(p.end_offset for p in kafka.partitions) if kafka is not None else None,
        applied=(
            sum(p.applied_offset or 0 for p in kafka.partitions) if kafka is not None else None
        ),
        confirmed_lsn=details.get("slot_confirmed_lsn"),
    )


def rates(prev: Counters | None, cur: Counters) -> dict[str, float | None]:
    def rate(a: int | None, b: int | None) -> float | None:
        if prev is None or prev.direction != cur.direction or a is None or b is None:
            return None
        dt = cur.t - prev.t
        return (b - a) / dt if dt > 0 and b >= a else None

    p = prev or cur
    return {
        "rows_per_s": rate(p.rows, cur.rows),
        "messages_in_per_s": rate(p.produced, cur.produced),
        "messages_applied_per_s": rate(p.applied, cur.applied),
        "wal_bytes_per_s": rate(p.confirmed_lsn, cur.confirmed_lsn),
    }


class Sampler:
    def __init__(self, settings: Settings, history: History, interval_s: float) -> None:
        self.s = settings
        self.history = history
        self.interval_s = interval_s
        self._prev: Counters | None = None
        # One Kafka consumer and one session per database for every sample.
        self._end_offsets = OffsetReader(**settings.kafka.client_options())
        self._sessions = pg.Sessions()
        self._state = orjson.dumps({"sampled_at": None, "message": "first sample pending"})
        self._lock = threading.Lock()
        self.samples = 0

    @property
    def state_json(self) -> bytes:
        with self._lock:
            return self._state

    def sample_once(self) -> None:
        started = time.monotonic()
        now = time.time()
        st = collect(self.s, end_offsets=self._end_offsets, sessions=self._sessions)
        details = read_details(self.s, st.direction, self._sessions)
        cur = counters(st, details, now)
        r = rates(self._prev, cur)
        self._prev = cur
        lag = st.target.end_to_end_lag_s if st.target is not None else None
        self.history.add(Sample(t=now, lag_s=lag, **r))
        state = {
            "sampled_at": now,
            "sample_ms": round((time.monotonic() - started) * 1000, 1),
            "interval_s": self.interval_s,
            "status": st.to_json(),
            "details": details,
            "rates": r,
        }
        body = orjson.dumps(state, default=str)
        with self._lock:
            self._state = body
        self.samples += 1

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.sample_once()
            except ReplicatorError as exc:  # collect names unreachable parts; this is the rest
                log.warning("web: sampling failed: %s", exc.message)
            except Exception:  # the page must never take the pipeline down with it
                log.exception("web: sampling failed")
            # A slow sample (a loaded machine) spaces the next one out: the sampler spends at
            # most half its time collecting, so watching never adds to a struggling pipeline.
            took = time.monotonic() - started
            stop.wait(max(0.05, self.interval_s - took, took))
        self._end_offsets.close()
        self._sessions.close()
