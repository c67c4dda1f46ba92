"""The dead-letter queue: poison events with their reason, on ``<prefix>.<dir>.dlq``.

A dead-letter record is written (and acknowledged by Kafka) before the offsets that skip its
event are committed, so a crash can duplicate a record but never lose one. ``replicator dlq``
reads, replays and purges them; a purge stores the position below which records are done.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from connectors.kafka_io import Producer
from replicator.errors import DataError, ReplicatorError, TransformError
from transforms.api import Direction


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


def truncate_refusal(direction: Direction, table: str, truncated: list[str]) -> DataError | None:
    """Why a TRUNCATE of source ``table`` is dead-lettered, when it is: the target tables it
    writes beside other source tables (all but ``truncated``) cannot be truncated, since their
    rows from the others would go, and nothing in a target row says which source wrote it."""
    transform = direction.tables.get(table)
    shared = [w.name for w in transform.writes if w.name not in truncated] if transform else []
    if not shared:
        return None
    others = sorted(
        src
        for src, t in direction.tables.items()
        if src != table and any(w.name in shared for w in t.writes)
    )
    done = f" ({', '.join(truncated)} truncated)" if truncated else ""
    return TransformError(
        f"TRUNCATE of {table} not applied to {', '.join(shared)}{done}: "
        f"{', '.join(others)} write{'s' if len(others) == 1 else ''} there too, and a target "
        f"row does not say which source table wrote it. Undo what {table} wrote there by hand "
        f"(`replicator validate --table {table}` shows the rows that differ), then purge this "
        "letter",
        table=table,
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


# -- reading and bookkeeping (``replicator dlq``) ---------------------------------------------


@dataclass(frozen=True)
class Letter:
    partition: int
    offset: int
    letter: DeadLetter

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"


def read_letters(
    bootstrap: str, topic: str, done: set[tuple[int, int]], **security: Any
) -> list[Letter]:
    """The letters of ``topic`` not replayed or purged yet, oldest first."""
    from connectors.kafka_io import read_topic

    out = []
    for p, o, value in read_topic(bootstrap, topic, **security):
        if (p, o) in done:
            continue
        try:
            letter = DeadLetter.decode(value)
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"{topic} {p}:{o} is not a dead-letter record: {exc}",
                hint="only the replicator should write to its DLQ topic",
            ) from None
        out.append(Letter(p, o, letter))
    return out


def done_positions(conn: Any, topic: str) -> set[tuple[int, int]]:
    rows = conn.execute(
        "SELECT partition, dlq_offset FROM replicator.dlq_done WHERE topic = %s", (topic,)
    ).fetchall()
    return {(int(p), int(o)) for p, o in rows}


def done_count(conn: Any, topic: str) -> int:
    if not conn.execute("SELECT to_regclass('replicator.dlq_done') IS NOT NULL").fetchone()[0]:
        return 0
    row = conn.execute("SELECT count(*) FROM replicator.dlq_done WHERE topic = %s", (topic,))
    return int(row.fetchone()[0])


def pending_count(conn: Any, topic: str, end_offsets: Mapping[int, int]) -> int:
    """Letters of ``topic`` neither replayed nor purged: what `status` reports and what the
    cutover's preflight refuses. The one count of pending letters: ``conn`` is the database
    that keeps ``replicator.dlq_done`` for the direction (the side its apply writes),
    ``end_offsets`` the topic's. The DLQ's producer is idempotent, not transactional, so its
    offsets are dense: every offset below the end is a letter."""
    total = sum(end_offsets.values())
    if total == 0:
        return 0
    return max(0, total - done_count(conn, topic))


def mark_done(conn: Any, topic: str, letters: list[Letter], action: str) -> None:
    for item in letters:
        conn.execute(
            "INSERT INTO replicator.dlq_done (topic, partition, dlq_offset, action)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (topic, item.partition, item.offset, action),
        )
