"""The Kafka round trip of a backfill, measured on its own (issue 34 asks where the time goes).

After a benchmark's backfill, its snapshot topic holds every chunk the reader sent. Here the
same bytes go through Kafka again with nothing else running: produced into a topic of their own
by our producer (acks=all, idempotent, the pipeline's compression, flushed) and read back by a
consumer from the beginning. The two times are what the trip alone costs on this machine; in a
backfill they overlap the reads and the loads, so their sum is an upper bound of Kafka's share
of the wall time, and their CPU competes with everything else on a small machine.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from connectors.kafka_io import Producer, delete_topics, ensure_topics, read_topic
from replicator.config import Settings


def kafka_round_trip(s: Settings, direction: str = "fwd") -> dict[str, Any]:
    """Times producing, then consuming, a copy of ``direction``'s snapshot topic."""
    k = s.kafka
    security = k.client_options()
    snapshot = s.topic(direction, "snapshot")
    cpu0 = os.times()
    started = time.monotonic()
    values = [v for _, _, v in read_topic(k.bootstrap_servers, snapshot, 600.0, **security)]
    first_read_s = time.monotonic() - started
    size = sum(len(v) for v in values)
    scratch = f"{s.prefix}.bench-trip-{uuid.uuid4().hex[:8]}"
    ensure_topics(k.bootstrap_servers, {scratch: 1}, **security)
    try:
        producer = Producer(k.bootstrap_servers, compression=k.compression, **security)
        try:
            cpu1, started = os.times(), time.monotonic()
            for v in values:
                producer.send(scratch, v, partition=0)
            producer.flush()
            produce_s, cpu2 = time.monotonic() - started, os.times()
        finally:
            producer.close()
        started = time.monotonic()
        back = read_topic(k.bootstrap_servers, scratch, 600.0, **security)
        consume_s, cpu3 = time.monotonic() - started, os.times()
    finally:
        delete_topics(k.bootstrap_servers, [scratch], **security)
    if len(back) != len(values):
        raise SystemExit(f"the round trip lost messages: {len(values)} sent, {len(back)} read")
    return {
        "kafka_messages": len(values),
        "kafka_mb": round(size / 1e6, 1),
        "kafka_produce_s": round(produce_s, 3),
        "kafka_consume_s": round(consume_s, 3),
        "kafka_round_trip_s": round(produce_s + consume_s, 3),
        "kafka_first_read_s": round(first_read_s, 3),
        # This process's CPU only (the client side); the broker's shows in the run's samples.
        "kafka_client_cpu_s": round(_cpu(cpu1, cpu2) + _cpu(cpu2, cpu3), 3),
        "kafka_read_cpu_s": round(_cpu(cpu0, cpu1), 3),
    }


def _cpu(a: os.times_result, b: os.times_result) -> float:
    return (b.user - a.user) + (b.system - a.system)
