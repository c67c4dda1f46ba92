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
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from connectors import kafka_io, pg
from replicator.config import DatabaseSettings, Settings
from replicator.errors import ReplicatorError
from replicator.status import lag as e2e

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
    unread_bytes: int | None = None  # WAL the capture has not read yet (status.lag.read_slot)
    invalidation_reason: str | None = None  # PostgreSQL 17+: wal_removed, idle_timeout, …


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
    end_to_end_lag_s: float | None = None  # replicator.status.lag
    last_heartbeat_latency_s: float | None = None
    last_applied_commit_at: str | None = None  # source commit time of the newest applied txn
    changes_waiting: bool | None = None  # in Kafka past apply's offsets, or unread in the slot
    seconds_since_last_apply: float | None = None
    rows_applied: dict[str, int] = field(default_factory=dict)
    backfill: dict[str, Any] | None = None  # latest: id, status, rows_total, rows_applied
    validation: dict[str, Any] | None = None  # latest: outcome, age_s, differences
    parity: dict[str, Any] | None = (
        None  # latest parity run: outcome, age_s, pairs, differing, slow
    )
    # Continuous validation's verified-through point per target table (runtime/continuous.py)
    verified: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Schema changes seen on the source (replicator.drift): counts per verdict, and the
    # unresolved ones that block a cutover, each with its fix.
    schema_changes: dict[str, Any] = field(default_factory=dict)


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


EndOffsets = e2e.EndOffsets


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
    topic = s.topic(direction, "changes")
    # Source, then Kafka's ends, then apply's offsets: what was waiting at one read and is
    # applied by the next one is not counted as waiting (status.lag).
    slot = attempt("source", _read_slot, ss, src_db, s.slot(direction))
    source = _source(s.slot(direction), slot) if slot is not None else None
    end = attempt("kafka", ends, s.kafka.bootstrap_servers, topic)
    applied = attempt("target", _applied, ss, tgt_db, topic)
    kafka = _kafka(topic, end, applied.parts if applied else {}) if end is not None else None
    target = attempt("target", _target, ss, s, tgt_db, direction) if applied is not None else None
    if target is not None and direction != "fwd":
        # Validation runs are stored on the target whichever way the pipeline runs (the web
        # page's card reads them there): after a cutover the direction's target is legacy.
        with _session(ss, s.target) as conn:
            target.validation = _validation(conn)
            target.verified = read_points(conn)
            target.parity = _parity(conn)
    if target is not None and applied is not None:
        _lag(target, s, applied, end or {}, slot)
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
        if src.invalidation_reason:
            reasons.append(
                f"slot {src.slot} was invalidated by the server ({src.invalidation_reason}):"
                " it streams nothing more; a new slot needs a new backfill"
            )
        elif src.wal_status in ("unreserved", "lost"):
            reasons.append(f"slot {src.slot} is in danger: wal_status={src.wal_status}")
        if (src.retained_wal_bytes or 0) > WAL_DANGER_BYTES:
            reasons.append(f"slot {src.slot} retains {src.retained_wal_bytes} bytes of WAL")
    if tgt is not None:
        lag = tgt.end_to_end_lag_s
        if lag is None:
            reasons.append("end-to-end lag unknown: no heartbeat applied yet")
        elif lag > max_lag_s:
            reasons.append(f"end-to-end lag {lag:.1f} s is over the threshold {max_lag_s:g} s")
        if st.direction == "fwd":
            # A rollback's preflight checks neither: its verify re-checks every legacy row the
            # reverse stream wrote.
            reasons.extend(_cutover_reasons(tgt))
    if tgt is not None:
        reasons.extend(tgt.schema_changes.get("blocking", []))
    if kafka is not None and kafka.dlq_messages:
        reasons.append(f"{kafka.dlq_messages} dead letter(s) in {st.pipeline}'s DLQ")
    for topic, how in (kafka.finite_retention if kafka is not None else {}).items():
        reasons.append(
            f"Kafka topic {topic} deletes its log ({how}); a rollback replays it "
            "(`replicator check` prints the fix)"
        )
    return not reasons, reasons


def _cutover_reasons(tgt: TargetStatus) -> list[str]:
    """What a cutover's preflight wants beyond the lag: a complete backfill, a clean recent
    validation."""
    out = []
    bf, val = tgt.backfill, tgt.validation
    if bf is None:
        out.append("no backfill has run")
    elif bf["status"] != "applied":
        out.append(f"backfill {bf['id']} is incomplete ({bf['status']})")
    for t, names in _set_aside_by_table(bf).items():
        out.append(
            f"{t} lacks {', '.join(names)}, set aside for the backfill's load: `replicator"
            " run` (or `replicator apply`) rebuilds them once its snapshot is loaded"
        )
    if val is None:
        out.append("no validation has run (`replicator validate`)")
    elif val["outcome"] != "clean":
        out.append(f"last validation was {val['outcome']}")
    elif (val.get("age_s") or 0) > VALIDATION_MAX_AGE_S:
        out.append(f"last validation is stale ({val['age_s'] / 3600:.0f} h old)")
    for table, p in tgt.verified.items():
        if p["outcome"] == "different":
            out.append(f"continuous validation finds {table} different ({p['differences']})")
    return out


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

    with contextlib.ExitStack() as stack:
        conns: list[psycopg.Connection[Any] | None] = []
        for db in (s.source, s.target):
            try:
                conns.append(stack.enter_context(_session(ss, db)))
            except ReplicatorError:
                conns.append(None)  # reported by its own part; the writer is then unknown
        return observe(conns[0], conns[1], s.name)


def _has_state(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('replicator.offsets') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _read_slot(ss: pg.Sessions, db: DatabaseSettings, slot: str) -> e2e.SlotReading:
    with _session(ss, db) as conn:
        return e2e.read_slot(conn, slot)


def _source(slot: str, r: e2e.SlotReading) -> SourceStatus:
    out = SourceStatus(slot=slot)
    if not r.exists:
        return out
    out.slot_exists, out.slot_active, out.wal_status = True, r.active, r.wal_status
    out.invalidation_reason = r.invalidation_reason
    if r.confirmed_lsn is not None:
        out.lag_bytes = max(0, r.current_lsn - r.confirmed_lsn)
    if r.restart_lsn is not None:
        out.retained_wal_bytes = max(0, r.current_lsn - r.restart_lsn)
    out.unread_bytes = r.unread_bytes
    return out


def _applied(ss: pg.Sessions, db: DatabaseSettings, topic: str) -> e2e.AppliedReading:
    """Apply's stored positions, and the target's clock."""
    with _session(ss, db) as conn:
        if not _has_state(conn):
            return e2e.AppliedReading({}, time.time(), time.monotonic())
        return e2e.read_applied(conn, topic)


def _kafka(topic: str, ends: dict[int, int], applied: dict[int, e2e.Applied]) -> KafkaStatus:
    out = KafkaStatus(topic=topic)
    behind = e2e.behind_of(ends, applied)
    for p, end in sorted(ends.items()):
        done = applied[p].next_offset if p in applied else None
        out.partitions.append(PartitionLag(p, end, done, behind[p]))
    out.messages_behind = sum(behind.values())
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


def _lag(
    out: TargetStatus,
    s: Settings,
    applied: e2e.AppliedReading,
    ends: dict[int, int],
    slot: e2e.SlotReading | None,
) -> None:
    """The end-to-end lag on the source's clock (the target's when the source is unreachable)."""
    parts = applied.parts
    behind = e2e.behind_of(ends, parts)
    capture_behind = slot is not None and slot.capture_behind
    now = slot.now_at(applied.at) if slot is not None else applied.target_now
    out.end_to_end_lag_s = e2e.estimate(
        now,
        parts,
        behind,
        capture_behind=capture_behind,
        heartbeat_interval_s=s.capture.heartbeat_interval_s,
    )
    out.changes_waiting = capture_behind or any(behind.values())
    beats = [a for a in parts.values() if a.heartbeat_at is not None]
    if beats:
        out.last_heartbeat_latency_s = max(
            beats, key=lambda a: a.heartbeat_at or 0.0
        ).heartbeat_latency_s
    commits = [a.commit_ts for a in parts.values() if a.commit_ts is not None]
    if commits:
        out.last_applied_commit_at = dt.datetime.fromtimestamp(max(commits), dt.UTC).isoformat()


def _dlq_pending(
    ss: pg.Sessions, s: Settings, db: DatabaseSettings, direction: str, end_offsets: EndOffsets
) -> int:
    from replicator.dlq.letters import pending_count

    topic = s.topic(direction, "dlq")
    ends = end_offsets(s.kafka.bootstrap_servers, topic)
    with _session(ss, db) as conn:
        return pending_count(conn, topic, ends)


def _target(ss: pg.Sessions, s: Settings, db: DatabaseSettings, direction: str) -> TargetStatus:
    from replicator.drift import store as drift_store

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
            " ON p.backfill_id = b.id WHERE b.id NOT LIKE 'repair-%'"  # validate --repair's
            " GROUP BY b.id, b.status, b.started_at"
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
        # Indexes and foreign keys a first backfill's load set aside (replicator.apply.set_aside):
        # what the target lacks until apply rebuilds them.
        made = conn.execute("SELECT to_regclass('replicator.set_aside')").fetchone()
        if out.backfill is not None and made is not None and made[0] is not None:
            aside = conn.execute(
                "SELECT s.table_name, s.kind, s.name, coalesce(b.status, 'gone')"
                " FROM replicator.set_aside s LEFT JOIN replicator.backfill b"
                " ON b.id = s.backfill_id ORDER BY 1, 2, 3"
            ).fetchall()
            out.backfill["set_aside"] = [
                {"table": str(t), "kind": str(k), "name": str(n), "backfill_status": str(b)}
                for t, k, n, b in aside
            ]
        out.schema_changes = {
            "counts": drift_store.counts(conn),
            "blocking": drift_store.blocking(conn),
            "changes": drift_store.listed(conn)[-50:],  # the newest, for the drift panel
        }
        out.validation = _validation(conn)
        out.verified = read_points(conn)
        out.parity = _parity(conn)
    return out


def _parity(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    from replicator.parity.report import last_parity

    par = last_parity(conn)
    if par is None:
        return None
    return {k: par[k] for k in ("outcome", "age_s", "pairs", "differing", "slow")}


def read_points(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    from replicator.runtime.continuous import read_points as read

    return read(conn)


def _validation(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    from replicator.validate.report import last_validation

    val = last_validation(conn)
    if val is None:
        return None
    return {
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


def _set_aside_by_table(backfill: dict[str, Any] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for o in (backfill or {}).get("set_aside", []):
        out.setdefault(o["table"], []).append(o["name"])
    return out
