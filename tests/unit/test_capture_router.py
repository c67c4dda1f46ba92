"""The capture's router in its default one-partition mode: whole transactions read back to back
share a Kafka message; everything else travels alone and in order (no Kafka: a recording
producer)."""

from __future__ import annotations

from typing import Any

from connectors.assembler import Output
from connectors.envelope import Change, Envelope, RelationInfo, decode_envelopes
from connectors.kafka_io import Sent
from replicator.capture import GROUP_TRANSACTIONS, GROUP_WAIT_S, _Router

REL = RelationInfo("public", "t", ("id",), (23,), ("id",))


class _Recorder:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def send(self, topic: str, value: bytes, *, partition: int | None = None, **_: Any) -> Sent:
        self.values.append(value)
        return Sent(future=None, size=len(value))


def _txn(lsn: int, *, seq: int = 0, last: bool = True) -> Output:
    env = Envelope("o", lsn, lsn, None, seq, last, {1: REL}, [Change("insert", 1, {"id": "1"})])
    return Output(env, lsn + 8 if last else None)


def _frozen() -> float:
    """A clock that never moves: a busy machine must not flush a group by age mid-test."""
    return 0.0


def _heartbeat() -> Output:
    return Output(Envelope("o", 0, 50, None, control={"kind": "heartbeat"}), None)


def test_whole_transactions_are_held_and_go_as_one_message_before_anything_else() -> None:
    kafka = _Recorder()
    router = _Router(kafka, "changes", 1, "", clock=_frozen)  # type: ignore[arg-type]
    assert router.send(_txn(10)) == [] and router.send(_txn(20)) == [] and router.pending
    sent = router.send(_heartbeat())
    # The held group first, acknowledged at its last transaction's end; then the heartbeat.
    assert [ack for _, ack in sent] == [28, None] and not router.pending
    group, heartbeat = (decode_envelopes(v) for v in kafka.values)
    assert [e.commit_lsn for e in group] == [10, 20] and heartbeat[0].control is not None


def test_slices_travel_alone_and_a_full_group_is_sent() -> None:
    kafka = _Recorder()
    router = _Router(kafka, "changes", 1, "", clock=_frozen)  # type: ignore[arg-type]
    router.send(_txn(5))
    assert [ack for _, ack in router.send(_txn(10, last=False))] == [13, None]
    assert [ack for _, ack in router.send(_txn(10, seq=1))] == [18]  # its last slice too
    assert router.flush() == []
    for i in range(GROUP_TRANSACTIONS - 1):
        assert router.send(_txn(100 + i)) == []
    assert len(router.send(_txn(1000))) == 1 and not router.pending
    assert len(decode_envelopes(kafka.values[-1])) == GROUP_TRANSACTIONS


def test_a_group_getting_old_is_sent() -> None:
    kafka, now = _Recorder(), [0.0]
    router = _Router(kafka, "changes", 1, "", clock=lambda: now[0])  # type: ignore[arg-type]
    assert router.send(_txn(10)) == [] and not router.overdue
    now[0] = 1.0
    assert router.overdue
    assert len(router.send(_txn(20))) == 1 and not router.pending


def test_a_held_group_lingers_for_company_until_it_gets_old() -> None:
    """Under a steady writer the stream pauses between commits: the capture waits on it for the
    group's remaining age (a message per transaction costs more than its rows), never longer."""
    kafka, now = _Recorder(), [0.0]
    router = _Router(kafka, "changes", 1, "", clock=lambda: now[0])  # type: ignore[arg-type]
    assert router.linger() == 0.0  # nothing held: nothing to wait for
    router.send(_txn(10))
    assert router.linger() == GROUP_WAIT_S
    now[0] = GROUP_WAIT_S / 2
    assert router.linger() == GROUP_WAIT_S / 2
    now[0] = 1.0
    assert router.linger() == 0.0 and router.overdue
