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


def _table(types: tuple[str, ...], enums: tuple[str, ...] = ()) -> SourceTable:
    cols = tuple(f"c{i}" for i in range(len(types)))
    return SourceTable("public.t", 1, cols, (0,) * len(types), types, ("c0",), enums)


def test_a_bulk_chunk_grows_only_where_every_column_has_a_bounded_width() -> None:
    from replicator.backfill.ranges import CHUNK_BYTES, bulk_chunk_rows, widest_row

    accounts = _table(("integer", "integer", "integer", "character(84)"))
    assert widest_row(accounts) == 2 + 3 * 8 + 4 + 4 * 84
    assert bulk_chunk_rows(5_000, accounts, capped=False) == 20_000  # at most 4x
    wide = _table(("bigint", "character varying(20000)"))
    assert bulk_chunk_rows(5_000, wide, capped=False) == 5_000  # never below chunk_rows
    assert bulk_chunk_rows(100, wide, capped=False) == CHUNK_BYTES // widest_row(wide)  # type: ignore[operator]
    # A text or jsonb column may hold megabytes in any row: no growth.
    assert widest_row(_table(("integer", "text"))) is None
    assert widest_row(_table(("integer", "jsonb"))) is None
    assert bulk_chunk_rows(5_000, _table(("integer", "text")), capped=False) == 5_000
    # An enum's label is bounded; numeric(p, s) too, bare numeric not.
    assert widest_row(_table(("integer", "mood"), enums=("c1",))) == 2 + 8 + 4 + 64
    assert widest_row(_table(("numeric(12, 2)",))) == 2 + 4 + 8 + 2 * 5
    assert widest_row(_table(("numeric",))) is None
    # Under a rate cap a chunk is read at full speed: it keeps chunk_rows.
    assert bulk_chunk_rows(5_000, accounts, capped=True) == 5_000
