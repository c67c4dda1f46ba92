"""The dead-letter queue: poison events with their reason, on ``<prefix>.<dir>.dlq``.

A dead-letter record is written (and acknowledged by Kafka) before the offsets that skip its
event are committed, so a crash can duplicate a record but never lose one. ``replicator dlq``
reads, replays and purges them; a purge stores the position below which records are done.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson

from connectors.kafka_io import Producer
from replicator.errors import DataError, ReplicatorError


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    error: str
    table: str | None
    key: dict[str, Any] | None
    column: str | None
    commit_lsn: int | None
    source_topic: str
    source_partition: int
    source_offset: int
    # The offending change (raw, as in the envelope) or the raw message when undecodable.
    change: Any
    at: str

    def encode(self) -> bytes:
        return orjson.dumps(self.__dict__, default=str)

    @staticmethod
    def decode(data: bytes) -> DeadLetter:
        return DeadLetter(**orjson.loads(data))


def dead_letter(
    exc: ReplicatorError,
    *,
    topic: str,
    partition: int,
    offset: int,
    commit_lsn: int | None,
    change: Any,
) -> DeadLetter:
    table = key = column = None
    if isinstance(exc, DataError):
        table, key, column = exc.table, exc.key, exc.column
    return DeadLetter(
        reason=exc.message,
        error=type(exc).__name__,
        table=table,
        key={k: str(v) for k, v in key.items()} if key else None,
        column=column,
        commit_lsn=commit_lsn,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        change=change,
        at=dt.datetime.now(dt.UTC).isoformat(),
    )


class DeadLetterWriter:
    def __init__(self, producer: Producer, topic: str) -> None:
        self._producer = producer
        self.topic = topic
        self.count = 0

    def write(self, letter: DeadLetter) -> None:
        sent = self._producer.send(self.topic, letter.encode())
        self._producer.flush()
        sent.check()
        self.count += 1
