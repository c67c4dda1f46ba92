"""Issue 34: how a large table is cut into key ranges, and the reader's rows-per-second cap."""

from __future__ import annotations

import threading
import time

from psycopg import sql

from replicator.backfill.copy_read import SourceTable, chunk_query
from replicator.backfill.ranges import RateCap, range_count


def test_a_table_is_split_only_when_each_session_gets_several_chunks() -> None:
    assert range_count(1_000_000, 5_000, 1) == 1  # one session: read whole
    assert range_count(39_999, 5_000, 2) == 1  # under four chunks a session
    assert range_count(40_000, 5_000, 2) == 2
    assert range_count(2_000_000, 5_000, 4) == 4  # never more ranges than sessions
    assert range_count(0, 5_000, 4) == 1


def test_a_range_is_bounded_after_its_start_and_up_to_its_end() -> None:
    src = SourceTable(
        "public.big", 1, ("a", "b", "v"), (23, 25, 23), ("integer", "text", "integer"), ("a", "b")
    )

    def text(q: sql.Composed) -> str:
        return q.as_string(None)

    middle = text(chunk_query(src, True, upper=True))
    assert (
        'WHERE (t."a", t."b") > (%s::integer, %s::text) AND (t."a", t."b") <= (%s::integer, %s::text)'
        in middle
    )
    assert text(chunk_query(src, False, upper=True)).count("WHERE") == 1  # the first range
    assert "<=" not in text(chunk_query(src, True))  # the last range, or a whole table
    assert "WHERE" not in text(chunk_query(src, False))


def test_the_cap_paces_every_session_together() -> None:
    cap, stop = RateCap(10_000), threading.Event()
    started = time.monotonic()
    for _ in range(5):  # 5,000 rows at 10,000/s: the first 1,000 free, the rest 0.4 s
        cap.take(1_000, stop)
    assert 0.38 <= time.monotonic() - started < 1.0
    assert RateCap(0).take(10**9, stop) == 0.0  # no cap
