"""End-to-end lag measured from the data: how long the oldest source change not yet applied
on the target has waited (docs/status.md, "End-to-end lag").

The apply stores, beside each partition's offset and in the same transaction as the rows, the
source commit time of the newest transaction it applied; the heartbeats table holds the newest
heartbeat it applied. Either is a point of the source's time up to which that partition is
applied (``through``). What waits is read where it waits: messages of the changes topic past
apply's stored offsets, and WAL the capture has not read from the slot. Then:

- something waits: lag = now - ``through`` of the partitions it waits on (all of them for WAL
  in the slot, which any partition may receive). The oldest waiting change committed at or
  after that point, so the figure is an upper bound, off by the gap between the last applied
  change and the next one: milliseconds under load, at most a heartbeat interval when idle;
- nothing waits: the last heartbeat's transit time (a change committed now would take that);
- never less than how overdue the next heartbeat is, so a capture that stopped reading while
  its slot looks attached still shows a growing lag.

Every time is the source server's clock: ``now`` is read there (carried forward by this
host's monotonic clock to the moment the target was read), commit times and heartbeats were
stamped there. Only the heartbeat's transit time compares two servers' clocks (NTP assumed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from connectors import pg
from connectors.envelope import parse_lsn
from replicator.config import DatabaseSettings, Settings

# WAL an attached capture has not read yet, tolerated as the instant's race between the source
# flushing and the walsender reading (and, without pg_read_all_stats, the capture's confirmed
# position trailing by up to capture.status_interval_s). A detached slot tolerates none.
SLOT_SLACK_BYTES = 1 << 20


@dataclass(frozen=True)
class SlotReading:
    """One read of the source: the slot's positions and the source's clock."""

    exists: bool
    active: bool
    wal_status: str | None
    current_lsn: int
    confirmed_lsn: int | None
    restart_lsn: int | None
    unread_bytes: int | None  # WAL the capture has not read (see read_slot)
    now: float  # the source's clock, seconds since the epoch
    at: float  # time.monotonic() when read
    invalidation_reason: str | None = None  # PostgreSQL 17+: why the server invalidated it

    @property
    def capture_behind(self) -> bool:
        if self.unread_bytes is None:
            return False
        return self.unread_bytes > (SLOT_SLACK_BYTES if self.active else 0)

    def now_at(self, mono: float) -> float:
        """The source's clock at ``mono`` (this host's monotonic clock)."""
        return self.now + (mono - self.at)


@dataclass(frozen=True)
class Applied:
    """One partition as the apply stored it beside its rows."""

    next_offset: int
    commit_ts: float | None  # source commit time of the newest applied transaction
    heartbeat_at: float | None  # source time the newest applied heartbeat was emitted
    heartbeat_latency_s: float | None  # its applied_at - emitted_at (two servers' clocks)

    @property
    def through(self) -> float | None:
        """Source time up to which everything of this partition is applied."""
        known = [t for t in (self.commit_ts, self.heartbeat_at) if t is not None]
        return max(known) if known else None


@dataclass(frozen=True)
class AppliedReading:
    parts: dict[int, Applied]
    target_now: float  # the target's clock, seconds since the epoch
    at: float  # time.monotonic() when read


def estimate(
    now: float,
    applied: Mapping[int, Applied],
    behind: Mapping[int, int],
    *,
    capture_behind: bool,
    heartbeat_interval_s: float,
) -> float | None:
    """The lag in seconds at ``now`` (source clock), or None when nothing was ever applied.

    ``behind``: messages per partition past apply's stored offsets; ``capture_behind``: WAL
    the capture has not read. Pure, for the unit tests."""
    points = {p: a.through for p, a in applied.items() if a.through is not None}
    if not points:
        return None
    # A partition waiting without a point of its own (nothing applied there yet) is counted
    # from the oldest point known: the best guess there is, its messages are not read here.
    oldest, newest = min(points.values()), max(points.values())
    since = [points.get(p, oldest) for p, n in behind.items() if n > 0]
    if capture_behind:
        since.append(newest)  # the unread WAL follows everything captured, on any partition
    if since:
        lag = now - min(since)
    else:
        latencies = [a.heartbeat_latency_s for a in applied.values() if a.heartbeat_latency_s]
        lag = min(max(latencies, default=0.0), now - newest)
    beats = [a.heartbeat_at for a in applied.values() if a.heartbeat_at is not None]
    if beats:
        lag = max(lag, now - min(beats) - heartbeat_interval_s)
    return max(0.0, lag)


# -- reading -------------------------------------------------------------------------------


def read_slot(conn: psycopg.Connection[Any], slot: str) -> SlotReading:
    """The slot, the source's WAL positions and its clock, in one query.

    WAL the capture has not read: from the walsender's ``sent_lsn`` (it reads all WAL, other
    databases' too) when the slot is attached and pg_stat_replication shows it (superuser or
    pg_read_all_stats), else from the slot's confirmed position; up to the flushed WAL, which
    is all a walsender can read (a commit is flushed before it returns)."""
    # The invalidation reason is a column from PostgreSQL 17 on.
    reason = "s.invalidation_reason" if conn.info.server_version >= 170000 else "NULL::text"
    row = conn.execute(
        "SELECT extract(epoch FROM clock_timestamp())::float8, s.slot_name IS NOT NULL,"
        " coalesce(s.active, false), s.wal_status, pg_current_wal_lsn()::text,"
        " pg_current_wal_flush_lsn()::text, s.confirmed_flush_lsn::text, s.restart_lsn::text,"
        f" r.sent_lsn::text, {reason}"
        " FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = %s"
        " LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid",
        (slot,),
    ).fetchone()
    at = time.monotonic()
    assert row is not None  # one row whatever the slot
    now, exists, active, wal_status, current, flushed, confirmed, restart, sent, why = row
    read_to = sent if active and sent else confirmed
    unread = max(0, parse_lsn(flushed) - parse_lsn(read_to)) if exists and read_to else None
    return SlotReading(
        exists=bool(exists),
        active=bool(active),
        wal_status=wal_status,
        current_lsn=parse_lsn(current),
        confirmed_lsn=parse_lsn(confirmed) if confirmed else None,
        restart_lsn=parse_lsn(restart) if restart else None,
        unread_bytes=unread,
        now=float(now),
        at=at,
        invalidation_reason=why,
    )


def read_applied(conn: psycopg.Connection[Any], topic: str) -> AppliedReading:
    """Each partition's stored position with its points in source time, and the target's
    clock (the lag's clock when the source cannot be read). Needs the state schema."""
    # The commit time is read through to_jsonb: a state schema an older apply created lacks
    # the column until a new apply starts, and status must not fail on it meanwhile.
    rows = conn.execute(
        "SELECT o.partition, o.next_offset,"
        " extract(epoch FROM (to_jsonb(o) ->> 'last_commit_ts')::timestamptz)::float8,"
        " extract(epoch FROM h.emitted_at)::float8,"
        " extract(epoch FROM h.applied_at - h.emitted_at)::float8,"
        " extract(epoch FROM clock_timestamp())::float8"
        " FROM (SELECT 1) AS one LEFT JOIN replicator.offsets o ON o.topic = %s"
        " LEFT JOIN replicator.heartbeats h ON h.topic = o.topic AND h.partition = o.partition",
        (topic,),
    ).fetchall()
    at = time.monotonic()
    parts = {
        int(p): Applied(
            next_offset=int(off),
            commit_ts=ts,
            heartbeat_at=hb,
            heartbeat_latency_s=max(0.0, latency) if latency is not None else None,
        )
        for p, off, ts, hb, latency, _ in rows
        if p is not None
    }
    return AppliedReading(parts, float(rows[0][5]), at)


EndOffsets = Callable[[str, str], dict[int, int]]


def end_to_end_lag(
    s: Settings,
    direction: str,
    source: DatabaseSettings,
    target: DatabaseSettings,
    end_offsets: EndOffsets,
) -> float | None:
    """The lag of ``direction`` as ``status`` reports it, for callers that want only that
    (the cutover's preflight, beside its probe): ``source``/``target`` are the direction's
    sides, ``end_offsets`` reads a topic's end offsets (``connectors.kafka_io.end_offsets``
    with the settings' Kafka options). Raises the connectors' errors; None: nothing applied
    yet."""
    topic = s.topic(direction, "changes")
    with pg.connect(source.conninfo(), autocommit=True) as conn, pg.translated(source.masked()):
        slot = read_slot(conn, s.slot(direction))
    ends = end_offsets(s.kafka.bootstrap_servers, topic)
    with pg.connect(target.conninfo(), autocommit=True) as conn, pg.translated(target.masked()):
        row = conn.execute("SELECT to_regclass('replicator.offsets') IS NOT NULL").fetchone()
        if not (row and row[0]):
            return None  # no apply has run here yet
        applied = read_applied(conn, topic)
    return estimate(
        slot.now_at(applied.at),
        applied.parts,
        behind_of(ends, applied.parts),
        capture_behind=slot.capture_behind,
        heartbeat_interval_s=s.capture.heartbeat_interval_s,
    )


def behind_of(ends: Mapping[int, int], applied: Mapping[int, Applied]) -> dict[int, int]:
    """Messages per partition past apply's stored offsets (never negative: the offsets are
    read after the ends, so a message applied in between is not counted as waiting)."""
    return {
        p: max(0, end - (applied[p].next_offset if p in applied else 0)) for p, end in ends.items()
    }
