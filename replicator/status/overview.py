"""What ops decide on: lag at every stage, throughput, DLQ, backfill, direction, and a verdict.

Every part is collected on its own: an unreachable target still leaves the source and Kafka
parts, and the missing part is named with its fix. The verdict is a pure function of the
collected :class:`Status`, so it is tested without servers. ``--json`` is ``Status.to_json()``,
documented in ``docs/status.md`` and ``docs/status.schema.json`` (``version`` changes only on
breaking changes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from connectors import kafka_io, pg
from connectors.envelope import parse_lsn
from replicator.config import DatabaseSettings, Settings
from replicator.errors import ReplicatorError

SCHEMA_VERSION = 1
# Retained WAL above this puts the source's disk at risk: the verdict says so.
WAL_DANGER_BYTES = 1 << 30
# A validation older than this no longer vouches for the data.
VALIDATION_MAX_AGE_S = 24 * 3600.0


@dataclass
class SourceStatus:
    slot: str
    slot_exists: bool = False
    slot_active: bool = False
    wal_status: str | None = None
    lag_bytes: int | None = None  # WAL written but not yet confirmed (in Kafka)
    retained_wal_bytes: int | None = None  # WAL the slot keeps on the source's disk


@dataclass
class PartitionLag:
    partition: int
    end_offset: int
    applied_offset: int | None
    behind: int | None


@dataclass
class KafkaStatus:
    topic: str
    partitions: list[PartitionLag] = field(default_factory=list)
    messages_behind: int | None = None
    dlq_messages: int | None = None  # letters neither replayed nor purged
    # The pipeline's topics that delete their log (retention): topic -> the settings that do.
    finite_retention: dict[str, str] = field(default_factory=dict)


@dataclass
class TargetStatus:
    desired_direction: str | None = None
    observed_direction: str | None = None
    end_to_end_lag_s: float | None = None
    last_heartbeat_latency_s: float | None = None
    seconds_since_last_apply: float | None = None
    rows_applied: dict[str, int] = field(default_factory=dict)
    backfill: dict[str, Any] | None = None  # latest: id, status, rows_total, rows_applied
    validation: dict[str, Any] | None = None  # latest: outcome, age_s, differences


@dataclass
class Status:
    pipeline: str
    direction: str
    collected_at: str
    source: SourceStatus | None
    kafka: KafkaStatus | None
    target: TargetStatus | None
    unreachable: list[dict[str, str]] = field(default_factory=list)  # part, message, hint
    ready: bool = False
    reasons: list[str] = field(default_factory=list)
    # A cutover or rollback stopped past its point of no return (replicator.cutover.decision).
    switching: dict[str, str] | None = None
    # Which database takes the application's writes, from both sides' fences and decisions
    # (replicator.cutover.recover): writer "legacy", "target" or None, and what is wrong.
    writer: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": SCHEMA_VERSION, **asdict(self)}


def sides(s: Settings, direction: str) -> tuple[DatabaseSettings, DatabaseSettings]:
    """(source, target) of a direction: after a cutover the target is the source."""
    return (s.source, s.target) if direction == "fwd" else (s.target, s.source)


EndOffsets = Callable[[str, str], dict[int, int]]


def collect(
    s: Settings,
    *,
    max_lag_s: float | None = None,
    end_offsets: EndOffsets | None = None,
    sessions: pg.Sessions | None = None,
) -> Status:
    """``end_offsets`` reads a topic's end offsets (default: a new consumer each call; a
    caller collecting every second passes a :class:`connectors.kafka_io.OffsetReader`), and
    ``sessions`` holds the database sessions (default: opened for this call, one per server;
    such a caller keeps its own open between calls)."""
    if sessions is None:
        own = pg.Sessions()
        try:
            return collect(s, max_lag_s=max_lag_s, end_offsets=end_offsets, sessions=own)
        finally:
            own.close()
    ss = sessions
    unreachable: list[dict[str, str]] = []
    security = s.kafka.client_options()
    ends = end_offsets or (lambda b, t: kafka_io.end_offsets(b, t, **security))

    def attempt(part: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ReplicatorError as exc:
            unreachable.append({"part": part, "message": exc.message, "hint": exc.hint or ""})
            return None

    direction = attempt("direction", _direction, ss, s) or "fwd"
    src_db, tgt_db = sides(s, direction)
    source = attempt("source", _source, ss, s, src_db, direction)
    offsets = attempt("target", _applied_offsets, ss, tgt_db, s.topic(direction, "changes"))
    kafka = attempt("kafka", _kafka, s, direction, offsets or {}, ends)
    target = (
        attempt("target", _target, ss, s, tgt_db, direction, kafka) if offsets is not None else None
    )
    if kafka is not None and target is not None:
        kafka.dlq_messages = attempt("kafka", _dlq_pending, ss, s, tgt_db, direction, ends)
    if kafka is not None:
        kafka.finite_retention = attempt("kafka", _finite_retention, s) or {}
    st = Status(
        pipeline=s.name,
        direction=direction,
        collected_at=dt.datetime.now(dt.UTC).isoformat(),
        source=source,
        kafka=kafka,
        target=target,
        unreachable=unreachable,
    )
    pending = attempt("direction", _switching, ss, s)
    st.switching = pending.to_json() if pending is not None else None
    writer = attempt("writer", _writer, ss, s)
    st.writer = writer.to_json() if writer is not None else None
    st.ready, st.reasons = verdict(st, s.cutover.max_lag_s if max_lag_s is None else max_lag_s)
    return st


def verdict(st: Status, max_lag_s: float) -> tuple[bool, list[str]]:
    """Ready for cutover (or rollback), or every reason why not."""
    reasons = [f"{u['part']} unreachable: {u['message']}" for u in st.unreachable]
    if st.switching:
        from replicator.cutover.decision import rerun

        sw = st.switching
        reasons.append(
            f"a {sw['action']} (run {sw['run_id']}) stopped after its point of no return: the old"
            f" writer stays fenced and the application may already write to the new one; run"
            f" {rerun(sw['action'])} again to finish it"
        )
    elif st.writer and st.writer.get("problems"):
        # A fence (or revoked privileges) without a decision, a lifted fence left behind.
        reasons.extend(st.writer["problems"])
    src, kafka, tgt = st.source, st.kafka, st.target
    if src is not None:
        if not src.slot_exists:
            reasons.append(f"replication slot {src.slot} does not exist")
        elif not src.slot_active:
            reasons.append(f"replication slot {src.slot} has no capture attached")
        if src.wal_status in ("unreserved", "lost"):
            reasons.append(f"slot {src.slot} is in danger: wal_status={src.wal_status}")
        if (src.retained_wal_bytes or 0) > WAL_DANGER_BYTES:
            reasons.append(f"slot {src.slot} retains {src.retained_wal_bytes} bytes of WAL")
    if tgt is not None:
        lag = tgt.end_to_end_lag_s
        if lag is None:
            reasons.append("end-to-end lag unknown: no heartbeat applied yet")
        elif lag > max_lag_s:
            reasons.append(f"end-to-end lag {lag:.1f} s is over the threshold {max_lag_s:g} s")
        bf = tgt.backfill
        if bf is None:
            reasons.append("no backfill has run")
        elif bf["status"] != "applied":
            reasons.append(f"backfill {bf['id']} is incomplete ({bf['status']})")
        val = tgt.validation
        if val is None:
            reasons.append("no validation has run (`replicator validate`)")
        elif val["outcome"] != "clean":
            reasons.append(f"last validation was {val['outcome']}")
        elif (val.get("age_s") or 0) > VALIDATION_MAX_AGE_S:
            reasons.append(f"last validation is stale ({val['age_s'] / 3600:.0f} h old)")
    if kafka is not None and kafka.dlq_messages:
        reasons.append(f"{kafka.dlq_messages} dead letter(s) in {st.pipeline}'s DLQ")
    for topic, how in (kafka.finite_retention if kafka is not None else {}).items():
        reasons.append(
            f"Kafka topic {topic} deletes its log ({how}); a rollback replays it "
            "(`replicator check` prints the fix)"
        )
    return not reasons, reasons


# -- the parts -------------------------------------------------------------------------------


def _session(
    ss: pg.Sessions, db: DatabaseSettings
) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
    return ss.session(db.conninfo(), db.masked())


def _direction(ss: pg.Sessions, s: Settings) -> str:
    """The observed direction, as stored beside the forward apply's rows (on the target)."""
    with _session(ss, s.target) as conn:
        row = (
            conn.execute(
                "SELECT observed_direction FROM replicator.pipeline WHERE name = %s", (s.name,)
            ).fetchone()
            if _has_state(conn)
            else None
        )
    return str(row[0]) if row else "fwd"


def _switching(ss: pg.Sessions, s: Settings) -> Any:
    """A switch's decision left on either database (the target's first)."""
    from replicator.cutover.decision import read

    for db in (s.target, s.source):
        try:
            with _session(ss, db) as conn:
                found = read(conn, s.name)
        except ReplicatorError:
            continue  # an unreachable side is reported by its own part
        if found is not None:
            return found
    return None


def _writer(ss: pg.Sessions, s: Settings) -> Any:
    """Both sides' fences and decisions: which database is the writer."""
    from replicator.cutover.recover import observe

    with _session(ss, s.source) as legacy, _session(ss, s.target) as target:
        return observe(legacy, target, s.name)


def _has_state(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('replicator.offsets') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _source(ss: pg.Sessions, s: Settings, db: DatabaseSettings, direction: str) -> SourceStatus:
    out = SourceStatus(slot=s.slot(direction))
    with _session(ss, db) as conn:
        row = conn.execute(
            "SELECT active, wal_status, pg_current_wal_lsn()::text, confirmed_flush_lsn::text,"
            " restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (out.slot,),
        ).fetchone()
    if row is None:
        return out
    out.slot_exists, out.slot_active, out.wal_status = True, bool(row[0]), row[1]
    current = parse_lsn(row[2])
    if row[3]:
        out.lag_bytes = max(0, current - parse_lsn(row[3]))
    if row[4]:
        out.retained_wal_bytes = max(0, current - parse_lsn(row[4]))
    return out


def _applied_offsets(ss: pg.Sessions, db: DatabaseSettings, topic: str) -> dict[int, int]:
    with _session(ss, db) as conn:
        if not _has_state(conn):
            return {}
        rows = conn.execute(
            "SELECT partition, next_offset FROM replicator.offsets WHERE topic = %s", (topic,)
        ).fetchall()
    return {int(p): int(o) for p, o in rows}


def _kafka(
    s: Settings, direction: str, applied: dict[int, int], end_offsets: EndOffsets
) -> KafkaStatus:
    topic = s.topic(direction, "changes")
    ends = end_offsets(s.kafka.bootstrap_servers, topic)
    out = KafkaStatus(topic=topic)
    for p, end in sorted(ends.items()):
        done = applied.get(p)
        out.partitions.append(PartitionLag(p, end, done, end - (done or 0)))
    out.messages_behind = sum(pl.behind or 0 for pl in out.partitions)
    return out


# Topic settings change rarely; the web page collects every second.
RETENTION_TTL_S = 60.0
_retention_seen: dict[tuple[str, ...], tuple[float, dict[str, str]]] = {}


def _finite_retention(s: Settings) -> dict[str, str]:
    topics = (s.kafka.bootstrap_servers, *s.topics("fwd"), *s.topics("rev"))
    seen = _retention_seen.get(topics)
    if seen is None or time.monotonic() - seen[0] > RETENTION_TTL_S:
        found = kafka_io.finite_retention(
            s.kafka.bootstrap_servers, list(topics[1:]), **s.kafka.client_options()
        )
        seen = _retention_seen[topics] = (time.monotonic(), found)
    return seen[1]


def _dlq_pending(
    ss: pg.Sessions, s: Settings, db: DatabaseSettings, direction: str, end_offsets: EndOffsets
) -> int:
    from replicator.dlq.letters import pending_count

    topic = s.topic(direction, "dlq")
    ends = end_offsets(s.kafka.bootstrap_servers, topic)
    with _session(ss, db) as conn:
        return pending_count(conn, topic, ends)


def _target(
    ss: pg.Sessions, s: Settings, db: DatabaseSettings, direction: str, kafka: KafkaStatus | None
) -> TargetStatus:
    from replicator.validate.report import last_validation

    out = TargetStatus()
    topic = s.topic(direction, "changes")
    with _session(ss, db) as conn:
        if not _has_state(conn):
            return out
        row = conn.execute(
            "SELECT desired_direction, observed_direction FROM replicator.pipeline WHERE name = %s",
            (s.name,),
        ).fetchone()
        if row:
            out.desired_direction, out.observed_direction = row
        hb = conn.execute(
            "SELECT extract(epoch FROM applied_at - emitted_at)::float8,"
            " extract(epoch FROM clock_timestamp() - emitted_at)::float8"
            " FROM replicator.heartbeats WHERE topic = %s ORDER BY emitted_at DESC LIMIT 1",
            (topic,),
        ).fetchone()
        if hb:
            out.last_heartbeat_latency_s = max(0.0, float(hb[0]))
            caught_up = kafka is not None and not kafka.messages_behind
            # Caught up: the lag is what the last heartbeat took from legacy to the target.
            # Behind: the newest applied data is this old (grows while apply is stopped).
            out.end_to_end_lag_s = out.last_heartbeat_latency_s if caught_up else float(hb[1])
        last = conn.execute(
            "SELECT extract(epoch FROM clock_timestamp() - max(updated_at))::float8"
            " FROM replicator.offsets WHERE topic = %s",
            (topic,),
        ).fetchone()
        out.seconds_since_last_apply = float(last[0]) if last and last[0] is not None else None
        out.rows_applied = {
            str(t): int(n)
            for t, n in conn.execute(
                "SELECT table_name, sum(rows_applied) FROM replicator.table_stats"
                " GROUP BY table_name ORDER BY table_name"
            ).fetchall()
        }
        bf = conn.execute(
            "SELECT b.id, b.status, coalesce(sum(p.rows_total), 0), coalesce(sum(p.rows_applied), 0)"
            " FROM replicator.backfill b LEFT JOIN replicator.backfill_progress p"
            " ON p.backfill_id = b.id GROUP BY b.id, b.status, b.started_at"
            " ORDER BY b.started_at DESC LIMIT 1"
        ).fetchone()
        if bf:
            out.backfill = {
                "id": bf[0],
                "status": bf[1],
                "rows_total": int(bf[2]),
                "rows_applied": int(bf[3]),
                # How each table loads: "sql" (COPY chunks, compiled SQL) or "python: <why>".
                "paths": {
                    str(t): str(p or "python")
                    for t, p in conn.execute(
                        "SELECT table_name, path FROM replicator.backfill_progress"
                        " WHERE backfill_id = %s ORDER BY table_name",
                        (bf[0],),
                    ).fetchall()
                },
            }
        val = last_validation(conn)
        if val:
            out.validation = {
                "outcome": val["outcome"],
                "age_s": val["age_s"],
                "differences": val["differences"],
                # Which way each table was checked: "sql" (checksums in both databases) or
                # "python" (older runs have no path: Python).
                "paths": {
                    str(t.get("table")): str(t.get("path", "python"))
                    for t in (val.get("summary") or {}).get("tables", [])
                    if isinstance(t, dict)
                },
            }
    return out
