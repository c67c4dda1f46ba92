"""Capture throughput: row changes per second from commit to Kafka-acknowledged, against
``pg_recvlogical`` (pgoutput) reading the same WAL range to /dev/null in the same run.

Two slots are created at the same point before the writes, so both readers decode exactly the
same changes. The capture's time ends when its slot's confirmed position (which advances only
below what Kafka acknowledged) passes the last write; pg_recvlogical's when it reaches ``--endpos``.

    python -m bench.capture [--quick]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from bench.harness import Timer, bench_env, emit, log, parse_args, peak_rss_mb
from connectors import pg
from connectors.envelope import parse_lsn
from replicator.capture import Capture

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _confirmed(conn: object, slot: str) -> int:
    row = conn.execute(  # type: ignore[attr-defined]
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()
    return parse_lsn(row[0]) if row and row[0] else 0


def main() -> None:
    args = parse_args("capture", __doc__ or "")
    rows = 100_000 if args.quick else 1_000_000
    recvlogical = shutil.which("pg_recvlogical") or str(PG_BIN / "pg_recvlogical")
    with bench_env() as env:
        with env.legacy_conn() as c:
            c.execute("CREATE TABLE bench_item (id int PRIMARY KEY, v text NOT NULL, n int)")
        s = env.settings(capture={"heartbeat_interval_s": 1.0, "status_interval_s": 0.2})
        cap = Capture(s, ["public.bench_item"])
        cap.prepare()
        recv_slot = f"{env.name}_recv"
        with env.legacy_conn() as c:
            c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (recv_slot,))
            # Half inserts, half updates, in transactions of 1,000 rows.
            log(f"writing {rows:,} row changes")
            half = rows // 2
            for lo in range(1, half + 1, 1000):
                c.execute(
                    "INSERT INTO bench_item SELECT g, md5(g::text), g FROM generate_series(%s::int, %s::int) g",
                    (lo, min(lo + 999, half)),
                )
            for lo in range(1, half + 1, 1000):
                c.execute(
                    "UPDATE bench_item SET n = n + 1 WHERE id BETWEEN %s AND %s",
                    (lo, min(lo + 999, half)),
                )
            end = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
        end_lsn = parse_lsn(end)

        db = env.legacy
        cmd = [
            recvlogical,
            "-h", db.host, "-p", str(db.port), "-U", db.user, "-d", db.dbname,
            "--slot", recv_slot, "--start", "--no-loop", "-f", "/dev/null",
            "-o", "proto_version=1", "-o", f"publication_names={s.publication}",
            "-E", end,
        ]  # fmt: skip
        penv = {**os.environ, "PGPASSWORD": db.password.get_secret_value()}
        log("pg_recvlogical reading the range")
        with Timer() as native:
            subprocess.run(cmd, env=penv, check=True, capture_output=True, timeout=1800)

        log("capture reading the range into Kafka")
        stop = threading.Event()
        thread = threading.Thread(target=cap.run, args=(stop,), daemon=True)
        with Timer() as ours, pg.connect(db, autocommit=True) as conn:
            thread.start()
            while _confirmed(conn, s.slot("fwd")) < end_lsn:
                if not thread.is_alive():
                    raise SystemExit("the capture stopped before reaching the end of the range")
                time.sleep(0.05)
        stop.set()
        thread.join(30)
        with env.legacy_conn() as c:
            c.execute("SELECT pg_drop_replication_slot(%s)", (recv_slot,))
    emit(
        "capture",
        value=rows / ours.seconds,
        unit="row changes/s",
        limit=rows / native.seconds,
        goal="ratio >= 0.7",
        rows=rows,
        capture_s=round(ours.seconds, 3),
        pg_recvlogical_s=round(native.seconds, 3),
        peak_rss_mb=round(peak_rss_mb(), 1),
    )


if __name__ == "__main__":
    main()
