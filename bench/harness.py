"""What every benchmark shares: arguments, services started the way the tests start them, an
isolated pipeline, timing, and the one JSON line it prints last.

A benchmark measures the product *and* the physical limit it is compared with in the same run on
the same services, and prints ``{name, value, unit, limit, ratio, goal, ...}``. ``--quick``
shrinks the work so the run ends within a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from tests.support import Env, Services, isolated_env, start_services


@dataclass
class BenchArgs:
    quick: bool
    raw: argparse.Namespace


def parse_args(
    name: str, description: str, extra: list[tuple[str, dict[str, Any]]] | None = None
) -> BenchArgs:
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    p.add_argument(
        "--quick", action="store_true", help="smaller run that ends within a few minutes"
    )
    for flag, kw in extra or []:
        p.add_argument(flag, **kw)
    ns = p.parse_args()
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.ERROR)
    return BenchArgs(quick=ns.quick, raw=ns)


@contextlib.contextmanager
def bench_env() -> Iterator[Env]:
    """Services (started if needed, stopped if this run started them) and an isolated pipeline."""
    svc: Services = start_services()
    try:
        with isolated_env(svc) as env:
            yield env
    finally:
        svc.close()


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def peak_rss_mb() -> float:
    """Peak RSS of this process (and waited-for children, reported separately by the OS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(
    name: str,
    *,
    value: float,
    unit: str,
    limit: float,
    goal: str,
    higher_is_better: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Print the result line (the last line of stdout) and return it."""
    if higher_is_better:
        ratio = value / limit if limit else 0.0
    else:
        ratio = limit / value if value else 0.0
    result = {
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "limit": round(limit, 3),
        "ratio": round(ratio, 3),
        "goal": goal,
        **extra,
    }
    print(json.dumps(result), flush=True)
    return result


def settle(env: Env, tables: Iterable[str], side: str) -> None:
    """Nothing left for the server to do in the background before a timed phase: the tables
    vacuumed and analysed (autovacuum would otherwise start on them after a bulk load, in the
    middle of the next measurement) and a checkpoint written (a checkpoint forced by the load's
    WAL would land there too)."""
    with env.legacy_conn() if side == "legacy" else env.target_conn() as c:
        for table in tables:
            c.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(*table.split(".", 1))))
        c.execute("CHECKPOINT")
