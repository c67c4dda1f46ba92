"""PostgreSQL majors 13 to 18: what each server offers, negotiated (pure, no I/O), and the carrier
rows that stand in for logical messages on 13."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connectors import pgoutput as po
from connectors.assembler import Assembler, CarrierRows, Output
from connectors.pgsource import ServerFeatures, emit_message, stream_options
from replicator.local import pgversions

ITEM = po.Relation(16384, "public", "item", "d", (po.Column(1, "id", 23, -1),))
CARRIER = po.Relation(
    16400,
    "replicator",
    "wal_message",
    "d",
    (
        po.Column(1, "id", 20, -1),
        po.Column(0, "transactional", 16, -1),
        po.Column(0, "prefix", 25, -1),
        po.Column(0, "content", 25, -1),
        po.Column(0, "emitted_at", 1184, -1),
    ),
)


def _row(transactional: bool, control: dict[str, Any], id_: int = 1) -> po.Insert:
    flag = "t" if transactional else "f"
    return po.Insert(16400, (str(id_), flag, "replicator", json.dumps(control), "2026-01-01"))


def _feed(carrier: CarrierRows, *msgs: Any, lsn: int = 500) -> list[Output]:
    out: list[Output] = []
    for m in msgs:
        carrier.lsn = lsn
        out.extend(carrier.feed(m))
    return out


@pytest.mark.parametrize(
    "major,proto,messages,failover",
    [
        (13, 1, False, False),
        (14, 2, True, False),
        (15, 3, True, False),
        (16, 4, True, False),
        (17, 4, True, True),
        (18, 4, True, True),
    ],
)
def test_each_major_offers_what_its_release_added(
    major: int, proto: int, messages: bool, failover: bool
) -> None:
    server = ServerFeatures(major * 10000 + 5)
    assert (server.major, server.max_proto) == (major, proto)
    assert server.logical_messages is messages and server.failover_slots is failover
    assert server.invalidation_reason is failover
    # check says what is missing, and what it costs; nothing from 17 on.
    assert bool(server.lacks()) is (major < 17)
    if major == 13:
        assert "replicator.wal_message" in " ".join(cost for _, cost in server.lacks())


def test_stream_options_ask_only_for_what_the_server_offers() -> None:
    pg13 = stream_options(ServerFeatures(130023), "p", proto_version=2, streaming=True)
    # 13 rejects both protocol 2 and the `messages` option outright.
    assert pg13 == {"proto_version": "1", "publication_names": "p"}
    pg17 = stream_options(ServerFeatures(170010), "p", proto_version=2, streaming=True)
    assert pg17 == {
        "proto_version": "2",
        "publication_names": "p",
        "messages": "true",
        "streaming": "on",
    }
    assert "streaming" not in stream_options(ServerFeatures(180004), "p", 2, streaming=False)


def test_emit_message_is_a_carrier_row_on_13_and_a_logical_message_from_14() -> None:
    assert "pg_logical_emit_message" in repr(emit_message(170000, True, "replicator", "{}"))
    on13 = repr(emit_message(130023, True, "replicator", "{}"))
    assert "INSERT INTO replicator.wal_message" in on13 and "DELETE" not in on13
    # Heartbeats (non-transactional) also prune old carrier rows.
    assert "DELETE FROM replicator.wal_message" in repr(emit_message(130023, False, "r", "{}"))


def test_carrier_rows_become_the_messages_they_carry() -> None:
    asm = Assembler("o")
    carrier = CarrierRows(asm.feed)
    # A heartbeat: a transaction of carrier rows only is no transaction, as on 14+.
    heartbeat = {"kind": "heartbeat", "emitted_at": "x"}
    out = _feed(
        carrier,
        po.Begin(600, 0, 9),
        CARRIER,
        po.Delete(16400, "K", ("0", None, None, None, None)),  # pruning: not relayed
        _row(False, heartbeat),
        po.Commit(0, 600, 608, 0),
        lsn=520,
    )
    assert len(out) == 1 and not asm.in_txn
    assert out[0].envelope.control == heartbeat and out[0].ack_lsn == 520
    # A fence marker inside a transaction keeps its place among the changes.
    marker = {"kind": "marker", "marker": "fence", "id": "m1"}
    out = _feed(
        carrier,
        po.Begin(700, 0, 10),
        ITEM,
        po.Insert(16384, ("1",)),
        _row(True, marker, 2),
        po.Insert(16384, ("2",)),
        po.Commit(0, 700, 708, 0),
    )
    assert [o.envelope.control for o in out] == [None, marker, None]
    assert [len(o.envelope.changes) for o in out] == [1, 0, 1]
    assert out[-1].envelope.last and out[-1].ack_lsn == 708
    # An ordinary transaction passes untouched.
    out = _feed(carrier, po.Begin(800, 0, 11), po.Insert(16384, ("3",)), po.Commit(0, 800, 808, 0))
    assert len(out) == 1 and out[0].envelope.changes[0].new == {"id": "3"}


def test_local_clusters_of_other_majors_get_their_own_names() -> None:
    assert pgversions.cluster_name("legacy", 15) == "legacy"
    assert pgversions.cluster_name("target", 18) == "target-pg18"
    assert pgversions.bin_dir(15) == pgversions.DEBIAN_BIN
    with pytest.raises(Exception, match="not one the local services run"):
        pgversions.bin_dir(12)


FIXTURES = Path(__file__).parents[1] / "fixtures" / "pgoutput"
PROTO = {"v1": 1, "v1_binary": 1, "v2_stream": 2}


def _recorded(major: int) -> dict[str, list[tuple[str, po.Message]]]:
    """A major's recorded messages, decoded in server order, by set."""
    path = FIXTURES / ("messages.jsonl" if major == 15 else f"messages-pg{major}.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    out: dict[str, list[tuple[str, po.Message]]] = {}
    decoders: dict[str, po.PgOutputDecoder] = {}
    for r in rows:
        dec = decoders.setdefault(r["set"], po.PgOutputDecoder(PROTO[r["set"]]))
        out.setdefault(r["set"], []).append((r["name"], dec.decode(bytes.fromhex(r["hex"]))))
    assert not any(d.in_stream for d in decoders.values())
    return out


def _letters(messages: list[tuple[str, po.Message]]) -> str:
    return "".join(_LETTER[type(m)] for _, m in messages)


_LETTER = {
    po.Begin: "B", po.Commit: "C", po.Origin: "O", po.Relation: "R", po.TypeMsg: "Y",
    po.Insert: "I", po.Update: "U", po.Delete: "D", po.Truncate: "T", po.LogicalMessage: "M",
    po.StreamStart: "S", po.StreamStop: "E", po.StreamCommit: "c", po.StreamAbort: "A",
}  # fmt: skip


@pytest.mark.parametrize("major", [13, 14, 16, 17, 18])
def test_the_decoder_reads_what_every_major_writes(major: int) -> None:
    """Byte fixtures recorded from each major (capture_fixtures.py) decode to the same messages
    as 15's, bar what the major lacks (13: no logical messages, binary tuples or protocol 2)."""
    ref, got = _recorded(15), _recorded(major)
    if major == 13:
        assert set(got) == {"v1"}
        assert _letters(got["v1"]) == _letters(ref["v1"]).replace("M", "")
    else:
        assert set(got) == set(ref)
        for set_name in ("v1", "v1_binary"):
            assert _letters(got[set_name]) == _letters(ref[set_name])
        # 18 no longer streams a transaction that aborts before its changes fill the buffer.
        assert _letters(got["v2_stream"]).count("c") == _letters(ref["v2_stream"]).count("c")

    def rows(messages: list[tuple[str, po.Message]]) -> list[Any]:
        return [m.new for n, m in messages if n == "insert" and isinstance(m, po.Insert)][:6]

    assert rows(got["v1"]) == rows(ref["v1"])
    asm = Assembler("o")  # and they assemble into envelopes
    assert sum(1 for _, m in got["v1"] for _ in asm.feed(m)) > 10


def test_a_truncate_of_the_carrier_table_is_not_relayed() -> None:
    """An operator emptying replicator.wal_message on 13 (TRUNCATE is published): the carrier's
    relation never reaches the assembler, which failed on the truncate (a KeyError, the same
    every restart: capture stuck). Dropped as the carrier's deletes are; a truncate naming a
    mapped table too keeps that table."""
    asm = Assembler("o")
    carrier = CarrierRows(asm.feed)
    out = _feed(
        carrier,
        po.Begin(600, 0, 9),
        CARRIER,
        po.Truncate((16400,), cascade=False, restart_identity=False),
        po.Commit(0, 600, 608, 0),
    )
    assert out == [] and not asm.in_txn
    out = _feed(
        carrier,
        po.Begin(700, 0, 10),
        ITEM,
        po.Truncate((16400, 16384), cascade=False, restart_identity=False),
        po.Commit(0, 700, 708, 0),
    )
    assert [(c.op, c.rel) for o in out for c in o.envelope.changes] == [("truncate", 16384)]
