"""Transaction assembly: decoded pgoutput messages in, envelopes out (pure, no I/O)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from connectors import pgoutput as po
from connectors.assembler import Assembler, Output

ITEM = po.Relation(
    16384,
    "public",
    "item",
    "d",
    (po.Column(1, "id", 23, -1), po.Column(0, "title", 25, -1), po.Column(0, "body", 25, -1)),
)


def _feed(asm: Assembler, *msgs: Any) -> list[Output]:
    out: list[Output] = []
    for m in msgs:
        out.extend(asm.feed(m))
    return out


def one(items: Iterable[Any]) -> Any:
    found = list(items)
    assert len(found) == 1, found
    return found[0]


def _txn(*changes: Any, xid: int = 7, lsn: int = 100) -> list[Any]:
    return [po.Begin(lsn, 0, xid), *changes, po.Commit(0, lsn, lsn + 8, 0)]


def test_a_transaction_is_one_envelope_acknowledged_at_its_commit_end() -> None:
    asm = Assembler("o")
    out = _feed(
        asm,
        ITEM,
        *_txn(
            po.Insert(16384, ("1", "a", None)),
            po.Update(16384, None, None, ("1", "b", po.UNCHANGED)),
            po.Delete(16384, "K", ("1", None, None)),
        ),
    )
    assert len(out) == 1 and out[0].ack_lsn == 108
    env = out[0].envelope
    assert (env.xid, env.commit_lsn, env.seq, env.last) == (7, 100, 0, True)
    ins, upd, dele = env.changes
    assert ins.op == "insert" and ins.new == {"id": "1", "title": "a", "body": None}
    # An unchanged TOASTed value is not a value: it is named, and absent from the row.
    assert upd.new == {"id": "1", "title": "b"} and upd.unchanged == ["body"]
    # An old key tuple carries only the key; its other columns are placeholders.
    assert dele.op == "delete" and dele.old == {"id": "1"}
    # A whole text row stays the decoder's values (a list on the wire); an update that left a
    # value out is by name.
    assert ins.values == ("1", "a", None) and upd.values is None
    assert set(env.relations) == {16384} and not asm.in_txn


def test_a_large_transaction_is_sliced_in_order() -> None:
    asm = Assembler("o", slice_max_changes=2)
    rows = [po.Insert(16384, (str(i), "t", "b")) for i in range(5)]
    out = _feed(asm, ITEM, *_txn(*rows))
    assert [(o.envelope.seq, o.envelope.last, len(o.envelope.changes)) for o in out] == [
        (0, False, 2),
        (1, False, 2),
        (2, True, 1),
    ]
    # Only the last slice lets the slot advance: the earlier ones are not a whole transaction.
    assert [o.ack_lsn for o in out] == [None, None, 108]


def test_own_apply_writes_are_not_echoed() -> None:
    asm = Assembler("o", skip_origins=frozenset({"replicator_o_"}))
    out = _feed(
        asm, ITEM, po.Begin(100, 0, 7), po.Origin(0, "replicator_o_fwd"),
        po.Insert(16384, ("1", "a", "b")), po.Commit(0, 100, 108, 0),
    )  # fmt: skip
    assert len(out) == 1 and out[0].envelope.control == {"kind": "skip"}
    assert out[0].envelope.changes == [] and out[0].ack_lsn == 108


def test_a_relation_changed_inside_a_transaction_cuts_a_slice() -> None:
    asm = Assembler("o")
    wider = po.Relation(
        16384, "public", "item", "d", (*ITEM.columns, po.Column(0, "extra", 23, -1))
    )
    out = _feed(
        asm, ITEM, po.Begin(100, 0, 7), po.Insert(16384, ("1", "a", "b")),
        wider, po.Insert(16384, ("2", "a", "b", "9")), po.Commit(0, 100, 108, 0),
    )  # fmt: skip
    # Each envelope's relation is the shape of its own rows.
    assert [o.envelope.last for o in out] == [False, True]
    first, second = (o.envelope for o in out)
    assert first.relations[16384].columns == ("id", "title", "body")
    assert second.relations[16384].columns == ("id", "title", "body", "extra")
    assert second.changes[0].new == {"id": "2", "title": "a", "body": "b", "extra": "9"}
    assert asm.relation_changes == 1 and asm.changed_relations == ["public.item"]


def test_a_binary_value_is_kept_as_bytea_text() -> None:
    out = _feed(Assembler("o"), ITEM, *_txn(po.Insert(16384, ("1", b"\x00\xff", None))))
    assert out[0].envelope.changes[0].new == {"id": "1", "title": "\\x00ff", "body": None}


def test_a_streamed_transaction_is_spooled_and_sliced_at_its_commit() -> None:
    """Protocol 2: changes arrive before the commit, in segments; an aborted subtransaction's
    changes and a wholly aborted transaction never reach the log."""
    asm = Assembler("o", slice_max_changes=2)
    out = _feed(
        asm,
        po.StreamStart(9, True),
        ITEM,
        po.Insert(16384, ("1", "a", None), xid=9),
        po.Update(16384, "K", ("0", None, None), ("1", "b", po.UNCHANGED), xid=9),
        po.StreamStop(),
        po.StreamStart(9, False),
        po.Insert(16384, ("2", "in a subtransaction", "x"), xid=10),
        po.StreamStop(),
        po.StreamAbort(9, 10),
        po.StreamStart(11, True),
        po.Insert(16384, ("3", "never committed", "y"), xid=11),
        po.StreamStop(),
        po.StreamAbort(11, 11),
        po.StreamStart(9, False),
        po.Delete(16384, "K", ("4", None, None), xid=9),
        po.StreamStop(),
    )
    assert out == [] and asm.in_txn
    out = _feed(asm, po.StreamCommit(9, 0, 500, 508, 0))
    assert [(o.envelope.seq, o.envelope.last, o.ack_lsn) for o in out] == [
        (0, False, None),
        (1, True, 508),
    ]
    changes = [c for o in out for c in o.envelope.changes]
    assert [(c.op, c.new, c.old, c.unchanged) for c in changes] == [
        ("insert", {"id": "1", "title": "a", "body": None}, None, []),
        ("update", {"id": "1", "title": "b"}, {"id": "0"}, ["body"]),
        ("delete", None, {"id": "4"}, []),
    ]
    assert changes[0].values == ["1", "a", None]  # spooled and read back as values
    assert all(o.envelope.commit_lsn == 500 for o in out)
    assert out[0].envelope.relations[16384].columns == ("id", "title", "body")
    assert not asm.in_txn


# -- real server bytes (tests/fixtures/pgoutput, set v2_stream) ----------------------------------

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pgoutput" / "messages.jsonl"


def _v2_stream(*names: str) -> list[po.Message]:
    """The v2_stream set's messages of the steps ``names``, decoded in server order (the
    decoder is stateful, so the whole set is decoded)."""
    dec = po.PgOutputDecoder(2)
    rows = [json.loads(line) for line in FIXTURES.read_text().splitlines()]
    msgs = [
        (r["name"], dec.decode(bytes.fromhex(r["hex"]))) for r in rows if r["set"] == "v2_stream"
    ]
    return [m for n, m in msgs if n in names]


def test_a_streamed_transaction_of_our_own_apply_is_not_echoed() -> None:
    """The Origin message follows the first Stream Start of a streamed transaction: it must
    decide at Stream Commit, as it does for a transaction sent whole at its commit."""
    msgs = _v2_stream("stream_origin")
    assert any(isinstance(m, po.Origin) for m in msgs)  # the fixture is what it says
    commit = one(m for m in msgs if isinstance(m, po.StreamCommit))
    out = _feed(Assembler("o", skip_origins=frozenset({"pgoutput_fx_"})), *msgs)
    assert [(o.envelope.control, o.envelope.changes, o.ack_lsn) for o in out] == [
        ({"kind": "skip"}, [], commit.end_lsn)
    ]
    # Another origin (another replicator, a subscriber) is data like any other.
    out = _feed(Assembler("o", skip_origins=frozenset({"replicator_o_"})), *msgs)
    ids = [ch.new and ch.new["id"] for o in out for ch in o.envelope.changes]
    assert ids == ["500", "501"] and out[-1].envelope.last


def test_a_control_message_inside_a_streamed_transaction_keeps_its_place() -> None:
    msgs = _v2_stream("stream_marker")
    assert any(isinstance(m, po.StreamStop) for m in msgs)  # streamed before its commit
    asm = Assembler("o")
    out = _feed(asm, *msgs)
    commit = one(m for m in msgs if isinstance(m, po.StreamCommit))
    seen = [
        ("marker", o.envelope.control["id"]) if o.envelope.control else
        ("rows", [ch.new and ch.new["id"] for ch in o.envelope.changes])
        for o in out
    ]  # fmt: skip
    assert seen == [("rows", ["600"]), ("marker", "m1"), ("rows", ["601", "602"])]
    envs = [o.envelope for o in out]
    assert [(e.xid, e.commit_lsn, e.seq, e.last) for e in envs] == [
        (commit.xid, commit.commit_lsn, 0, False),
        (commit.xid, commit.commit_lsn, 1, False),
        (commit.xid, commit.commit_lsn, 2, True),
    ]
    assert [o.ack_lsn for o in out] == [None, None, commit.end_lsn] and not asm.in_txn


def test_control_messages_in_streams_follow_subtransactions_and_their_kind() -> None:
    """A rolled-back subtransaction's marker goes with it; a marker outside any transaction
    (heartbeat) passes at once; another prefix is not ours."""
    heartbeat = b'{"kind": "heartbeat"}'
    out = _feed(
        Assembler("o"),
        po.StreamStart(9, True),
        ITEM,
        po.Insert(16384, ("1", "a", None), xid=9),
        po.LogicalMessage(True, 50, "replicator", b'{"kind": "marker", "id": "kept"}', 9),
        po.LogicalMessage(True, 51, "replicator", b'{"kind": "marker", "id": "gone"}', 10),
        po.LogicalMessage(True, 52, "someone-else", b"{}", 9),
        po.LogicalMessage(False, 53, "replicator", heartbeat, 9),
        po.StreamStop(),
        po.StreamAbort(9, 10),
        po.StreamCommit(9, 0, 500, 508, 0),
    )
    assert [(o.envelope.xid, o.envelope.control, o.ack_lsn) for o in out] == [
        (0, {"kind": "heartbeat"}, 53),
        (9, None, None),
        (9, {"kind": "marker", "id": "kept"}, None),
        (9, None, 508),
    ]


def test_a_marker_in_a_skipped_transaction_is_skipped_with_it() -> None:
    """Not echoed means none of it: a marker slice would leave apply expecting a last slice."""
    asm = Assembler("o", skip_origins=frozenset({"replicator_o_"}))
    out = _feed(
        asm, ITEM, po.Begin(100, 0, 7), po.Origin(0, "replicator_o_fwd"),
        po.LogicalMessage(True, 90, "replicator", b'{"kind": "marker"}'),
        po.Insert(16384, ("1", "a", "b")), po.Commit(0, 100, 108, 0),
    )  # fmt: skip
    assert [o.envelope.control for o in out] == [{"kind": "skip"}]
