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
from connectors.assembler import CONTROL_PREFIX, Assembler, CarrierRows, Output
from connectors.envelope import Change, Envelope, RelationInfo, group_envelopes
from connectors.kafka_io import Producer, Sent, ensure_topics
from connectors.pgoutput import PgOutputDecodeError, PgOutputDecoder
from connectors.pgsource import (
    ReplicationStream,
    ServerFeatures,
    create_slot,
    ensure_publication,
    features,
    heartbeat_statement,
    slot_info,
    source_problems,
    stream_options,
)
from replicator.config import DatabaseSettings, Settings
from replicator.drift import trigger as drift_trigger
from replicator.errors import (
    ConnectionFailed,
    KafkaUnavailable,
    MalformedMessage,
    PreconditionError,
    ReplicatorError,
)
from replicator.health import StageHealth, waiting_sleep
from replicator.retry import RetryPolicy
from replicator.stage_timings import CaptureTimings

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
        problems: list[ReplicatorError] = list(source_problems(conn, tables))
        problems += partition_key_problems(
            table_identities(conn, tables), s.apply.partition_key, s.kafka.partitions
        )
        if problems:
            raise PreconditionError(
                "the source cannot be captured:\n  " + "\n  ".join(str(p) for p in problems)
            )
        ensure_publication(conn, s.publication_for(direction), tables)
        if not drift_trigger.install(conn, s.name):  # schema changes then show only in rows
            log.warning(
                "no DDL event trigger on %s (needs a superuser): schema changes are seen only"
                " when a changed table is next written (docs/drift.md)",
                db.masked(),
            )
        info = slot_info(conn, s.slot(direction))
    if not info.exists:
        if direction == "rev":
            # Armed by the cutover, before the application wrote to the target: one made now
            # would start at the current WAL and never carry what the target took since.
            raise PreconditionError(
                f"the reverse slot {s.slot(direction)} is gone from {db.masked()}: writes made"
                " on the target since the cutover cannot be streamed back to legacy",
                hint="see docs/cutover.md (a lost slot after the switch): keep the target as"
                " the writer and re-sync legacy before relying on a rollback",
            )
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
        self._primary_keys: dict[int, tuple[str, ...]] = {}
        self.server = ServerFeatures(0)  # learnt when a session starts
        self.options: dict[str, str] = {}  # START_REPLICATION's, negotiated with the server

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
        producer = Producer(
            self.s.kafka.bootstrap_servers,
            compression=self.s.kafka.compression,
            **self.s.kafka.client_options(),
        )
        heartbeat = pg.connect(self.db.conninfo(), autocommit=True)
        self.server = features(heartbeat)
        c = self.s.capture
        options = stream_options(
            self.server, self.s.publication_for(self.direction), c.proto_version, c.streaming
        )
        self.options = options
        stream = ReplicationStream(self.db.conninfo(), self.s.slot(self.direction), options)
        try:
            with heartbeat, pg.translated(self.db.masked()):
                info = slot_info(heartbeat, self.s.slot(self.direction))
                self._primary_keys = {
                    t.oid: t.primary_key for t in table_identities(heartbeat, self.tables)
                }
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
        decoder = PgOutputDecoder(proto_version=int(self.options["proto_version"]))
        asm = Assembler(
            self.s.name,
            slice_max_changes=self.s.capture.slice_max_changes,
            slice_max_bytes=self.s.capture.slice_max_bytes,
            skip_origins=frozenset({f"replicator_{self.s.name}_"}),
        )
        timings_dir = self.s.metrics.stage_timings_dir
        router = _Router(
            producer,
            self.topic,
            producer.partitions(self.topic),
            self.s.apply.partition_key,
            timings=CaptureTimings(timings_dir) if timings_dir else None,
            primary_keys=self._primary_keys,
        )
        # PostgreSQL 13 sends no logical messages: our controls arrive as carrier rows.
        carrier = None if self.server.logical_messages else CarrierRows(asm.feed)
        feed = asm.feed if carrier is None else carrier.feed
        heartbeat_sql = heartbeat_statement(self.server.version, CONTROL_PREFIX, self.s.name)
        inflight: deque[tuple[Sent, int | None]] = deque()
        pending_bytes = 0
        safe_end = self.stats.confirmed_lsn
        last_status = 0.0
        next_heartbeat = time.monotonic()
        hb_conn = pg.connect(self.db.conninfo(), autocommit=True)
        frames_since_check = 0
        try:
            while not stop.is_set():
                # Whole transactions wait in the router for more (its linger), then go as one.
                frame = stream.read(timeout=router.linger() if router.pending else 0.1)
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
                        if carrier is not None:
                            carrier.lsn = parsed.wal_start
                        for out in feed(msg):
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
                        hb_conn.execute(heartbeat_sql)
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
            if router.timings is not None:
                router.timings.close()

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
        timings: CaptureTimings | None = None,
        primary_keys: dict[int, tuple[str, ...]] | None = None,
    ) -> None:
        self.producer = producer
        # Source table oid (pgoutput's relid) -> primary key; routing columns per relation.
        self.primary_keys = primary_keys or {}
        self._routing: dict[int, tuple[RelationInfo, tuple[str, ...]]] = {}
        self._clock = clock
        self.timings = timings
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

    def linger(self) -> float:
        """How long to wait for more transactions: until the group is GROUP_WAIT_S old (sent
        at a pause, each TPC-B transaction was a message, costing more than its rows)."""
        return max(0.0, self._group_since + GROUP_WAIT_S - self._clock()) if self._group else 0.0

    def flush(self) -> list[tuple[Sent, int | None]]:
        """Send the held transactions as one message."""
        if not self._group:
            return []
        value = group_envelopes(self._group)
        ack, self._group, self._group_bytes, self._group_ack = self._group_ack, [], 0, None
        return [(self._send(value, 0, self._group_since), ack)]

    def _send(self, value: bytes, partition: int, since: float | None = None) -> Sent:
        """Hand one message to the producer; ``since``: when its first transaction was ready
        (monotonic), for the stage timings."""
        sent = self.producer.send(self.topic, value, partition=partition)
        if self.timings is not None:
            held = self._clock() - since if since is not None else 0.0
            self.timings.sent(sent.future, time.time() - held)
        return sent

    def send(self, out: Output) -> list[tuple[Sent, int | None]]:
        env = out.envelope
        if self.partitions == 1:
            value = env.encode()
            if env.control is not None or not env.last or env.seq or len(value) > GROUP_BYTES:
                # Slices, heartbeats and markers travel alone, after what is held.
                return [
                    *self.flush(),
                    (self._send(value, 0), out.ack_lsn),
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
                for p, routed in self._route(env, ch):
                    pieces.setdefault(p, _copy(env, [])).changes.append(routed)
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
            result.append((self._send(piece.encode(), p), None))
        if result:
            result[-1] = (result[-1][0], out.ack_lsn)
        return result

    def _route(self, env: Envelope, ch: Change) -> list[tuple[int, Change]]:
        """The partition(s) of one change: every image of one row lands on one partition.

        A row's partition is read from its routing columns (the partition key where the table
        has it, else the row's identity: see :func:`routing_columns`), which every image
        carries: an insert's and an update's new row, a delete's old key. A key change moves
        the row from one identity to another: each identity's changes stay on their own
        partition, in order, so the change goes to both, as the two halves apply splits it into
        (the old key's removal on the old partition, the new row on the new one)."""
        rel = env.relations[ch.rel]
        columns = self._columns(ch.rel, rel)
        if ch.op == "delete":
            return [(self._hash(ch.old or {}, columns), ch)]
        new = ch.new or {}
        if ch.op != "update" or ch.old is None:
            return [(self._hash(new, columns), ch)]
        # An unchanged (TOASTed) column is absent from the new row: its value is the old one.
        before, after = self._hash(ch.old, columns), self._hash({**ch.old, **new}, columns)
        if before == after:
            return [(after, ch)]
        halves = []
        for p, part in ((before, "old"), (after, "new")):
            halves.append((p, Change(ch.op, ch.rel, ch.new, ch.old, ch.unchanged, part=part)))
        return halves

    def _columns(self, relid: int, rel: RelationInfo) -> tuple[str, ...]:
        found = self._routing.get(relid)
        if found is None or found[0] is not rel:
            pk = self.primary_keys.get(relid, ())
            found = self._routing[relid] = (rel, routing_columns(rel, pk, self.key_column))
        return found[1]

    def _hash(self, row: dict[str, str | None], columns: tuple[str, ...]) -> int:
        if len(columns) == 1:
            basis = str(row.get(columns[0]))
        else:
            basis = "|".join(str(row.get(k)) for k in columns)
        return zlib.crc32(basis.encode()) % self.partitions


def routing_columns(
    rel: RelationInfo, primary_key: tuple[str, ...], key_column: str
) -> tuple[str, ...]:
    """The columns a change of ``rel`` is routed by: the configured partition key where the
    table has that column (``check`` and ``prepare_source`` refuse one outside the row's
    identity), else the row's identity — its primary key when every image carries it (replica
    identity DEFAULT, FULL, or an index holding it), else the replica identity's columns."""
    if key_column and key_column in rel.columns:
        return (key_column,)
    if primary_key and set(primary_key) <= set(rel.key_columns):
        return primary_key
    return rel.key_columns


# Per mapped table: its columns, primary key and replica identity (the columns its old images
# hold: 'd' the primary key, 'f' every column, 'i' an index's, 'n' none).
IDENTITY_SQL = """
SELECT c.oid, n.nspname || '.' || c.relname, c.relreplident,
  ARRAY(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
        AND NOT a.attisdropped ORDER BY a.attnum),
  ARRAY(SELECT a.attname FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(attnum, ord),
        pg_attribute a WHERE i.indrelid = c.oid AND i.indisprimary AND a.attrelid = c.oid
        AND a.attnum = k.attnum ORDER BY k.ord),
  ARRAY(SELECT a.attname FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(attnum, ord),
        pg_attribute a WHERE i.indrelid = c.oid AND i.indisreplident AND a.attrelid = c.oid
        AND a.attnum = k.attnum ORDER BY k.ord)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname || '.' || c.relname = ANY(%s) AND c.relkind IN ('r', 'p')
"""


@dataclass(frozen=True)
class TableIdentity:
    oid: int
    table: str
    columns: tuple[str, ...]
    primary_key: tuple[str, ...]
    replica_identity: tuple[str, ...]  # the columns every old image carries

    @property
    def row_identity(self) -> tuple[str, ...]:
        """What identifies a row in every image: as :func:`routing_columns` reads it."""
        if self.primary_key and set(self.primary_key) <= set(self.replica_identity):
            return self.primary_key
        return self.replica_identity


def table_identities(conn: psycopg.Connection[Any], tables: list[str]) -> list[TableIdentity]:
    out = []
    for oid, name, ident, columns, pk, index in conn.execute(IDENTITY_SQL, (tables,)).fetchall():
        cols = tuple(columns)
        replica = {"d": tuple(pk), "f": cols, "i": tuple(index)}.get(ident, ())
        out.append(TableIdentity(int(oid), str(name), cols, tuple(pk), replica))
    return out


def partition_key_problems(
    identities: list[TableIdentity], key_column: str, partitions: int, *, unused: bool = False
) -> list[PreconditionError]:
    """A partition key must be part of every row's identity where its table has it: then a
    row's partition can change only with its key, which the router handles (a key change goes
    to both partitions, each applying its half). A partition key outside the identity could
    change under the same key — the row's changes on two partitions, applied in either order —
    and a delete's old image would not carry it."""
    if not key_column or partitions <= 1:
        return []
    having = [t for t in identities if key_column in t.columns]
    if unused and not having:  # a misspelt name (``check`` of the forward tables)
        return [
            PreconditionError(
                f"apply.partition_key {key_column!r} is a column of no mapped source table",
                hint="set it to a column of the tables to partition (a tenant id that is part "
                "of their primary key), or leave it empty to partition every table by its key",
            )
        ]
    problems = []
    for t in having:
        if key_column not in t.row_identity:
            ident = ", ".join(t.row_identity) or "none"
            problems.append(
                PreconditionError(
                    f"apply.partition_key {key_column!r} is not part of the key of {t.table} "
                    f"({ident}): a row could change it and move partition while its earlier "
                    "changes are still applied on the old one, and a delete does not carry it",
                    hint=f"make {key_column} part of the primary key of {t.table}, or leave "
                    "apply.partition_key empty (every table partitioned by its own key)",
                )
            )
    return problems


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
