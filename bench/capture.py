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
from connectors.envelope import parse_lsn
from replicator.capture import Capture
from replicator.runtime.gc_tuning import tune_gc

PG_BIN = Path("/usr/lib/postgresql/15/bin")
TABLES = ("bench_item", "bench_tag")
INSERT = "INSERT INTO {} SELECT g, md5(g::text), g FROM generate_series(%s::int, %s::int) g"
UPDATE = "UPDATE {} SET n = n + 1 WHERE id BETWEEN %s AND %s"


def main() -> None:
    args = parse_args("capture", __doc__ or "")
    rows = 100_000 if args.quick else 1_000_000
    recvlogical = shutil.which("pg_recvlogical") or str(PG_BIN / "pg_recvlogical")
    with bench_env() as env:
        with env.legacy_conn() as c:
            for table in TABLES:
                c.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text NOT NULL, n int)")
        s = env.settings(capture={"heartbeat_interval_s": 1.0, "status_interval_s": 0.2})
        cap = Capture(s, [f"public.{t}" for t in TABLES])
        cap.prepare()
        recv_slot = f"{env.name}_recv"
        with env.legacy_conn() as c:
            c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (recv_slot,))
            # Half inserts, then an update of every inserted row, spread over the tables, in
            # transactions of 1,000 row changes: the shape of an ordinary busy OLTP stretch.
            log(f"writing {rows:,} row changes")
            per_table = rows // 2 // len(TABLES)
            for stmt in (INSERT, UPDATE):
                for table in TABLES:
                    for lo in range(1, per_table + 1, 1000):
                        c.execute(stmt.format(table), (lo, min(lo + 999, per_table)))
            rows = per_table * len(TABLES) * 2
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
            done = subprocess.run(cmd, env=penv, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise SystemExit(f"pg_recvlogical failed: {done.stderr.strip()}")

        log("capture reading the range into Kafka")
        tune_gc()  # as `replicator capture` does
        stop = threading.Event()
        thread = threading.Thread(target=cap.run, args=(stop,), daemon=True)
        with Timer() as ours:
            thread.start()
            first_change = 0.0
            # The position the capture sends as its slot's flush LSN: it passes the end only
            # once Kafka acknowledged every change below it. Read in-process, so the status
            # interval does not blur the end time.
            while cap.stats.confirmed_lsn < end_lsn:
                if not first_change and cap.stats.changes:
                    first_change = time.perf_counter() - ours.start
                if not thread.is_alive():
                    raise SystemExit("the capture stopped before reaching the end of the range")
                time.sleep(0.01)
        stop.set()
        thread.join(30)
        if cap.stats.changes < rows:
            raise SystemExit(f"the capture sent {cap.stats.changes} changes, expected {rows}")
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
        # Connecting, starting replication and the producer: part of capture_s.
        capture_first_change_s=round(first_change, 3),
        changes_sent=cap.stats.changes,
        envelopes=cap.stats.envelopes,
        pg_recvlogical_s=round(native.seconds, 3),
        peak_rss_mb=round(peak_rss_mb(), 1),
    )


if __name__ == "__main__":
    main()
