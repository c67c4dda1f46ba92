"""Walsender framing: XLogData and keepalive parsing, the standby status update builder."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors import pgoutput as po
from connectors.walframe import (
    Keepalive,
    StandbyStatus,
    WalFrameError,
    XLogData,
    now_pg_micros,
    parse_frame,
    parse_standby_status,
    standby_status,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pgoutput" / "messages.jsonl"
U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
PROPS = settings(max_examples=300, deadline=None)


def test_xlogdata_wraps_a_pgoutput_message() -> None:
    first = json.loads(FIXTURES.read_text().splitlines()[0])
    payload = bytes.fromhex(first["hex"])
    frame = b"w" + struct.pack(">QQq", 0x16B3748, 0x16B3800, 12345) + payload
    parsed = parse_frame(memoryview(frame))
    assert parsed == XLogData(0x16B3748, 0x16B3800, 12345, payload)
    assert isinstance(parsed, XLogData) and isinstance(parsed.payload, bytes)
    assert isinstance(po.PgOutputDecoder().decode(parsed.payload), po.Begin)


def test_xlogdata_may_be_empty_and_lsns_are_unsigned() -> None:
    frame = b"w" + b"\xff" * 16 + struct.pack(">q", -1)
    assert parse_frame(frame) == XLogData(2**64 - 1, 2**64 - 1, -1, b"")


@pytest.mark.parametrize("reply", [False, True])
def test_keepalive(reply: bool) -> None:
    frame = b"k" + struct.pack(">Qq?", 0xABCDEF, 789, reply)
    assert parse_frame(bytearray(frame)) == Keepalive(0xABCDEF, 789, reply)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"", "empty"),
        (b"x" + bytes(24), "unknown walsender message type b'x'"),
        (b"w" + bytes(23), "XLogData frame of 24 bytes"),
        (b"k" + bytes(16), "keepalive frame of 17 bytes"),
        (b"k" + bytes(18), "keepalive frame of 19 bytes"),
        (b"k" + bytes(16) + b"\2", "reply flag must be 0 or 1, not 2"),
    ],
)
def test_malformed_frames(frame: bytes, match: str) -> None:
    with pytest.raises(WalFrameError, match=match):
        parse_frame(frame)


def test_standby_status_layout() -> None:
    frame = standby_status(0x10, 0x20, 0x30, reply=True, clock=0x40)
    assert frame == (
        b"r"
        + (0x10).to_bytes(8, "big")
        + (0x20).to_bytes(8, "big")
        + (0x30).to_bytes(8, "big")
        + (0x40).to_bytes(8, "big")
        + b"\1"
    )
    assert len(frame) == 34


def test_standby_status_defaults_to_now() -> None:
    before = now_pg_micros()
    status = parse_standby_status(standby_status(1, 2, 3))
    assert before <= status.client_clock <= now_pg_micros()
    assert not status.reply_requested


def test_now_pg_micros_is_since_2000() -> None:
    since = dt.datetime.now(dt.UTC) - po.PG_EPOCH
    expected = since // dt.timedelta(microseconds=1)
    assert abs(now_pg_micros() - expected) < 5_000_000


@pytest.mark.parametrize(
    ("args", "clock", "match"),
    [
        ((-1, 0, 0), 0, "write LSN -1"),
        ((0, 2**64, 0), 0, "flush LSN"),
        ((0, 0, -5), 0, "apply LSN"),
        ((0, 0, 0), 2**63, "does not fit in int64"),
    ],
)
def test_standby_status_rejects_out_of_range(
    args: tuple[int, int, int], clock: int, match: str
) -> None:
    with pytest.raises(WalFrameError, match=match):
        standby_status(*args, clock=clock)


@pytest.mark.parametrize(
    "frame", [b"", b"r" + bytes(32), b"k" + bytes(33), b"r" + bytes(32) + b"\3"]
)
def test_parse_standby_status_rejects(frame: bytes) -> None:
    with pytest.raises(WalFrameError):
        parse_standby_status(frame)


@PROPS
@given(U64, U64, U64, I64, st.booleans())
def test_standby_status_round_trip(w: int, f: int, a: int, clock: int, reply: bool) -> None:
    frame = standby_status(w, f, a, reply=reply, clock=clock)
    assert parse_standby_status(frame) == StandbyStatus(w, f, a, clock, reply)


@PROPS
@given(U64, U64, I64, st.binary(max_size=64))
def test_xlogdata_round_trip(start: int, end: int, clock: int, payload: bytes) -> None:
    frame = b"w" + struct.pack(">QQq", start, end, clock) + payload
    assert parse_frame(frame) == XLogData(start, end, clock, payload)


@PROPS
@given(st.binary(max_size=40))
def test_arbitrary_frames_parse_or_raise(data: bytes) -> None:
    for candidate in (data, b"w" + data, b"k" + data):
        with contextlib.suppress(WalFrameError):
            assert isinstance(parse_frame(candidate), XLogData | Keepalive)
