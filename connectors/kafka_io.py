"""The Kafka edge: topics, an idempotent producer whose acknowledgements the capture tracks, and a
consumer that starts from offsets stored in the target (not Kafka's committed offsets).

kafka-python's exceptions are translated here (:func:`translate`), once: what kafka-python calls
retriable becomes :class:`replicator.errors.KafkaUnavailable` (retried), the rest an error the
operator must act on (an ACL, a message size, a topic setting).
When a client cannot even connect because of TLS or SASL, :mod:`connectors.kafka_probe` names
the cause (:class:`~replicator.errors.TLSFailed`, :class:`~replicator.errors.AuthenticationFailed`,
not retried). Every function takes the security options as keyword arguments
(``security_protocol``, ``ssl_cafile``, ``sasl_mechanism``… as kafka-python spells them) and
hands them to every client it makes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kafka import (
    ConsumerRebalanceListener,
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
)
from kafka import errors as kerr
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic, OffsetSpec
from kafka.errors import KafkaError, TopicAlreadyExistsError

from connectors.kafka_probe import security_error
from replicator.errors import (
    KafkaRefused,
    KafkaUnavailable,
    PermissionDenied,
    ReplicatorError,
    StateError,
)

log = logging.getLogger(__name__)

# kafka-python calls these not retriable, yet a new session cures them: the group or the
# producer's session moved on (a rebalance, a restarted broker), which the stage's retry redoes.
_SESSION_ERRORS: tuple[type[KafkaError], ...] = (
    kerr.BrokerNotAvailableError,
    kerr.CommitFailedError,
    kerr.RebalanceInProgressError,
    kerr.IllegalGenerationError,
    kerr.UnknownMemberIdError,
    kerr.MemberIdRequiredError,
    kerr.UnknownProducerIdError,
    kerr.OutOfOrderSequenceNumberError,
    kerr.InvalidProducerEpochError,
    kerr.UnrecognizedBrokerVersion,
)

# The ACL each authorization failure lacks, as kafka-acls names it.
_ACL_HINTS: dict[type[KafkaError], str] = {
    kerr.TopicAuthorizationFailedError: (
        "--operation Describe --operation Read --operation Write --operation Create "
        "--topic '<name>.' --resource-pattern-type prefixed"
    ),
    kerr.GroupAuthorizationFailedError: (
        "--operation Read --group '<name>-' --resource-pattern-type prefixed"
    ),
    kerr.ClusterAuthorizationFailedError: "--operation Describe --operation Create --cluster",
    kerr.TransactionalIdAuthorizationFailedError: (
        "--operation Write --operation Describe --transactional-id '*'"
    ),
}


def translate(exc: BaseException, *, what: str) -> ReplicatorError:
    """Map a kafka-python exception to the replicator's tree, honouring its ``retriable``."""
    if isinstance(exc, ReplicatorError):
        return exc
    name = type(exc).__name__
    text = f"Kafka {what}: {exc}" if name in str(exc) else f"Kafka {what}: {name}: {exc}"
    if isinstance(exc, kerr.AuthorizationError):
        acl = next((v for k, v in _ACL_HINTS.items() if isinstance(exc, k)), "the ACL it names")
        return PermissionDenied(
            text,
            hint=f"grant the replicator's principal the ACL: `kafka-acls.sh --add "
            f"--allow-principal User:<principal> {acl}`",
        )
    if isinstance(exc, kerr.MessageSizeTooLargeError | kerr.RecordListTooLargeError):
        return KafkaRefused(
            text,
            hint="a message is larger than Kafka accepts: set the topic's max.message.bytes "
            f"(and the broker's message.max.bytes) to at least {MAX_MESSAGE_BYTES}: "
            "`kafka-configs.sh --alter --entity-type topics --entity-name <topic> "
            f"--add-config max.message.bytes={MAX_MESSAGE_BYTES}`; or make messages smaller "
            "with backfill.chunk_rows and capture.slice_max_bytes",
        )
    if isinstance(exc, kerr.SaslAuthenticationFailedError | kerr.UnacceptableCredentialError):
        return KafkaRefused(text, hint="check the Kafka credentials")
    if getattr(exc, "retriable", False) or isinstance(exc, _SESSION_ERRORS):
        return KafkaUnavailable(
            text, hint="check kafka.bootstrap_servers and that the broker is running"
        )
    return KafkaRefused(
        text,
        hint="Kafka refused the request and a retry will not change its answer: "
        "see the broker's log for why",
    )


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    try:
        yield
    except KafkaError as exc:
        raise translate(exc, what=what) from exc


@contextlib.contextmanager
def connecting(bootstrap: str, security: dict[str, Any]) -> Iterator[None]:
    """Around a client's creation: a TLS or SASL failure is named with its fix, not retried."""
    try:
        yield
    except KafkaError as exc:
        cause = security_error(exc, bootstrap, security)
        if cause is not None:
            raise cause from exc
        translated = translate(exc, what=f"at {bootstrap} is unreachable")
        if isinstance(translated, KafkaUnavailable):
            translated.hint = (
                "check kafka.bootstrap_servers, that the brokers run, and that "
                "kafka.security_protocol matches their listener"
            )
        raise translated from exc


def admin(bootstrap: str, timeout_ms: int = 10_000, **security: Any) -> KafkaAdminClient:
    with connecting(bootstrap, security):
        return KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=max(timeout_ms, 5_000),
            client_id="replicator-admin",
            **security,
        )


def consumer(bootstrap: str, **security: Any) -> KafkaConsumer:
    """A plain consumer (no group, no auto-commit) for reading positions and records."""
    with connecting(bootstrap, security):
        return KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **security)


# The raw log is what a rollback's verification, a re-projection and an apply that fell behind
# read again: kept for the migration's life (the broker's default: 7 days), until teardown.
LOG_KEPT = {"retention.ms": "-1", "retention.bytes": "-1"}

# The largest message the producer sends (its max_request_size) and the topics accept. The
# broker's default (1 MiB) is smaller than a backfill chunk of wide rows or a transaction slice.
MAX_MESSAGE_BYTES = 16 << 20


def ensure_topics(
    bootstrap: str, topics: dict[str, int], replication_factor: int = 0, **security: Any
) -> None:
    """Create the topics that do not exist yet (name -> partitions), their log kept for good
    (:data:`LOG_KEPT`). Existing ones are kept as they are (see :func:`finite_retention`).

    ``replication_factor`` 0 picks one from the cluster: 3 copies of which 2 must acknowledge
    a write (``min.insync.replicas``, with the producer's acks=all) when there are three brokers
    or more, so one broker may die without losing an acknowledged message or stopping writes;
    a single copy on a smaller cluster."""
    client = admin(bootstrap, **security)
    try:
        with translated("topic creation failed"):
            existing = set(client.list_topics())
            rf = replication_factor or (3 if _brokers(client) >= 3 else 1)
            configs = {"max.message.bytes": str(MAX_MESSAGE_BYTES), **LOG_KEPT}
            if rf >= 3:
                configs["min.insync.replicas"] = "2"
            new = [
                NewTopic(
                    name,
                    num_partitions=parts,
                    replication_factor=rf,
                    topic_configs=configs,
                )
                for name, parts in topics.items()
                if name not in existing
            ]
            if new:
                with contextlib.suppress(TopicAlreadyExistsError):
                    client.create_topics(new)
    finally:
        client.close()


def _brokers(client: KafkaAdminClient) -> int:
    return len(client.describe_cluster().get("brokers", []))


def existing_topics(bootstrap: str, **security: Any) -> set[str]:
    client = admin(bootstrap, **security)
    try:
        with translated("listing topics failed"):
            return set(client.list_topics())
    finally:
        client.close()


def delete_topics(bootstrap: str, names: list[str], **security: Any) -> None:
    client = admin(bootstrap, **security)
    try:
        with translated("topic deletion failed"), contextlib.suppress(KafkaError):
            client.delete_topics(names)
    finally:
        client.close()


def finite_retention(bootstrap: str, topics: list[str], **security: Any) -> dict[str, str]:
    """Those of ``topics`` that exist and delete their log after a time or a size: topic ->
    the settings that do (``retention.ms=604800000 (7.0 days)``)."""
    client = admin(bootstrap, **security)
    try:
        with translated("topic configuration query failed"):
            present = sorted(set(topics) & set(client.list_topics()))
            wanted = [
                ConfigResource(ConfigResourceType.TOPIC, t, dict.fromkeys(LOG_KEPT))
                for t in present
            ]
            described = client.describe_configs(wanted, config_filter="all") if present else {}
    finally:
        client.close()
    out: dict[str, str] = {}
    for topic, configs in described.get("topic", {}).items():
        limits = {k: int(v["value"]) for k, v in configs.items() if k in LOG_KEPT and v["value"]}
        finite = [
            f"{k}={n} ({n / 86_400_000:.1f} days)" if k == "retention.ms" else f"{k}={n}"
            for k, n in sorted(limits.items(), reverse=True)
            if n >= 0
        ]
        if finite:
            out[topic] = ", ".join(finite)
    return out


def end_offsets(bootstrap: str, topic: str, **security: Any) -> dict[int, int]:
    """partition -> the offset the next message will take; {} when the topic does not exist.

    Asked through the admin client: a new consumer waits out its metadata backoff (100 ms)
    before the first metadata request, which was most of a small validation's overhead."""
    return _offsets(bootstrap, topic, OffsetSpec.LATEST, security)


def beginning_offsets(bootstrap: str, topic: str, **security: Any) -> dict[int, int]:
    """partition -> the first offset the log still holds (above 0 once retention deleted some);
    {} when the topic does not exist."""
    return _offsets(bootstrap, topic, OffsetSpec.EARLIEST, security)


def _offsets(bootstrap: str, topic: str, spec: Any, security: dict[str, Any]) -> dict[int, int]:
    client = admin(bootstrap, **security)
    try:
        with translated("offset query failed"):
            described = client.describe_topics([topic])
            parts = [
                p["partition_index"]
                for t in described
                if t.get("error_code", 0) == 0
                for p in t.get("partitions", [])
            ]
            if not parts:
                return {}
            got = client.list_partition_offsets({TopicPartition(topic, p): spec for p in parts})
            return {tp.partition: int(o.offset) for tp, o in got.items()}
    finally:
        client.close()


class OffsetReader:
    """:func:`end_offsets` for a caller asking every second (the web page's sampler): one
    long-lived consumer instead of a new one, its bootstrap and a metadata request for every
    topic of the cluster each time; a topic's partitions are looked up again after
    ``partitions_ttl_s``. Not thread-safe: one caller. A failure closes the consumer, so the
    next call connects afresh."""

    def __init__(self, partitions_ttl_s: float = 30.0, **security: Any) -> None:
        self._ttl = partitions_ttl_s
        self._security = security
        self._consumer: KafkaConsumer | None = None
        self._bootstrap = ""
        self._partitions: dict[str, tuple[float, list[int]]] = {}

    def __call__(self, bootstrap: str, topic: str) -> dict[int, int]:
        try:
            with translated(f"at {bootstrap}: offset query failed"):
                if self._consumer is None or bootstrap != self._bootstrap:
                    self.close()
                    self._consumer = consumer(bootstrap, **self._security)
                    self._bootstrap = bootstrap
                known = self._partitions.get(topic)
                if known is None or time.monotonic() - known[0] > self._ttl:
                    parts = sorted(self._consumer.partitions_for_topic(topic) or ())
                    known = (time.monotonic(), parts)
                    self._partitions[topic] = known
                tps = [TopicPartition(topic, p) for p in known[1]]
                ends = self._consumer.end_offsets(tps) if tps else {}
                return {tp.partition: off for tp, off in ends.items()}
        except ReplicatorError:
            self.close()
            raise

    def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close()
        self._consumer = None
        self._partitions.clear()


def read_topic(
    bootstrap: str, topic: str, timeout_s: float = 60.0, **security: Any
) -> list[tuple[int, int, bytes]]:
    """Every record of ``topic`` now, as (partition, offset, value): for small topics (DLQ).

    Reads until every partition's position reaches the end it had at the start (a slow poll
    does not cut the list short); ``KafkaUnavailable`` if that takes over ``timeout_s``."""
    ends = end_offsets(bootstrap, topic, **security)
    reader = consumer(bootstrap, **security)
    out: list[tuple[int, int, bytes]] = []
    try:
        with translated("read failed"):
            tps = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
            if not tps:
                return out
            reader.assign(tps)
            for tp in tps:
                reader.seek_to_beginning(tp)
            deadline = time.monotonic() + timeout_s
            while any(reader.position(tp) < ends[tp.partition] for tp in tps):
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(f"reading {topic} did not finish in {timeout_s:.0f}s")
                for tp, records in reader.poll(timeout_ms=500).items():
                    for r in records:
                        if r.offset < ends[tp.partition]:
                            out.append((tp.partition, r.offset, r.value))
    finally:
        reader.close()
    return sorted(out)


def read_at(
    bootstrap: str, topic: str, partition: int, offset: int, **security: Any
) -> bytes | None:
    """The record at one position, or None when it is gone (retention) or never existed."""
    reader = consumer(bootstrap, **security)
    try:
        with translated("read failed"):
            tp = TopicPartition(topic, partition)
            reader.assign([tp])
            reader.seek(tp, offset)
            for _ in range(5):
                for records in reader.poll(timeout_ms=2_000).values():
                    for r in records:
                        if r.offset == offset:
                            return bytes(r.value)
                        if r.offset > offset:
                            return None
    finally:
        reader.close()
    return None


def partition_count(bootstrap: str, topic: str, **security: Any) -> int:
    return max(1, len(end_offsets(bootstrap, topic, **security)))


@dataclass
class Sent:
    """A message handed to the producer; ``acked`` turns true when Kafka has it (acks=all)."""

    future: Any
    size: int = 0

    @property
    def done(self) -> bool:
        return bool(self.future.is_done)

    def wait(self, timeout: float) -> None:
        """Block until Kafka answers for this message (or ``timeout`` passes)."""
        with contextlib.suppress(KafkaError):
            self.future.get(timeout=timeout)

    def check(self) -> None:
        """Raise if Kafka refused the message."""
        if self.future.is_done and self.future.failed():
            exc = self.future.exception
            raise translate(exc, what="did not acknowledge a message") from exc


class Producer:
    """acks=all, idempotent, compressed. One instance per capture process."""

    def __init__(
        self,
        bootstrap: str,
        *,
        compression: str = "lz4",
        timeout_ms: int = 30_000,
        **security: Any,
    ):
        with connecting(bootstrap, security):
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                acks="all",
                enable_idempotence=True,
                compression_type=None if compression in ("", "none") else compression,
                # No linger: the capture already sends a backlog of small transactions as one
                # message and a large one in slices of their own, so waiting for more only
                # delayed the last message of every pause (5 ms of each change's lag).
                linger_ms=0,
                batch_size=1 << 20,
                max_request_size=MAX_MESSAGE_BYTES,
                request_timeout_ms=timeout_ms,
                # Retries are unbounded within delivery_timeout: ordering holds (idempotence).
                delivery_timeout_ms=max(120_000, timeout_ms * 2),
                client_id="replicator-capture",
                **security,
            )
        self._partitions: dict[str, int] = {}

    def partitions(self, topic: str) -> int:
        if topic not in self._partitions:
            with translated("metadata request failed"):
                parts = self._producer.partitions_for(topic)
            self._partitions[topic] = len(parts)
        return self._partitions[topic]

    def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, partition: int | None = None
    ) -> Sent:
        with translated("send failed"):
            return Sent(
                self._producer.send(topic, value=value, key=key, partition=partition), len(value)
            )

    def flush(self, timeout: float | None = None) -> None:
        with translated("flush failed"):
            self._producer.flush(timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._producer.close(timeout=5)


class Consumer:
    """Reads one topic from positions the caller provides (stored beside the applied rows).

    With ``group`` set, partitions are balanced across the workers of the group; on every
    assignment ``seek_to`` is asked where each partition resumes.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        group: str,
        seek_to: Callable[[list[int]], dict[int, int]],
        gap_hint: str = "",
        max_poll_records: int = 2_000,
        **security: Any,
    ) -> None:
        self.topic = topic
        self._seek_to = seek_to
        self._gap_hint = gap_hint or "the messages are gone: re-sync the target"
        with connecting(bootstrap, security):
            self._consumer = KafkaConsumer(
                bootstrap_servers=bootstrap,
                group_id=group,
                enable_auto_commit=False,
                # Never jump: "earliest" moved a position that retention had deleted under it
                # to the log's new beginning without a word, skipping what was deleted.
                auto_offset_reset="none",
                max_poll_records=max_poll_records,
                fetch_max_bytes=64 << 20,
                max_partition_fetch_bytes=16 << 20,
                isolation_level="read_committed",
                # kafka-python's poll sleeps retry_backoff_ms whenever it finds no fetch in
                # flight, and now and then it finds none just as the last one completes: at the
                # default 100 ms, one message in thirty of a 100-a-second stream waited ~100 ms
                # for apply (bench.live's stage timings: fetch p99 100 ms, 9 ms at 10).
                retry_backoff_ms=10,
                # A killed worker's partitions move on after 6 s (the broker's minimum), not 45.
                session_timeout_ms=6_000,
                heartbeat_interval_ms=1_500,
                # A topic created a moment ago may be missing from the first metadata answer;
                # the group gets its partitions at the next refresh, so make that soon.
                metadata_max_age_ms=5_000,
                client_id="replicator-apply",
                **security,
            )
            self._consumer.subscribe([topic], listener=_Rebalance(self))
        self.assigned: set[int] = set()
        self._assign_error: ReplicatorError | None = None

    @property
    def coordinated(self) -> bool:
        """Whether the group's coordinator (a broker) was reachable at the last poll. Without
        it the assignment is stale and nothing arrives; kafka-python says so only through its
        coordinator's id, which its poll clears when the connection is lost."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        return coordinator is None or getattr(coordinator, "coordinator_id", 0) is not None

    def _on_assigned(self, partitions: list[int]) -> None:
        # No stored position: 0, where a new log begins. One the log no longer holds is named
        # by poll (no Kafka request may block this callback: it runs on the client's IO thread).
        self.assigned = set(partitions)
        positions = self._seek_to(partitions)
        for p in partitions:
            self._consumer.seek(TopicPartition(self.topic, p), positions.get(p, 0))

    def _outside(self, lost: kerr.OffsetOutOfRangeError) -> StateError:
        """A position the log does not hold: deleted (retention) before apply read it, or past
        the end of a topic created again."""
        (tp, at), *_ = dict(lost.args[0]).items()
        begins = self._consumer.beginning_offsets([tp])[tp]
        where = f"{self.topic} partition {tp.partition}: apply's stored position is offset {at}"
        if at >= begins:
            return StateError(
                f"{where}, past the log's end: the topic was created again",
                hint="the stored positions (replicator.offsets) belong to the old log",
            )
        return StateError(
            f"{where}, but the log now begins at offset {begins}: {begins - at} message(s) "
            "were deleted (retention) before they were applied, and going on would skip them",
            hint=self._gap_hint,
        )

    def reseek(self) -> None:
        """Go back to the stored positions of every assigned partition."""
        self._on_assigned(sorted(self.assigned))

    def poll(self, timeout_ms: int) -> list[tuple[int, int, bytes]]:
        """(partition, offset, value) in offset order per partition."""
        with translated("poll failed"):
            try:
                batch = self._consumer.poll(timeout_ms=timeout_ms)
            except kerr.OffsetOutOfRangeError as lost:  # auto_offset_reset="none"
                raise self._outside(lost) from lost
            except kerr.NoOffsetForPartitionError:
                if self._assign_error is None:
                    raise
                batch = {}  # the assignment failed before its seeks: its own error follows
        if self._assign_error is not None:
            exc, self._assign_error = self._assign_error, None
            raise exc
        out: list[tuple[int, int, bytes]] = []
        for tp, records in batch.items():
            out.extend((tp.partition, r.offset, r.value) for r in records)
        return out

    def commit_advisory(self, offsets: dict[int, int]) -> None:
        """Kafka's committed offsets are advisory (lag display); the truth is in the target."""
        from kafka.structs import OffsetAndMetadata

        # Asynchronous: waiting for the coordinator's answer held back the next poll (and the
        # next transaction's apply) by a broker round trip per commit.
        with contextlib.suppress(KafkaError):
            self._consumer.commit_async(
                {
                    TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1)
                    for p, o in offsets.items()
                }
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._consumer.close(autocommit=False)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seeks to the stored positions whenever partitions are assigned."""

    def __init__(self, owner: Consumer) -> None:
        self._owner = owner

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._owner.assigned = set()

    def on_partitions_assigned(self, assigned: Any) -> None:
        try:
            self._owner._on_assigned([tp.partition for tp in assigned])
        except ReplicatorError as exc:
            # Raised from poll() instead: kafka-python would log it with a stack trace and go
            # on reading from positions that were never set.
            self._owner._assign_error = exc
