"""``validate --fast``: which legacy keys changed since the last clean full validation.

The changes topic is the record of every legacy change (ARCHITECTURE.md section 3), so the keys
to re-check are the source keys of the change events written after the end offsets that the
last clean full validation noted *before* it read anything. Reading from there to the current end
finds every key touched since (a superset: a change the full run already saw may be seen again).
A truncate cannot be narrowed to keys: its source table is validated in full instead.

The range read is a plain assign/seek loop with kafka-python; it belongs beside
``connectors.kafka_io`` and should move there when that module grows a range reader.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from connectors import kafka_io
from connectors.envelope import Envelope, decode_envelopes
from connectors.pgtypes import TextLoader
from replicator.errors import DataError, KafkaUnavailable, PreconditionError
from replicator.validate.expect import SourceKey
from transforms.api import Direction

log = logging.getLogger(__name__)


@dataclass
class Touched:
    keys: dict[str, set[SourceKey]] = field(default_factory=dict)
    truncated: set[str] = field(default_factory=set)
    changes: int = 0
    end_offsets: dict[int, int] = field(default_factory=dict)


def end_offsets(bootstrap: str, topic: str, **security: Any) -> dict[int, int]:
    return kafka_io.end_offsets(bootstrap, topic, **security)


def touched_since(
    bootstrap: str,
    topic: str,
    direction: Direction,
    since: Mapping[int, int],
    timeout_s: float = 60.0,
    *,
    prior: Touched | None = None,
    **security: Any,
) -> Touched:
    """Source keys of every change in ``topic`` from ``since`` (partition -> offset) to now.

    ``prior``, read earlier from the same or an older ``since``, is extended with what arrived
    after it (its partitions known: no cluster-wide metadata request): a cutover reads most of
    the topic before the fence and only the tail in the write pause."""
    out = prior if prior is not None else Touched()
    start = prior.end_offsets if prior is not None and prior.end_offsets else since
    known = list(start) if prior is not None and prior.end_offsets else None
    loader = TextLoader()
    ends = read_range(
        bootstrap,
        topic,
        start,
        lambda v: _collect(v, direction, loader, out),
        timeout_s,
        partitions=known,
        **security,
    )
    out.end_offsets = {**out.end_offsets, **ends}
    return out


def read_range(
    bootstrap: str,
    topic: str,
    since: Mapping[int, int],
    collect: Callable[[bytes], None],
    timeout_s: float = 60.0,
    partitions: Iterable[int] | None = None,
    gap_hint: str = "run a full `replicator validate` (without --fast)",
    **security: Any,
) -> dict[int, int]:
    """Every message of ``topic`` from ``since`` (partition -> offset; absent: 0) to its current
    end, to ``collect``; returns the end offsets read up to. ``partitions``, when the caller
    knows them, spares the metadata request for every topic of the cluster. A range the log no
    longer holds is an error (``gap_hint`` says what to do), never skipped."""
    ends: dict[int, int] = {}
    with kafka_io.translated(f"reading {topic}"):
        consumer = kafka_io.consumer(bootstrap, **security)
        try:
            parts = (
                set(partitions)
                if partitions is not None
                else consumer.partitions_for_topic(topic) or set()
            )
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            if not tps:
                return ends
            ends = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
            starts = {tp.partition: off for tp, off in consumer.beginning_offsets(tps).items()}
            for p, start in starts.items():
                # Absent is offset 0, checked too: a rollback reads the whole reverse log.
                if since.get(p, 0) < start:
                    raise PreconditionError(
                        f"{topic} partition {p} no longer holds offset {since.get(p, 0)} "
                        f"(retention removed it; it starts at {start})",
                        hint=gap_hint,
                    )
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, max(since.get(tp.partition, 0), starts[tp.partition]))
            deadline = time.monotonic() + timeout_s
            while any(consumer.position(tp) < ends[tp.partition] for tp in tps):
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(f"reading {topic} did not finish in {timeout_s}s")
                for tp, records in consumer.poll(timeout_ms=500).items():
                    for r in records:
                        if r.offset < ends[tp.partition]:
                            collect(r.value)
        finally:
            consumer.close()
    return ends


def _collect(value: bytes, direction: Direction, loader: TextLoader, out: Touched) -> None:
    try:
        envs = decode_envelopes(value)
    except DataError:
        return  # undecodable: dead-lettered by apply, nothing to re-check by key
    for env in envs:
        _collect_envelope(env, direction, loader, out)


def _collect_envelope(
    env: Envelope, direction: Direction, loader: TextLoader, out: Touched
) -> None:
    if env.control is not None:
        return
    for change in env.changes:
        rel = env.relations.get(change.rel)
        if rel is None:
            continue
        t = direction.transform_for(rel.qualname)
        if t is None:
            continue
        if change.op == "truncate":
            out.truncated.add(t.source)
            continue
        out.changes += 1
        key_cols = t.source_key or rel.key_columns
        oids = dict(zip(rel.columns, rel.type_oids, strict=True))
        for image in (change.new, change.old):
            if not image:
                continue
            try:
                typed = loader.row(
                    {c: image[c] for c in key_cols}, key_cols, tuple(oids[c] for c in key_cols)
                )
            except (DataError, KeyError):
                # The image lacks (or cannot type) a column of the source key: a delete's or a
                # key change's old image holds only the replica identity, and a custom
                # source_key may lie outside it. Which row went is unknown, so the table
                # cannot be narrowed to keys: it is checked in full, as after a truncate.
                if t.source not in out.truncated:
                    log.warning(
                        "%s: the %s image of a %s does not hold its source key (%s): its "
                        "target tables are checked in full",
                        t.source,
                        "new" if image is change.new else "old",
                        change.op,
                        ", ".join(key_cols),
                    )
                out.truncated.add(t.source)
                continue
            out.keys.setdefault(t.source, set()).add(tuple(typed[c] for c in key_cols))
