"""Walsender framing inside the CopyBoth stream of ``START_REPLICATION``, no I/O.

Server to client, each CopyData message is one of (PostgreSQL "Streaming Replication Protocol"):

* ``w`` XLogData: Int64 start LSN, Int64 end LSN (the server's WAL end), Int64 server clock,
  then the payload (one pgoutput message, see :mod:`connectors.pgoutput`);
* ``k`` primary keepalive: Int64 end LSN, Int64 server clock, Byte1 reply requested.

Client to server, the standby status update ``r``: Int64 written, flushed and applied LSNs,
Int64 client clock, Byte1 reply requested. For logical replication the flushed LSN is what the
slot confirms (``confirmed_flush_lsn``), so only positions durably handled downstream go there.

Clocks are int64 microseconds since 2000-01-01 UTC. Malformed frames raise :class:`WalFrameError`.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Final

# Seconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
PG_EPOCH_UNIX: Final = 946_684_800
_XLOG_HEAD = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QqB")
_STATUS = struct.Struct(">cQQQqB")
_U64_MAX = (1 << 64) - 1


class WalFrameError(ValueError):
    """A CopyData frame that is not a valid walsender message."""


# One per WAL message: not frozen (a frozen dataclass's __init__ is several times slower).
@dataclass(slots=True)
class XLogData:
    wal_start: int
    wal_end: int
    server_clock: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    wal_end: int
    server_clock: int
    reply_requested: bool


@dataclass(frozen=True, slots=True)
class StandbyStatus:
    write_lsn: int
    flush_lsn: int
    apply_lsn: int
    client_clock: int
    reply_requested: bool


def now_pg_micros() -> int:
    """The current time as microseconds since 2000-01-01 UTC, the protocol's clock."""
    return time.time_ns() // 1000 - PG_EPOCH_UNIX * 1_000_000


def parse_frame(frame: bytes | bytearray | memoryview) -> XLogData | Keepalive:
    """Parse one CopyData message from the walsender."""
    data = bytes(frame)
    if not data:
        raise WalFrameError("empty CopyData frame")
    kind = data[0]
    if kind == 0x77:  # w
        if len(data) < 1 + _XLOG_HEAD.size:
            raise WalFrameError(f"XLogData frame of {len(data)} bytes, header needs 25")
        start, end, clock = _XLOG_HEAD.unpack_from(data, 1)
        return XLogData(start, end, clock, data[1 + _XLOG_HEAD.size :])
    if kind == 0x6B:  # k
        if len(data) != 1 + _KEEPALIVE.size:
            raise WalFrameError(f"keepalive frame of {len(data)} bytes, expected 18")
        end, clock, reply = _KEEPALIVE.unpack_from(data, 1)
        if reply > 1:
            raise WalFrameError(f"keepalive reply flag must be 0 or 1, not {reply}")
        return Keepalive(end, clock, reply == 1)
    raise WalFrameError(f"unknown walsender message type {data[:1]!r}")


def standby_status(
    write_lsn: int,
    flush_lsn: int,
    apply_lsn: int,
    *,
    reply: bool = False,
    clock: int | None = None,
) -> bytes:
    """A standby status update ``r`` frame; ``clock`` defaults to :func:`now_pg_micros`."""
    for name, lsn in (("write", write_lsn), ("flush", flush_lsn), ("apply", apply_lsn)):
        if not 0 <= lsn <= _U64_MAX:
            raise WalFrameError(f"{name} LSN {lsn} is not a 64-bit unsigned position")
    if clock is None:
        clock = now_pg_micros()
    elif not -(1 << 63) <= clock < 1 << 63:
        raise WalFrameError(f"clock {clock} does not fit in int64")
    return _STATUS.pack(b"r", write_lsn, flush_lsn, apply_lsn, clock, 1 if reply else 0)


def parse_standby_status(frame: bytes | bytearray | memoryview) -> StandbyStatus:
    """Inverse of :func:`standby_status` (what the server reads; used by tests and tools)."""
    data = bytes(frame)
    if len(data) != _STATUS.size or data[:1] != b"r":
        raise WalFrameError(f"not a standby status update: {data[:1]!r}, {len(data)} bytes")
    _, write, flush, apply, clock, reply = _STATUS.unpack(data)
    if reply > 1:
        raise WalFrameError(f"standby status reply flag must be 0 or 1, not {reply}")
    return StandbyStatus(write, flush, apply, clock, reply == 1)
