"""The pgoutput decoder against messages captured from a real PostgreSQL 15, hand-built edge
cases, and properties (whatever the bytes, a message or PgOutputDecodeError, nothing else).

The fixtures come from ``tests/fixtures/pgoutput/capture_fixtures.py``; see its docstring for the
scenario behind each ``name``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import pickle
import re
import struct
import typing
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import pgoutput as po
from connectors.pgoutput import UNCHANGED, PgOutputDecodeError, PgOutputDecoder, decode_message

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pgoutput" / "messages.jsonl"
PROTO = {"v1": 1, "v1_binary": 1, "v2_stream": 2}
INT4, TEXT, NUMERIC, BYTEA, TIMESTAMPTZ = 23, 25, 1700, 17, 1184


@cache
def raw(set_name: str) -> tuple[tuple[str, bytes], ...]:
    rows = [json.loads(line) for line in FIXTURES.read_text().splitlines()]
    return tuple((r["name"], bytes.fromhex(r["hex"])) for r in rows if r["set"] == set_name)


@cache
def decoded(set_name: str) -> tuple[tuple[str, po.Message], ...]:
    dec = PgOutputDecoder(PROTO[set_name])
    out = tuple((name, dec.decode(data)) for name, data in raw(set_name))
    assert not dec.in_stream
    return out


def step(set_name: str, name: str, cls: type[Any] | None = None) -> list[Any]:
    return [m for n, m in decoded(set_name) if n == name and (cls is None or type(m) is cls)]


def relations(set_name: str) -> dict[str, po.Relation]:
    return {m.name: m for _, m in decoded(set_name) if isinstance(m, po.Relation)}


def one(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def still_inside(inside: bool, msg: po.Message) -> bool:
    """Whether the message after ``msg`` is inside a streamed block."""
    return isinstance(msg, po.StreamStart) or (inside and not isinstance(msg, po.StreamStop))


# -- real server fixtures -----------------------------------------------------------------------


def test_fixture_sets_cover_every_message_type() -> None:
    kinds = {type(m) for s in PROTO for _, m in decoded(s)}
    assert kinds == set(typing.get_args(po.Message))


@pytest.mark.parametrize("set_name", ["v1", "v1_binary"])
def test_transactions_are_framed_and_commit_lsns_increase(set_name: str) -> None:
    begin: po.Begin | None = None
    last_commit = 0
    for _, m in decoded(set_name):
        if isinstance(m, po.Begin):
            assert begin is None
            begin = m
        elif isinstance(m, po.Commit):
            assert begin is not None
            assert (m.commit_lsn, m.commit_ts, m.flags) == (begin.final_lsn, begin.commit_ts, 0)
            assert m.end_lsn > m.commit_lsn > last_commit
            last_commit, begin = m.commit_lsn, None
        elif not (isinstance(m, po.LogicalMessage) and not m.transactional):
            assert begin is not None, m  # everything else belongs to a transaction
        if not isinstance(m, po.Begin):
            assert getattr(m, "xid", None) is None  # no stream, no per-message xid


def test_relation_columns_key_flags_and_types() -> None:
    rels = relations("v1")
    mood = one(step("v1", "insert", po.TypeMsg))
    assert (mood.namespace, mood.name, mood.xid) == ("pgoutput_fx", "mood", None)
    items = rels["items"]
    assert (items.namespace, items.replica_identity, items.xid) == ("pgoutput_fx", "d", None)
    assert [(c.name, c.is_key, c.type_oid, c.typmod) for c in items.columns] == [
        ("id", True, INT4, -1),
        ("name", False, TEXT, -1),
        ("price", False, NUMERIC, -1),
        ("mood", False, mood.oid, -1),
        ("data", False, BYTEA, -1),
        ("note", False, TEXT, -1),
        ("created", False, TIMESTAMPTZ, -1),
    ]
    assert [c.is_key for c in rels["pairs"].columns] == [True, True, False, False]  # after ALTER
    assert rels["full_ident"].replica_identity == "f"
    assert all(c.is_key for c in rels["full_ident"].columns)  # FULL: every column identifies


def test_inserts_text_values_nulls_and_unicode() -> None:
    rows = [m.new for m in step("v1", "insert", po.Insert)]
    assert rows[0] == (
        "1",
        "plain",
        "12.50",
        "happy",
        "\\x00ff10",
        "n1",
        "2024-01-02 03:04:05.678901+00",
    )
    assert rows[1] == ("2", "héllo wörld ✓ 日本語 🎉", None, None, None, None, None)
    assert rows[2][:5] == ("3", "", "0", "sad", "\\x")  # empty string is not NULL
    big = one([r for r in rows if len(r) == 3 and r[0] == "1" and len(r[1] or "") > 8192])
    assert big[2] == "0"


def test_updates_old_kinds() -> None:
    rel = relations("v1")
    plain = one(step("v1", "update_default", po.Update))
    assert (plain.relid, plain.old_kind, plain.old) == (rel["items"].relid, None, None)
    assert plain.new[:2] == ("1", "renamed") and plain.new[5] is None
    key = one(step("v1", "update_key", po.Update))
    assert key.old_kind == "K" and key.old == ("2", None, None, None, None, None, None)
    assert key.new[:2] == ("20", "héllo wörld ✓ 日本語 🎉")
    composite = one(step("v1", "update_composite_key", po.Update))
    assert (composite.old_kind, composite.old, composite.new) == (
        "K",
        ("2", "b", None),
        ("2", "c", "moved"),
    )
    full = one(step("v1", "update_full", po.Update))
    assert (full.old_kind, full.old, full.new) == ("O", ("1", "alpha", "10"), ("1", None, "11"))


def test_unchanged_toast_is_distinct_from_null() -> None:
    upd = one(step("v1", "update_toast", po.Update))
    assert upd.new == ("1", UNCHANGED, "1")
    assert upd.new[1] is UNCHANGED and upd.new[1] is not None
    binary = one(step("v1_binary", "update_toast", po.Update))
    assert binary.new == (b"\0\0\0\1", UNCHANGED, b"\0\0\0\1")


def test_deletes() -> None:
    key = one(step("v1", "delete_default", po.Delete))
    assert (key.old_kind, key.old) == ("K", ("3", None, None, None, None, None, None))
    full = one(step("v1", "delete_full", po.Delete))
    assert (full.old_kind, full.old) == ("O", ("2", "beta", "20"))


def test_truncates() -> None:
    rel = relations("v1")
    both = (rel["trunc_a"].relid, rel["trunc_b"].relid)
    plain = one(step("v1", "truncate_two", po.Truncate))
    assert (plain.relids, plain.cascade, plain.restart_identity) == (both, False, False)
    flags = one(step("v1", "truncate_flags", po.Truncate))
    assert (flags.relids, flags.cascade, flags.restart_identity) == (both, True, True)


def test_logical_messages_and_origin() -> None:
    tx = one(step("v1", "message_transactional", po.LogicalMessage))
    assert (tx.transactional, tx.prefix, tx.content, tx.xid) == (True, "prefix", b"content", None)
    nontx = one(step("v1", "message_nontransactional"))
    assert (nontx.transactional, nontx.prefix, nontx.content) == (False, "prefix", b"content")
    assert nontx.lsn > 0
    origin = one(step("v1", "origin", po.Origin))
    assert (origin.lsn, origin.name) == (0x1234ABCD, "pgoutput_fx_origin")
    begin = one(step("v1", "origin", po.Begin))  # the origin's commit time, from xact_setup
    assert po.pg_timestamp(begin.commit_ts) == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert po.pg_timestamp_iso(begin.commit_ts) == "2024-01-02T03:04:05+00:00"


def test_binary_tuples_are_bytes() -> None:
    first = step("v1_binary", "insert", po.Insert)[0].new
    assert first[0] == b"\0\0\0\1" and first[1] == b"plain" and first[4] == b"\x00\xff\x10"
    assert all(isinstance(v, bytes) for v in first)


def test_streamed_transactions() -> None:
    msgs = decoded("v2_stream")
    starts = [m for _, m in msgs if isinstance(m, po.StreamStart)]
    commit = one(step("v2_stream", "stream_commit", po.StreamCommit))
    assert starts[0] == po.StreamStart(commit.xid, True)
    assert {s.first_segment for s in starts[1:] if s.xid == commit.xid} == {False}
    aborts = [m for _, m in msgs if isinstance(m, po.StreamAbort)]
    sub = one([a for a in aborts if a.xid == commit.xid])
    assert sub.subxid != sub.xid  # the rolled-back savepoint
    whole = one(step("v2_stream", "stream_abort", po.StreamAbort))
    assert whole.subxid == whole.xid != commit.xid
    inside = False
    for _, m in msgs:  # xid exactly on the streamed messages between Start and Stop
        inside = still_inside(inside, m)
        if isinstance(
            m, po.Relation | po.TypeMsg | po.Insert | po.Update | po.Delete | po.Truncate
        ):
            assert (m.xid is not None) == inside
    inserts = step("v2_stream", "stream_commit", po.Insert)
    assert [m.new[0] for m in inserts if m.xid != sub.subxid] == ["1", "2", "3", "4", "200", "5"]
    assert [m.new[0] for m in inserts if m.xid == sub.subxid] == ["100"]  # aborted later
    msg = one(step("v2_stream", "stream_commit", po.LogicalMessage))
    assert (msg.xid, msg.content) == (commit.xid, b"in stream")
    # The same transaction decoded unstreamed by the v1 slot commits at the same position.
    v1_commit = one(step("v1", "stream_commit", po.Commit))
    assert (commit.commit_lsn, commit.end_lsn, commit.commit_ts) == (
        v1_commit.commit_lsn,
        v1_commit.end_lsn,
        v1_commit.commit_ts,
    )
    small = step("v2_stream", "small_v2")
    assert [type(m) for m in small] == [po.Begin, po.Insert, po.Commit] and small[1].xid is None


def test_stateless_decode_matches_decoder() -> None:
    inside = False
    for (_, data), (_, expected) in zip(raw("v2_stream"), decoded("v2_stream"), strict=True):
        assert decode_message(data, proto_version=2, in_stream=inside) == expected
        inside = still_inside(inside, expected)


def test_protocol_1_refuses_stream_messages() -> None:
    with pytest.raises(PgOutputDecodeError, match=r"Stream Start needs protocol 2.* at offset 0"):
        PgOutputDecoder(1).decode(raw("v2_stream")[0][1])
    with pytest.raises(ValueError, match="protocol 3"):
        PgOutputDecoder(3)


def test_every_truncation_of_every_fixture_fails_cleanly() -> None:
    for set_name, proto in PROTO.items():
        dec = PgOutputDecoder(proto)
        for _, data in raw(set_name):
            cuts = range(len(data)) if len(data) < 600 else range(0, len(data), 97)
            for cut in cuts:
                with pytest.raises(PgOutputDecodeError):
                    decode_message(data[:cut], proto_version=proto, in_stream=dec.in_stream)
            dec.decode(data)


# -- hand-built edge cases ----------------------------------------------------------------------


def tup(*values: po.Value) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        elif isinstance(v, str):
            out += b"t" + struct.pack(">i", len(v.encode())) + v.encode()
        else:
            out += b"b" + struct.pack(">i", len(v)) + v
    return out


def insert(*values: po.Value, relid: int = 16384) -> bytes:
    return b"I" + struct.pack(">I", relid) + b"N" + tup(*values)


BEGIN = b"B" + struct.pack(">QqI", 0x16B3748, 0, 700)


@pytest.mark.parametrize(
    ("data", "what", "offset"),
    [
        (b"", "empty message", 0),
        (b"Z", "unknown message type b'Z'", 0),
        (BEGIN[:-1], "Begin: truncated body", 1),
        (BEGIN + b"\0", "Begin: 1 trailing bytes", 21),
        (insert("a")[:-1], "column 0 needs 1 bytes, 0 left", 13),
        (insert("a") + b"x", "Insert: 1 trailing bytes", 14),
        (insert("a").replace(b"t\0", b"x\0"), "column 0 has kind 0x78", 8),
        (
            insert("a").replace(b"\0\0\0\1a", b"\xff\xff\xff\xffa"),
            "negative length -1 of column 0",
            9,
        ),
        (insert(b"\xff\xfe").replace(b"b\0", b"t\0"), "column 0 is not valid UTF-8", 13),
        (
            b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 30000) + b"n",
            "tuple claims 30000 columns",
            6,
        ),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", -1), "tuple claims -1 columns", 6),
        (insert("a").replace(b"N", b"O"), "tuple marker 'O', expected one of 'N'", 5),
        (b"U" + struct.pack(">I", 1) + b"K" + tup("1") + b"K" + tup("1"), "tuple marker 'K'", 14),
        (b"D" + struct.pack(">I", 1) + b"N" + tup("1"), "Delete: tuple marker 'N'", 5),
        (
            b"T" + struct.pack(">iB", 1, 4) + struct.pack(">I", 5),
            "unknown truncate options 0x04",
            5,
        ),
        (b"T" + struct.pack(">iB", -1, 0), "Truncate: negative relation count -1", 1),
        (b"T" + struct.pack(">iB", 2, 0) + struct.pack(">I", 5), "truncated relids", 6),
        (b"M\x02" + bytes(8) + b"p\0" + struct.pack(">i", 0), "unknown message flags 0x02", 1),
        (b"M\x00" + bytes(8) + b"p\0" + struct.pack(">i", 5) + b"abc", "truncated content", 16),
        (b"O" + bytes(8) + b"origin", "Origin: unterminated origin name", 9),
        (b"O" + bytes(8) + b"\xc3\0", "origin name is not valid UTF-8", 9),
        (
            b"R" + struct.pack(">I", 1) + b"s\0t\0x" + struct.pack(">h", 0),
            "unknown replica identity b'x'",
            9,
        ),
        (
            b"R" + struct.pack(">I", 1) + b"s\0t\0d" + struct.pack(">h", 1) + b"\1id\0",
            "truncated column type",
            16,
        ),
    ],
)
def test_malformed_messages(data: bytes, what: str, offset: int) -> None:
    with pytest.raises(PgOutputDecodeError, match=f"{re.escape(what)}.* at offset {offset}$") as e:
        decode_message(data, proto_version=2)
    assert e.value.offset == offset


def test_stream_state_errors_leave_the_decoder_unchanged() -> None:
    dec = PgOutputDecoder(2)
    with pytest.raises(PgOutputDecodeError, match="Stream Stop outside a streamed"):
        dec.decode(b"E")
    with pytest.raises(PgOutputDecodeError, match="first-segment flag must be 0 or 1, not 2"):
        dec.decode(b"S" + struct.pack(">IB", 9, 2))
    assert not dec.in_stream
    assert dec.decode(bytearray(b"S" + struct.pack(">IB", 9, 1))) == po.StreamStart(9, True)
    for bad in (b"S" + struct.pack(">IB", 9, 0), BEGIN, b"c" + bytes(29), b"A" + bytes(8)):
        with pytest.raises(PgOutputDecodeError, match="inside a streamed transaction block"):
            dec.decode(bad)
    assert dec.in_stream
    with pytest.raises(PgOutputDecodeError):
        dec.decode(b"I" + struct.pack(">I", 1) + b"N" + tup("x"))  # no xid: misread, refused
    assert dec.in_stream
    assert dec.decode(memoryview(b"E")) == po.StreamStop()
    assert not dec.in_stream


def test_streamed_messages_carry_the_xid() -> None:
    xid = struct.pack(">I", 42)
    cases: list[tuple[bytes, po.Message]] = [
        (b"I" + xid + insert("a")[1:], po.Insert(16384, ("a",), 42)),
        (b"T" + xid + struct.pack(">iBI", 1, 1, 7), po.Truncate((7,), True, False, 42)),
        (b"Y" + xid + struct.pack(">I", 99) + b"public\0t\0", po.TypeMsg(99, "public", "t", 42)),
        (
            b"M" + xid + b"\1" + struct.pack(">Q", 5) + b"p\0" + struct.pack(">i", 1) + b"\0",
            po.LogicalMessage(True, 5, "p", b"\0", 42),
        ),
        (b"O" + struct.pack(">Q", 8) + b"o\0", po.Origin(8, "o")),  # no xid, even in a stream
    ]
    for data, expected in cases:
        assert decode_message(data, proto_version=2, in_stream=True) == expected


def test_value_kinds() -> None:
    msg = decode_message(insert(None, UNCHANGED, "", "é", b"", b"\0\xff"))
    assert isinstance(msg, po.Insert)
    assert msg.new == (None, UNCHANGED, "", "é", b"", b"\0\xff")
    assert decode_message(insert()) == po.Insert(16384, ())


def test_unchanged_sentinel() -> None:
    assert repr(UNCHANGED) == "UNCHANGED"
    assert copy.deepcopy(UNCHANGED) is UNCHANGED
    assert pickle.loads(pickle.dumps(UNCHANGED)) is UNCHANGED
    assert UNCHANGED != None  # noqa: E711


def test_timestamps() -> None:
    assert po.pg_timestamp(0) == po.PG_EPOCH == dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    assert po.pg_timestamp(-1).isoformat() == "1999-12-31T23:59:59.999999+00:00"
    with pytest.raises(ValueError, match="outside datetime's range"):
        po.pg_timestamp(2**63 - 1)


def test_messages_are_slotted() -> None:
    msg = decode_message(insert("a"))
    assert isinstance(msg, po.Insert)
    with pytest.raises(AttributeError):
        msg.extra = 1  # type: ignore[attr-defined]


# -- properties ---------------------------------------------------------------------------------

values = st.one_of(st.none(), st.just(UNCHANGED), st.text(max_size=20), st.binary(max_size=20))
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(st.binary(max_size=64), st.sampled_from([1, 2]), st.booleans())
def test_arbitrary_bytes_decode_or_raise(data: bytes, proto: int, in_stream: bool) -> None:
    # Raw bytes rarely start with a known type byte: also try each of them in front.
    for candidate in (data, *(bytes([t]) + data for t in b"BCORYIUDTMSEcA")):
        with contextlib.suppress(PgOutputDecodeError):
            decode_message(candidate, proto_version=proto, in_stream=in_stream)


POOL = [data for s in PROTO for _, data in raw(s) if len(data) < 2000]  # all but the TOAST ones


@PROPS
@given(st.sampled_from(POOL), st.data())
def test_mutated_fixtures_decode_or_raise(msg: bytes, data: st.DataObject) -> None:
    buf = bytearray(msg)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf)))
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "set" and pos < len(buf):
            buf[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del buf[pos : pos + data.draw(st.integers(1, 4))]
    for in_stream in (False, True):
        with contextlib.suppress(PgOutputDecodeError):
            decode_message(bytes(buf), proto_version=2, in_stream=in_stream)


@PROPS
@given(
    st.lists(values, max_size=12), st.integers(0, 2**32 - 1), st.none() | st.integers(0, 2**32 - 1)
)
def test_tuple_round_trip(row: list[po.Value], relid: int, xid: int | None) -> None:
    head = b"I" + (b"" if xid is None else struct.pack(">I", xid))
    data = head + struct.pack(">I", relid) + b"N" + tup(*row)
    msg = decode_message(data, proto_version=2, in_stream=xid is not None)
    assert msg == po.Insert(relid, tuple(row), xid)


@PROPS
@given(st.lists(st.sampled_from(POOL), max_size=30))
def test_decoder_state_on_random_sequences(seq: list[bytes]) -> None:
    """Fixture messages in any order: errors change nothing, only Start/Stop move the state."""
    dec = PgOutputDecoder(2)
    for data in seq:
        before = dec.in_stream
        try:
            msg = dec.decode(data)
        except PgOutputDecodeError:
            assert dec.in_stream == before
            continue
        assert dec.in_stream == still_inside(before, msg)
