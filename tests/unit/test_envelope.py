from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.envelope import (
    Change,
    Envelope,
    RelationInfo,
    decode_envelope,
    format_lsn,
    parse_lsn,
)
from replicator.errors import MalformedMessage

REL = RelationInfo("public", "t", ("id", "big"), (23, 25), ("id",))


def test_round_trip_keeps_unchanged_distinct_from_null() -> None:
    env = Envelope(
        "o",
        7,
        0x16B3748,
        "2026-01-01T00:00:00+00:00",
        seq=1,
        last=False,
        relations={5: REL},
        changes=[
            Change("update", 5, new={"id": "1"}, unchanged=["big"]),
            Change("insert", 5, new={"id": "2", "big": None}),
        ],
    )
    back = decode_envelope(env.encode())
    assert back.changes[0].unchanged == ["big"] and "big" not in (back.changes[0].new or {})
    assert back.changes[1].new == {"id": "2", "big": None}
    assert (back.seq, back.last, back.relations[5]) == (1, False, REL)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[]",
        b'{"v": 9}',
        b'{"v": 1, "relations": {}, "changes": [{"op": "insert", "rel": 3}]}',
        b'{"v": 1, "origin": "o", "xid": 1, "commit_lsn": 1, "relations": {}, "changes": [{"op": "merge", "rel": 1}]}',
    ],
)
def test_malformed_envelopes_raise_our_error(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_envelope(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_malformed(raw: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        decode_envelope(raw)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_lsn_text_round_trip(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn
