"""What the page shows beyond ``status --json``: backfill progress per table, the last
validation's tables, the cutover and rollback journal, and the slot's confirmed position.

Read from the target's ``replicator`` schema (and the slot from the direction's source) on the
sampler's kept sessions. Each part is read on its own: a missing
table (no validation or cutover has run yet) is simply absent, an unreachable database is
named in ``problems``; nothing here can fail the page.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from connectors import pg
from connectors.envelope import parse_lsn
from replicator.config import DatabaseSettings, Settings
from replicator.errors import ReplicatorError
from replicator.status.overview import read_points, sides
from replicator.validate.repair import last_repair

JOURNAL_ROWS = 80  # the latest journal rows read: the last run and a few before it
RUNS_SHOWN = 5


def read_details(s: Settings, direction: str, sessions: pg.Sessions) -> dict[str, Any]:
    src_db, _ = sides(s, direction)
    out: dict[str, Any] = {
        "backfill_tables": [],
        "validation": None,
        "parity": None,
        "verified": {},  # continuous validation's verified-through point per table
        "repair": None,  # the last `validate --repair`
        "runs": [],
        "slot_confirmed_lsn": None,
        "problems": [],
    }
    try:
        out["slot_confirmed_lsn"] = _confirmed_lsn(sessions, src_db, s.slot(direction))
    except ReplicatorError as exc:
        out["problems"].append(f"source: {exc.message}")
    # Backfill, validation runs and the cutover journal are all kept on the target, whichever
    # way the pipeline runs now.
    db = s.target
    try:
        with sessions.session(db.conninfo(), db.masked()) as conn:
            out["backfill_tables"] = _backfill_tables(conn)
            out["validation"] = _validation(conn)
            out["parity"] = _parity(conn)
            out["verified"] = read_points(conn)
            out["repair"] = last_repair(conn)
            out["runs"] = _runs(conn)
    except ReplicatorError as exc:
        out["problems"].append(f"target: {exc.message}")
    return out


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def _confirmed_lsn(sessions: pg.Sessions, db: DatabaseSettings, slot: str) -> int | None:
    with sessions.session(db.conninfo(), db.masked()) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return parse_lsn(row[0]) if row and row[0] else None


def _backfill_tables(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    if not _exists(conn, "replicator.backfill_progress"):
        return []
    rows = conn.execute(
        "SELECT p.table_name, p.rows_total, p.rows_read, p.rows_applied, p.chunks, p.done,"
        " b.status, b.id, coalesce(p.path, 'python') FROM replicator.backfill_progress p"
        " JOIN replicator.backfill b ON b.id = p.backfill_id"
        " WHERE b.id = (SELECT id FROM replicator.backfill WHERE id NOT LIKE 'repair-%'"
        " ORDER BY started_at DESC LIMIT 1)"
        " ORDER BY p.table_name"
    ).fetchall()
    return [
        {
            "table": str(r[0]),
            "rows_total": int(r[1]),
            "rows_read": int(r[2]),
            "rows_applied": int(r[3]),
            "chunks": int(r[4]),
            "read_done": bool(r[5]),
            "status": str(r[6]),
            "backfill_id": str(r[7]),
            "path": str(r[8]),  # sql, or python: <why>
        }
        for r in rows
    ]


def _parity(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    """The last parity run: each pair's verdict, the target's p95 and what is wrong, if any."""
    from replicator.parity.report import last_parity

    run = last_parity(conn)
    if run is None:
        return None
    pairs = (run.get("summary") or {}).get("pairs", [])
    return {
        "finished_at": _iso(run["finished_at"]),
        "age_s": run["age_s"],
        "outcome": run["outcome"],
        "pairs": [
            {
                "name": str(p.get("name")),
                "verdict": str(p.get("verdict")),
                "target_p95_ms": ((p.get("latency_ms") or {}).get("target") or {}).get("p95"),
                "note": p.get("difference")
                or p.get("unsettled")
                or "; ".join(p.get("misses") or []),
            }
            for p in pairs
            if isinstance(p, dict)
        ],
    }


def _validation(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    from replicator.validate.report import last_validation

    val = last_validation(conn)
    if val is None:
        return None
    summary = val.get("summary") or {}
    return {
        "id": val["id"],
        "finished_at": _iso(val["finished_at"]),
        "age_s": val["age_s"],
        "scope": val["scope"],
        "outcome": val["outcome"],
        "rows_checked": val["rows_checked"],
        "differences": val["differences"],
        "tables_requested": val["tables"],
        "tables": [
            {"table": str(t.get("table")), "differences": int(t.get("differences") or 0)}
            for t in summary.get("tables", [])
        ],
    }


def _runs(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The latest cutover/rollback runs, newest first, each with its steps in order."""
    if not _exists(conn, "replicator.cutover_journal"):
        return []
    rows = conn.execute(
        "SELECT run_id, action, step, ok, started_at, duration_ms, detail,"
        " extract(epoch FROM clock_timestamp() - started_at)::float8"
        " FROM replicator.cutover_journal ORDER BY started_at DESC LIMIT %s",
        (JOURNAL_ROWS,),
    ).fetchall()
    runs: dict[str, dict[str, Any]] = {}
    for run_id, action, step, ok, started, ms, detail, age in reversed(rows):
        run = runs.setdefault(run_id, {"run_id": run_id, "action": action, "steps": []})
        run["steps"].append(
            {
                "step": step,
                "ok": bool(ok),
                "started_at": _iso(started),
                "duration_ms": round(float(ms), 1),
                "detail": detail or "",
                "age_s": float(age),
                "_start": started,
            }
        )
    out = [_summarise(r) for r in runs.values()]
    return out[::-1][:RUNS_SHOWN]


def _summarise(run: dict[str, Any]) -> dict[str, Any]:
    steps = run["steps"]
    by_name = {s["step"]: s for s in steps}

    def end(step: dict[str, Any]) -> dt.datetime:
        start: dt.datetime = step["_start"]
        return start + dt.timedelta(milliseconds=step["duration_ms"])

    failed = [s for s in steps if not s["ok"] or s["detail"].startswith("aborted")]
    if failed:
        result = "aborted at " + next((s["step"] for s in steps if not s["ok"]), "unfence")
    elif by_name.get("switch", {}).get("ok"):
        result = "switched"
    elif "unfence" in by_name:
        result = "dry run: old writer kept"
    else:
        result = "running"
    # The write pause, as the cutover measures it: fence committed → switch (or unfence) done.
    pause_ms = None
    fence = by_name.get("fence")
    last = by_name.get("switch") or by_name.get("unfence")
    if fence and fence["ok"] and last:
        pause_ms = round((end(last) - end(fence)).total_seconds() * 1000, 1)
    for s in steps:
        del s["_start"]
    return {
        **run,
        "result": result,
        "pause_ms": pause_ms,
        "started_at": steps[0]["started_at"],
        "age_s": steps[0]["age_s"],
    }


def _iso(v: Any) -> str | None:
    return v.isoformat() if isinstance(v, dt.datetime) else (None if v is None else str(v))
