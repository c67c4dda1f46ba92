"""The capture: the legacy slot → change envelopes → Kafka, never confirming what Kafka lacks.

The slot's flush position (standby status ``flush_lsn``) advances only to the highest LSN below
which every envelope is acknowledged by Kafka (acks=all). A crash therefore replays from the
slot's confirmed position: Kafka may hold duplicates, identified by ``commit_lsn``, and the
apply skips them. Heartbeats (``pg_logical_emit_message``) keep an idle slot advancing and let
lag be measured end to end.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from connectors import pg, walframe
from connectors.assembler import CONTROL_PREFIX, Assembler, Output
from connectors.envelope import Envelope, group_envelopes
from connectors.kafka_io import Producer, Sent, ensure_topics
from connectors.pgoutput import PgOutputDecodeError, PgOutputDecoder
from connectors.pgsource import (
    ReplicationStream,
    create_slot,
    ensure_publication,
    slot_info,
    source_problems,
)
from replicator.config import DatabaseSettings, Settings
from replicator.errors import (
    ConnectionFailed,
    KafkaUnavailable,
    MalformedMessage,
    PreconditionError,
    ReplicatorError,
)
from replicator.health import StageHealth, waiting_sleep
from replicator.retry import RetryPolicy

log = logging.getLogger(__name__)

# Bytes handed to the producer and not yet acknowledged; past this the capture waits.
MAX_PENDING_BYTES = 32 << 20
# Whole small transactions read back to back (a backlog) share one Kafka message, up to these:
# a message per transaction costs the producer more than the transaction's rows.
GROUP_TRANSACTIONS = 200
GROUP_BYTES = 1 << 20
GROUP_WAIT_S = 0.005
# Inside a transaction, the per-frame loop looks at acknowledgements and clocks only once in
# this many frames (a fraction of a millisecond of rows): per row, they cost as much as decoding.
CHECK_EVERY_FRAMES = 256

HEARTBEAT_SQL = (
    "SELECT pg_logical_emit_message(false, %s, json_build_object("
    "'kind', 'heartbeat', 'emitted_at', clock_timestamp(), 'origin', %s::text)::text)"
)


@dataclass
class CaptureStats:
    envelopes: int = 0
    changes: int = 0
    confirmed_lsn: int = 0
    received_lsn: int = 0
    heartbeats: int = 0
    reconnects: int = 0
    relation_changes: int = 0
    started: float = field(default_factory=time.monotonic)


def prepare_source(
    s: Settings, db: DatabaseSettings, tables: list[str], direction: str
) -> int | None:
    """Check the source, create publication and slot if missing; the slot's LSN if created."""
    with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
        problems = source_problems(conn, tables)
        if problems:
            raise PreconditionError(
                "the source cannot be captured:\n  " + "\n  ".join(str(p) for p in problems)
            )
        ensure_publication(conn, s.publication_for(direction), tables)
        info = slot_info(conn, s.slot(direction))
    if not info.exists:
        return create_slot(db.conninfo(), s.slot(direction))
    return None


class Capture:
    def __init__(
        self,
        settings: Settings,
        tables: list[str],
        *,
        direction: str = "fwd",
        source: DatabaseSettings | None = None,
    ) -> None:
        self.s = settings
        self.tables = tables
        self.direction = direction
        self.db = source if source is not None else settings.source
        self.topic = settings.topic(direction, "changes")
        self.stats = CaptureStats()
        self._kafka_down = False
        self.health = StageHealth()

    def prepare(self) -> int | None:
        """Publication, slot and topics; returns the slot's LSN when this call created it."""
        created = prepare_source(self.s, self.db, self.tables, self.direction)
        ensure_topics(
            self.s.kafka.bootstrap_servers,
            self.s.topics(self.direction),
            self.s.kafka.replication_factor,
            **self.s.kafka.client_options(),
        )
        return created

    def run(self, stop: threading.Event) -> None:
        if not stop.is_set():
            RetryPolicy(
                self.s.retry,
                "capture",
                stop=stop,
                on_failure=self._failed,
                sleep=waiting_sleep(self.health, stop),
            ).run(lambda: self._stream(stop))

    def _failed(self, exc: ReplicatorError) -> None:
        self.health.waiting(f"{exc.message} (retrying)")
        if isinstance(exc, KafkaUnavailable) and not self._kafka_down:
            log.error("capture: Kafka unavailable; the slot is not advanced until it answers")
            self._kafka_down = True
        self.stats.reconnects += 1

    # -- one replication session ---------------------------------------------------------------

    def _stream(self, stop: threading.Event) -> None:
        options = {
            "proto_version": str(self.s.capture.proto_version),
            "publication_names": self.s.publication_for(self.direction),
            "messages": "true",
        }
        if self.s.capture.proto_version >= 2 and self.s.capture.streaming:
            options["streaming"] = "on"
        producer = Producer(
            self.s.kafka.bootstrap_servers,
            compression=self.s.kafka.compression,
            **self.s.kafka.client_options(),
        )
        stream = ReplicationStream(self.db.conninfo(), self.s.slot(self.direction), options)
        heartbeat = pg.connect(self.db.conninfo(), autocommit=True)
        try:
            with heartbeat, pg.translated(self.db.masked()):
                info = slot_info(heartbeat, self.s.slot(self.direction))
            if not info.exists:
                raise PreconditionError(
                    f"replication slot {self.s.slot(self.direction)} is missing",
                    hint="restart `replicator run` (or `replicator capture`): it creates the "
                    "slot, and a new forward slot starts a new backfill",
                )
            self.stats.confirmed_lsn = info.confirmed_flush_lsn or 0
            stream.start(0)  # 0/0: resume from the slot's confirmed position
            self._session(stream, producer, stop)
        finally:
            stream.close()
            producer.close()

    def _session(
        self, stream: ReplicationStream, producer: Producer, stop: threading.Event
    ) -> None:
        decoder = PgOutputDecoder(proto_version=self.s.capture.proto_version)
        asm = Assembler(
            self.s.name,
            slice_max_changes=self.s.capture.slice_max_changes,
            slice_max_bytes=self.s.capture.slice_max_bytes,
            skip_origins=frozenset({f"replicator_{self.s.name}_"}),
        )
        router = _Router(
            producer, self.topic, producer.partitions(self.topic), self.s.apply.partition_key
        )
        inflight: deque[tuple[Sent, int | None]] = deque()
        pending_bytes = 0
        safe_end = self.stats.confirmed_lsn
        last_status = 0.0
        next_heartbeat = time.monotonic()
        hb_conn = pg.connect(self.db.conninfo(), autocommit=True)
        frames_since_check = 0
        try:
            while not stop.is_set():
                # Whole transactions wait in the router while more frames are at hand (a
                # backlog): they go to Kafka as one message as soon as the stream pauses.
                frame = stream.read(timeout=0.0 if router.pending else 0.1)
                if frame is None and router.pending:
                    pending_bytes += _hand_over(router.flush(), inflight)
                reply = False
                if frame is not None:
                    try:
                        parsed = walframe.parse_frame(frame)
                    except walframe.WalFrameError as exc:
                        raise MalformedMessage(f"undecodable walsender frame: {exc}") from None
                    if isinstance(parsed, walframe.XLogData):
                        self.stats.received_lsn = max(self.stats.received_lsn, parsed.wal_end)
                        try:
                            msg = decoder.decode(parsed.payload)
                        except PgOutputDecodeError as exc:
                            # Nothing downstream could use a change we cannot read: stop here,
                            # unconfirmed, so that a fixed version replays it.
                            raise MalformedMessage(
                                f"undecodable pgoutput message at {parsed.wal_start:X}: {exc}",
                                hint="report this with the WAL position; the slot is not advanced",
                            ) from None
                        for out in asm.feed(msg):
                            pending_bytes += _hand_over(router.send(out), inflight)
                            self.stats.envelopes += 1
                            self.stats.changes += len(out.envelope.changes)
                            # Backpressure: the producer's buffer is unbounded, ours is not.
                            while pending_bytes > MAX_PENDING_BYTES and inflight:
                                inflight[0][0].wait(self.s.kafka.request_timeout_ms / 1000)
                                pending_bytes -= self._confirm(inflight)
                        if not asm.in_txn:
                            safe_end = max(safe_end, parsed.wal_start)
                        elif frames_since_check < CHECK_EVERY_FRAMES:
                            # Inside a transaction, frame after frame: the look-arounds below
                            # (acknowledgements, clocks) wait for a pause or a few hundred rows.
                            frames_since_check += 1
                            continue
                    else:
                        reply = parsed.reply_requested
                        if not asm.in_txn:
                            safe_end = max(safe_end, parsed.wal_end)
                frames_since_check = 0
                if router.overdue:  # frames kept coming: held transactions wait no longer
                    pending_bytes += _hand_over(router.flush(), inflight)
                pending_bytes -= self._confirm(inflight)
                if not inflight and not asm.in_txn and not router.pending:
                    self.stats.confirmed_lsn = max(self.stats.confirmed_lsn, safe_end)
                if self._kafka_down and not inflight:
                    log.info("capture: Kafka acknowledges again")
                    self._kafka_down = False
                if self._kafka_down:
                    self.health.waiting("streaming, but Kafka has not acknowledged yet")
                else:
                    self.health.ready()
                if asm.changed_relations:
                    # The new shape travels in every later envelope; transforms see it, and
                    # `replicator check` says whether the mapping still fits.
                    for name in asm.changed_relations:
                        log.warning(
                            "capture: the columns of %s changed mid-stream; forwarding the new "
                            "relation (run `replicator check` to compare it with the mapping)",
                            name,
                        )
                    asm.changed_relations.clear()
                self.stats.relation_changes = asm.relation_changes
                now = time.monotonic()
                if reply or now - last_status >= self.s.capture.status_interval_s:
                    c = self.stats.confirmed_lsn
                    stream.send(walframe.standby_status(self.stats.received_lsn, c, c))
                    last_status = now
                if now >= next_heartbeat:
                    with pg.translated(self.db.masked()):
                        hb_conn.execute(HEARTBEAT_SQL, (CONTROL_PREFIX, self.s.name))
                    self.stats.heartbeats += 1
                    next_heartbeat = now + self.s.capture.heartbeat_interval_s
            # Orderly stop: wait for Kafka, confirm, say goodbye.
            inflight.extend(router.flush())
            producer.flush(timeout=30)
            self._confirm(inflight)
            c = self.stats.confirmed_lsn
            stream.send(walframe.standby_status(self.stats.received_lsn, c, c))
        except psycopg.Error as exc:
            raise ConnectionFailed(f"{self.db.masked()}: {exc}") from exc
        finally:
            hb_conn.close()

    def _confirm(self, inflight: deque[tuple[Sent, int | None]]) -> int:
        """Pop what Kafka has acknowledged, in order, advancing the confirmable position.

        Returns the bytes released. A refused message raises: the slot is not advanced past it.
        """
        released = 0
        while inflight and inflight[0][0].done:
            sent, ack = inflight.popleft()
            sent.check()
            released += sent.size
            if ack is not None:
                self.stats.confirmed_lsn = max(self.stats.confirmed_lsn, ack)
        return released


class _Router:
    """Sends envelopes to partitions: all to 0 by default; by key in scale-out mode.

    In scale-out mode a transaction's changes are split by partition key; each partition gets
    its own slice sequence, every partition that received part of a transaction receives its
    ``last`` slice, and control messages go to every partition.
    """

    def __init__(
        self,
        producer: Producer,
        topic: str,
        partitions: int,
        key_column: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.producer = producer
        self._clock = clock
        self.topic = topic
        self.partitions = partitions
        self.key_column = key_column
        self._seq: dict[int, int] = {}  # partition -> next seq of the open transaction
        # Whole transactions not sent yet (one partition only), their bytes, the
        # acknowledgement of the last one and when the first one came.
        self._group: list[bytes] = []
        self._group_bytes = 0
        self._group_ack: int | None = None
        self._group_since = 0.0

    @property
    def pending(self) -> bool:
        """Transactions held for a group: not in Kafka, so not to be confirmed."""
        return bool(self._group)

    @property
    def overdue(self) -> bool:
        return bool(self._group) and self._clock() - self._group_since >= GROUP_WAIT_S

    def flush(self) -> list[tuple[Sent, int | None]]:
        """Send the held transactions as one message."""
        if not self._group:
            return []
        value = group_envelopes(self._group)
        ack, self._group, self._group_bytes, self._group_ack = self._group_ack, [], 0, None
        return [(self.producer.send(self.topic, value, partition=0), ack)]

    def send(self, out: Output) -> list[tuple[Sent, int | None]]:
        env = out.envelope
        if self.partitions == 1:
            value = env.encode()
            if env.control is not None or not env.last or env.seq or len(value) > GROUP_BYTES:
                # Slices, heartbeats and markers travel alone, after what is held.
                return [
                    *self.flush(),
                    (self.producer.send(self.topic, value, partition=0), out.ack_lsn),
                ]
            # A whole transaction: held while the capture has more frames at hand; sent with
            # the others when the stream pauses, or the group is full or getting old.
            now = self._clock()
            if not self._group:
                self._group_since = now
            self._group.append(value)
            self._group_bytes += len(value)
            self._group_ack = out.ack_lsn
            if (
                len(self._group) >= GROUP_TRANSACTIONS
                or self._group_bytes >= GROUP_BYTES
                or now - self._group_since >= GROUP_WAIT_S
            ):
                return self.flush()
            return []
        if env.control is not None:
            pieces = {p: _copy(env, []) for p in range(self.partitions)}
            for piece in pieces.values():
                # Apply needs to know how many partitions carry a marker to hold them all.
                piece.control = {**env.control, "partitions": self.partitions}
        else:
            pieces = {}
            for ch in env.changes:
                p = self._partition(env, ch)
                pieces.setdefault(p, _copy(env, [])).changes.append(ch)
        if env.last:
            for p in self._seq:
                pieces.setdefault(p, _copy(env, []))
        result: list[tuple[Sent, int | None]] = []
        for p, piece in sorted(pieces.items()):
            piece.seq = self._seq.get(p, 0)
            piece.relations = {r: env.relations[r] for r in {c.rel for c in piece.changes}}
            if env.last:
                self._seq.pop(p, None)
            else:
                self._seq[p] = piece.seq + 1
            result.append((self.producer.send(self.topic, piece.encode(), partition=p), None))
        if result:
            result[-1] = (result[-1][0], out.ack_lsn)
        return result

    def _partition(self, env: Envelope, ch: Any) -> int:
        row = ch.new or ch.old or {}
        rel = env.relations[ch.rel]
        if self.key_column and self.key_column in row:
            basis = str(row[self.key_column])
        else:
            basis = "|".join(str(row.get(k)) for k in rel.key_columns)
        return zlib.crc32(basis.encode()) % self.partitions


def _hand_over(
    sent: list[tuple[Sent, int | None]], inflight: deque[tuple[Sent, int | None]]
) -> int:
    """Track messages handed to the producer; returns their bytes."""
    inflight.extend(sent)
    return sum(s.size for s, _ in sent)


def _copy(env: Envelope, changes: list[Any]) -> Envelope:
    return Envelope(
        origin=env.origin,
        xid=env.xid,
        commit_lsn=env.commit_lsn,
        commit_ts=env.commit_ts,
        seq=env.seq,
        last=env.last,
        relations={},
        changes=changes,
        control=None,
    )
