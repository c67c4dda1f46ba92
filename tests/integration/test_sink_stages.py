"""The sink's staging tables: emptied by a TRUNCATE only when written since the last commit
(ON COMMIT DELETE ROWS empties them at every commit, and a TRUNCATE costs the target a new file
and catalog row per table per batch)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from connectors.pgsink import Batch, Sink
from tests.support import Env
from transforms.api import Upsert


def _upsert(sink: Sink, key: int, title: str) -> None:
    batch = Batch()
    batch.add(Upsert("public.item", {"id": key}, {"title": title}))
    sink.flush(batch)


def _file(conn: psycopg.Connection[Any], sink: Sink) -> int:
    """The sink's (one) staging table's file: a TRUNCATE gives it a new one."""
    (stage,) = set(sink._stages.values())
    row = conn.execute(
        "SELECT relfilenode FROM pg_class WHERE oid = %s::regclass", (stage,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_stage_is_truncated_only_when_written_since_the_last_commit(env: Env) -> None:
    with env.target_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, title text)")
    with env.target_conn() as conn:
        conn.autocommit = False  # as an apply session: the staging tables live per transaction
        sink = Sink(conn)
        _upsert(sink, 1, "one")
        conn.commit()
        sink.committed()
        before = _file(conn, sink)
        _upsert(sink, 2, "two")  # first use since the commit: empty already, not truncated
        assert _file(conn, sink) == before
        # Written in this transaction: the next flush must not merge its rows again.
        conn.execute("UPDATE item SET title = 'changed' WHERE id = 2")
        _upsert(sink, 3, "three")
        assert _file(conn, sink) != before  # truncated
        conn.commit()
        # A caller that does not say it committed gets a TRUNCATE on every use.
        before = _file(conn, sink)
        _upsert(sink, 4, "four")
        assert _file(conn, sink) != before
        conn.commit()
    with env.target_conn() as c:
        got = c.execute("SELECT id, title FROM item ORDER BY id").fetchall()
    assert got == [(1, "one"), (2, "changed"), (3, "three"), (4, "four")]


def test_statements_are_composed_once_per_shape(env: Env, monkeypatch: Any) -> None:
    """Composing five tables' statements anew for every batch was a tenth of a small batch's
    client time: a shape seen before reuses its statements."""
    with env.target_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, title text)")
    with env.target_conn() as conn:
        conn.autocommit = False
        sink = Sink(conn)
        _upsert(sink, 1, "one")
        _upsert(sink, 2, "two")  # written since the commit: truncated first
        conn.commit()
        sink.committed()

        def composed(*_: Any, **__: Any) -> Any:
            raise AssertionError("a statement composed again")

        with monkeypatch.context() as m:
            m.setattr(sql.SQL, "format", composed)
            m.setattr(sql.SQL, "join", composed)
            _upsert(sink, 3, "three")
            _upsert(sink, 4, "four")
        conn.commit()
    with env.target_conn() as c:
        assert c.execute("SELECT count(*) FROM item").fetchone() == (4,)


def test_two_sinks_on_one_session_never_share_a_stage(env: Env) -> None:
    """Temporary tables belong to the session: a second Sink there must not take the first's
    stage (written this transaction, so not empty) for one of its own and merge its rows."""
    with env.target_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, title text)")
        c.execute("CREATE TABLE other (id int PRIMARY KEY, title text)")
    with env.target_conn() as conn:
        conn.autocommit = False
        a, b = Sink(conn), Sink(conn)
        _upsert(a, 1, "item-1")
        batch = Batch()
        batch.add(Upsert("public.other", {"id": 2}, {"title": "other-2"}))
        b.flush(batch)
        conn.commit()
    with env.target_conn() as c:
        assert c.execute("SELECT id, title FROM other").fetchall() == [(2, "other-2")]
