"""Prometheus metrics of long-running processes (``run``, ``capture``, ``apply``), served by
:mod:`replicator.status.endpoints` beside the health probes.

Collected at scrape time from the same :func:`replicator.status.overview.collect` that ``status`` uses,
so the numbers on a dashboard and in the terminal are the same numbers. Series (see
``docs/status.md``):

- ``replicator_end_to_end_lag_seconds`` — how long the oldest change not yet applied has
  waited, from the data (:mod:`replicator.status.lag`)
- ``replicator_source_slot_lag_bytes`` / ``replicator_source_retained_wal_bytes``
- ``replicator_kafka_consumer_lag_messages{partition}`` — changes not applied yet
- ``replicator_apply_last_commit_age_seconds``
- ``replicator_apply_rows_total{table}`` — rows applied per target table (counter)
- ``replicator_dlq_messages`` — dead letters neither replayed nor purged
- ``replicator_schema_changes_total{verdict}`` — schema changes seen (replicator.drift)
- ``replicator_backfill_complete`` / ``replicator_ready`` — 1 or 0
- ``replicator_part_up{part}`` — 0 for a part that could not be reached
- ``replicator_verified_through_age_seconds{table}`` — age of the table's verified-through
  point (continuous validation); ``replicator_verified_different{table}`` — 1 while its
  latest check found it different
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from replicator.config import Settings
from replicator.status.overview import collect


class StatusCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.s = settings

    def collect(self) -> Iterator[Any]:
        st = collect(self.s)
        labels = {"pipeline": st.pipeline, "direction": st.direction}
        names, values = list(labels), list(labels.values())

        def gauge(name: str, doc: str, value: float | None) -> Iterator[Any]:
            if value is not None:
                g = GaugeMetricFamily(name, doc, labels=names)
                g.add_metric(values, float(value))
                yield g

        tgt, src, kafka = st.target, st.source, st.kafka
        yield from gauge(
            "replicator_end_to_end_lag_seconds",
            "Seconds the oldest source change not yet applied on the target has waited",
            tgt.end_to_end_lag_s if tgt else None,
        )
        yield from gauge(
            "replicator_source_slot_lag_bytes",
            "WAL written but not confirmed by the slot",
            src.lag_bytes if src else None,
        )
        yield from gauge(
            "replicator_source_retained_wal_bytes",
            "WAL the slot keeps on the source",
            src.retained_wal_bytes if src else None,
        )
        yield from gauge(
            "replicator_apply_last_commit_age_seconds",
            "Seconds since apply last committed",
            tgt.seconds_since_last_apply if tgt else None,
        )
        yield from gauge(
            "replicator_dlq_messages",
            "Dead letters neither replayed nor purged",
            kafka.dlq_messages if kafka else None,
        )
        if kafka is not None:
            g = GaugeMetricFamily(
                "replicator_kafka_consumer_lag_messages",
                "Messages of the changes topic not applied yet",
                labels=[*names, "partition"],
            )
            for pl in kafka.partitions:
                g.add_metric([*values, str(pl.partition)], float(pl.behind or 0))
            yield g
        if tgt is not None:
            c = CounterMetricFamily(
                "replicator_apply_rows", "Rows applied per target table", labels=[*names, "table"]
            )
            for table, n in tgt.rows_applied.items():
                c.add_metric([*values, table], float(n))
            yield c
            age = GaugeMetricFamily(
                "replicator_verified_through_age_seconds",
                "Age of the table's verified-through point (continuous validation)",
                labels=[*names, "table"],
            )
            diff = GaugeMetricFamily(
                "replicator_verified_different",
                "1 while continuous validation finds the table different",
                labels=[*names, "table"],
            )
            for table, p in tgt.verified.items():
                if p["age_s"] is not None:
                    age.add_metric([*values, table], float(p["age_s"]))
                diff.add_metric([*values, table], 1.0 if p["outcome"] == "different" else 0.0)
            if tgt.verified:
                yield age
                yield diff
            sc = CounterMetricFamily(
                "replicator_schema_changes",
                "Schema changes seen on the source, per verdict (docs/drift.md)",
                labels=[*names, "verdict"],
            )
            for verdict, n in (tgt.schema_changes.get("counts") or {}).items():
                sc.add_metric([*values, verdict], float(n))
            yield sc
            done = tgt.backfill is not None and tgt.backfill["status"] == "applied"
            yield from gauge("replicator_backfill_complete", "1 when the backfill is applied", done)
        yield from gauge("replicator_ready", "1 when ready for cutover", st.ready)
        up = GaugeMetricFamily(
            "replicator_part_up", "0 for a part status could not reach", labels=[*names, "part"]
        )
        down = {u["part"] for u in st.unreachable}
        for part in ("source", "kafka", "target"):
            up.add_metric([*values, part], 0.0 if part in down else 1.0)
        yield up
