from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.envelope import (
    Change,
    Envelope,
    RelationInfo,
    decode_envelope,
    decode_envelopes,
    format_lsn,
    group_envelopes,
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


def test_whole_rows_travel_as_lists_and_read_back_as_rows() -> None:
    rel = RelationInfo("public", "t", ("id", "note"), (23, 25), ("id",))
    env = Envelope(
        "o",
        1,
        10,
        None,
        relations={5: rel},
        changes=[
            Change("insert", 5, values=("1", None), relation=rel),
            Change("update", 5, new={"id": "2"}, unchanged=["note"]),
        ],
    )
    wire = orjson.loads(env.encode())
    # One list per whole row (no column names repeated per row); the rest stay objects.
    assert wire["v"] == 2 and wire["changes"][0] == ["insert", 5, ["1", None]]
    assert wire["changes"][1] == {
        "op": "update",
        "rel": 5,
        "new": {"id": "2"},
        "unchanged": ["note"],
    }
    back = decode_envelope(env.encode())
    assert back.changes[0].new == {"id": "1", "note": None} and back.changes[0].values == [
        "1",
        None,
    ]
    assert back.changes == env.changes
    # Dead letters keep the named form.
    assert back.changes[0].to_wire() == {"op": "insert", "rel": 5, "new": {"id": "1", "note": None}}


def test_version_1_envelopes_are_still_read() -> None:
    raw = (
        b'{"v": 1, "origin": "o", "xid": 1, "commit_lsn": 9, "relations": {"5": {"schema": "public",'
        b' "table": "t", "columns": ["id"], "type_oids": [23], "key_columns": ["id"]}},'
        b' "changes": [{"op": "insert", "rel": 5, "new": {"id": "1"}}]}'
    )
    assert decode_envelope(raw).changes[0].new == {"id": "1"}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (b'["insert", 5, ["1"]]', "not a list of 2 values"),
        (b'["insert", 5, {"id": "1"}]', "not a list of 2 values"),
        (b'["delete", 5, ["1", "x"]]', "cannot be a row of values"),
        (b'["insert", 6, ["1", "x"]]', "relation 6 not in the envelope"),
        (b'["insert", 5]', "missing or mistypes"),
    ],
)
def test_malformed_rows_of_values_raise_our_error(change: bytes, why: str) -> None:
    raw = (
        b'{"v": 2, "origin": "o", "xid": 1, "commit_lsn": 9, "relations": {"5": {"schema": "public",'
        b' "table": "t", "columns": ["id", "v"], "type_oids": [23, 25], "key_columns": ["id"]}},'
        b' "changes": [' + change + b"]}"
    )
    with pytest.raises(MalformedMessage, match=why):
        decode_envelope(raw)


def test_any_column_name_is_only_a_key_of_the_row() -> None:
    # Rows are built by code compiled from the column names: a name must stay a string key.
    names = ("id", "x'}; __import__('os').getpid(); {'", '"\\', "\n", "v[0]")
    rel = RelationInfo("public", "t", names, (25,) * len(names), ("id",))
    values = [f"value {i}" for i in range(len(names))]
    assert Change("insert", 5, values=values, relation=rel).new == dict(
        zip(names, values, strict=True)
    )


def test_a_group_of_envelopes_reads_back_in_order() -> None:
    one = Envelope(
        "o", 1, 10, None, relations={5: REL}, changes=[Change("insert", 5, new={"id": "1"})]
    )
    two = Envelope(
        "o", 2, 20, None, relations={5: REL}, changes=[Change("delete", 5, old={"id": "1"})]
    )
    group = group_envelopes([one.encode(), two.encode()])
    assert [(e.xid, e.commit_lsn) for e in decode_envelopes(group)] == [(1, 10), (2, 20)]
    assert group_envelopes([one.encode()]) == one.encode()  # a group of one is the envelope
    with pytest.raises(MalformedMessage, match="holds 2"):
        decode_envelope(group)
    with pytest.raises(MalformedMessage):
        decode_envelopes(b'[{"v": 2}]')


def test_column_names_must_be_text() -> None:
    raw = (
        b'{"v": 2, "origin": "o", "xid": 1, "commit_lsn": 9, "relations": {"5": {"schema": "public",'
        b' "table": "t", "columns": ["id", 7], "type_oids": [23, 25], "key_columns": ["id"]}},'
        b' "changes": [["insert", 5, ["1", "x"]]]}'
    )
    with pytest.raises(MalformedMessage, match="not all text"):
        decode_envelope(raw)


def test_relations_read_from_the_log_are_shared_between_envelopes() -> None:
    """Every envelope repeats its relations: equal ones are read into one object (apply plans
    per relation object), a changed one into its own."""
    one, two, wider = (
        Envelope("o", x, 10 * x, None, relations={5: r}, changes=[Change("delete", 5, old={})])
        for x, r in ((1, REL), (2, REL), (3, RelationInfo("public", "t", ("id",), (23,), ("id",))))
    )
    read = [decode_envelope(e.encode()).relations[5] for e in (one, two, wider)]
    assert read[0] is read[1] and read[0] == REL
    assert read[2] is not read[0] and read[2].columns == ("id",)
