"""The DDL event trigger's cost per DDL statement (issue #31, docs/drift.md).

Times the same DDL statements — ``ALTER TABLE … ADD COLUMN`` then ``DROP COLUMN`` on a table
of 20 columns, each its own transaction — on legacy without the replicator's event trigger
(the limit) and with it (each statement then also reads the table's columns and writes a
logical message into the WAL). The value is the median time per statement with the trigger;
``cost_ms`` is the median difference. Migrations run a handful of statements, so any figure
under a few milliseconds is invisible to them; the goal says so.

    python -m bench.ddl_trigger [--quick]
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.harness import bench_env, emit, log, parse_args
from connectors import pg
from replicator.drift.trigger import install, remove


def _round(conn: Any, n: int) -> list[float]:
    out: list[float] = []
    for i in range(n):
        for stmt in (
            f"ALTER TABLE wide ADD COLUMN extra_{i} text",
            f"ALTER TABLE wide DROP COLUMN extra_{i}",
        ):
            t0 = time.perf_counter()
            conn.execute(stmt)
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    args = parse_args("ddl_trigger", __doc__ or "")
    n = 50 if args.quick else 500
    with bench_env() as env, pg.connect(env.legacy.conninfo(), autocommit=True) as conn:
        cols = ", ".join(f"c{i} text" for i in range(19))
        conn.execute(f"CREATE TABLE wide (id bigint PRIMARY KEY, {cols})")
        _round(conn, 10)  # warm the catalog caches
        without: list[float] = []
        with_trigger: list[float] = []
        for _ in range(3):  # interleaved, so load drifts hit both alike
            remove(conn, env.name)
            without += _round(conn, n // 3)
            if not install(conn, env.name):
                raise SystemExit("the bench's role may not create event triggers")
            with_trigger += _round(conn, n // 3)
        remove(conn, env.name)
    off, on = statistics.median(without), statistics.median(with_trigger)
    log(f"per DDL statement: {off * 1000:.3f} ms without the trigger, {on * 1000:.3f} ms with it")
    emit(
        "ddl_trigger",
        value=on * 1000,
        unit="ms per DDL statement",
        limit=off * 1000,
        goal="cost invisible to a migration: under 5 ms per statement",
        higher_is_better=False,
        cost_ms=round((on - off) * 1000, 3),
        p90_ms=round(statistics.quantiles(with_trigger, n=10)[-1] * 1000, 3),
        statements=len(with_trigger),
    )


if __name__ == "__main__":
    main()
