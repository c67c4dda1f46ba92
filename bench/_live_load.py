"""The legacy writers and target probes behind ``bench.live``: a bulk transaction, many small
transactions from concurrent clients, and a paced load whose per-transaction lag is measured.

Every write goes to two tables shaped alike on every side::

    a (id bigint PRIMARY KEY, client int, v text, n int)    b (id bigint PRIMARY KEY, client int, v text)

Ids are handed out by one :class:`Ids` for the whole run, so a row's id says which workload
wrote it and "the row with id X is on the target" is the only question a probe asks.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

DDL = (
    "CREATE TABLE a (id bigint PRIMARY KEY, client int NOT NULL, v text NOT NULL, "
    "n int NOT NULL DEFAULT 0)",
    "CREATE TABLE b (id bigint PRIMARY KEY, client int NOT NULL, v text NOT NULL)",
)

# How often a probe looks at the target: the resolution of every lag and end time measured.
POLL_S = 0.01
# The paced load's first second is not measured (connections, caches).
PACED_WARMUP_S = 1.0


class Ids:
    """Consecutive id ranges, unique across every workload and both destinations."""

    def __init__(self) -> None:
        self._next = 1
        self._lock = threading.Lock()

    def take(self, n: int) -> int:
        with self._lock:
            first = self._next
            self._next += n
            return first


Probe = Callable[[int], bool]  # "is the row a.id = X on the target?"


def has_row(conn: psycopg.Connection[Any]) -> Probe:
    def probe(row_id: int) -> bool:
        return conn.execute("SELECT 1 FROM a WHERE id = %s", (row_id,)).fetchone() is not None

    return probe


def wait_visible(probe: Probe, row_id: int, timeout: float, what: str) -> float:
    """Poll until the row is on the target; the perf_counter time it was first seen."""
    deadline = time.perf_counter() + timeout
    while True:
        if probe(row_id):
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise SystemExit(f"{what}: row a.id={row_id} not on the target after {timeout:.0f}s")
        time.sleep(POLL_S)


def _insert_range(
    conn: psycopg.Connection[Any], table: str, first: int, n: int, client: int
) -> None:
    conn.execute(
        f"INSERT INTO {table} (id, client, v) "
        "SELECT g, %s, md5(g::text) FROM generate_series(%s::bigint, %s::bigint) g",
        (client, first, first + n - 1),
    )


# -- bulk ----------------------------------------------------------------------------------------


@dataclass
class Bulk:
    changes: int
    write_s: float  # the transaction, begin to commit
    visible_s: float  # commit to the last row on the target

    @property
    def rate(self) -> float:
        return self.changes / self.visible_s


def bulk(conninfo: str, ids: Ids, probe: Probe, changes: int, timeout: float) -> Bulk:
    """One transaction: ``changes`` inserts, half into each table, the last one into ``a``."""
    half = changes // 2
    first_b, first_a = ids.take(changes - half), ids.take(half)
    with psycopg.connect(conninfo) as conn:
        t0 = time.perf_counter()
        _insert_range(conn, "b", first_b, changes - half, 0)
        _insert_range(conn, "a", first_a, half, 0)
        conn.commit()
        committed = time.perf_counter()
    seen = wait_visible(probe, first_a + half - 1, timeout, "bulk transaction")
    return Bulk(changes, committed - t0, seen - committed)


# -- many small transactions ---------------------------------------------------------------------


@dataclass
class Small:
    changes: int
    clients: int
    write_s: float  # first begin to the last client's last commit
    total_s: float  # first begin to everything on the target

    @property
    def rate(self) -> float:
        return self.changes / self.total_s

    @property
    def offered(self) -> float:
        return self.changes / self.write_s


def _client(conninfo: str, ids: Ids, client: int, txns: int, go: threading.Event) -> None:
    with psycopg.connect(conninfo) as conn:
        go.wait()
        for _ in range(txns):
            i = ids.take(1)
            # Three row changes: a new row in each table and an update of one of them.
            conn.execute("INSERT INTO a (id, client, v) VALUES (%s, %s, 'x')", (i, client))
            conn.execute("INSERT INTO b (id, client, v) VALUES (%s, %s, 'y')", (i, client))
            conn.execute("UPDATE a SET n = n + 1 WHERE id = %s", (i,))
            conn.commit()


def small(conninfo: str, ids: Ids, probe: Probe, clients: int, txns: int, timeout: float) -> Small:
    go = threading.Event()
    threads = [
        threading.Thread(target=_client, args=(conninfo, ids, c, txns, go), daemon=True)
        for c in range(1, clients + 1)
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)  # connections open before the clock starts
    t0 = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    written = time.perf_counter()
    # Commits reach the target in commit order: once a row committed after all the others is
    # there, so is everything before it.
    sentinel = ids.take(1)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("INSERT INTO a (id, client, v) VALUES (%s, 0, 'end')", (sentinel,))
    seen = wait_visible(probe, sentinel, timeout, "small transactions")
    return Small(clients * txns * 3, clients, written - t0, seen - t0)


# -- paced load and its lag ----------------------------------------------------------------------


@dataclass
class Lag:
    offered: float  # row changes per second actually written
    lags_ms: list[float] = field(default_factory=list)
    missing: int = 0  # measured commits never seen on the target within the grace period

    def pct(self, q: float) -> float:
        if not self.lags_ms:
            return float("nan")
        if len(self.lags_ms) == 1:
            return self.lags_ms[0]
        return statistics.quantiles(self.lags_ms, n=100, method="inclusive")[int(q) - 1]


def paced(
    conninfo: str,
    ids: Ids,
    target_conninfo: str,
    rate: int,
    seconds: float,
    warmup_s: float = PACED_WARMUP_S,
    tick_s: float = 0.01,
) -> Lag:
    """``rate`` row changes per second in one transaction per tick (80% into ``a``, the rest
    into ``b``), from one writer so that ids in ``a`` grow in commit order; a poller reads the
    target's ``max(a.id)`` every POLL_S, and a transaction's lag is the time from its commit
    returning to the first poll that sees its last ``a`` row."""
    per_tick = max(1, round(rate * tick_s))
    in_a = max(1, per_tick * 4 // 5)
    commits: list[tuple[int, float]] = []  # (last a.id, commit time)
    seen: list[tuple[float, int]] = []  # (poll time, max a.id on the target)
    done = threading.Event()

    def poll() -> None:
        with psycopg.connect(target_conninfo, autocommit=True) as tc:
            while not done.is_set():
                row = tc.execute("SELECT coalesce(max(id), 0) FROM a").fetchone()
                seen.append((time.perf_counter(), int(row[0]) if row else 0))
                time.sleep(POLL_S)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    written = 0
    with psycopg.connect(conninfo) as conn:
        start = time.perf_counter()
        tick = 0
        while (now := time.perf_counter()) - start < seconds:
            # A fixed schedule: a late tick is written at once, without making up for it.
            delay = start + tick * tick_s - now
            if delay > 0:
                time.sleep(delay)
            tick += 1
            first_a = ids.take(in_a)
            if per_tick > in_a:
                _insert_range(conn, "b", ids.take(per_tick - in_a), per_tick - in_a, 0)
            _insert_range(conn, "a", first_a, in_a, 0)
            conn.commit()
            commits.append((first_a + in_a - 1, time.perf_counter()))
            written += per_tick
        elapsed = time.perf_counter() - start
    # Let the last commits arrive (or give up on them) before the poller stops.
    last_id = commits[-1][0]
    deadline = time.perf_counter() + 30
    while (not seen or seen[-1][1] < last_id) and time.perf_counter() < deadline:
        time.sleep(POLL_S)
    done.set()
    poller.join(5)
    result = Lag(offered=written / elapsed)
    measured = [(last, c) for last, c in commits if c - start >= warmup_s]
    j = 0
    for last, committed in measured:
        while j < len(seen) and (seen[j][1] < last or seen[j][0] < committed):
            j += 1
        if j == len(seen):
            break
        result.lags_ms.append((seen[j][0] - committed) * 1000)
    result.missing = len(measured) - len(result.lags_ms)
    return result
