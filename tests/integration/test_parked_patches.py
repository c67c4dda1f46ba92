"""A patch whose row is not there yet waits for it (connectors.pgsink): with several partitions
the row and the patch of another source table travel apart, and an ``UPDATE … FROM`` of a row
that is not there used to update nothing, silently (issue #28)."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from typing import Any

import psycopg

from connectors.pgsink import Batch, Sink
from tests.support import Env
from transforms.api import Delete, Patch, TargetOp, Upsert

USER = "public.app_user"
_CLOCK = itertools.count(start=1000, step=1000)


def _setup(env: Env) -> None:
    with env.target_conn() as c:
        c.execute(
            "CREATE TABLE app_user (id uuid PRIMARY KEY, email text NOT NULL,"
            " password text NOT NULL DEFAULT '', seen timestamptz, prefs jsonb, blob bytea)"
        )


def _write(
    sink: Sink, conn: psycopg.Connection[Any], *ops: TargetOp, wait: float = 600
) -> list[Any]:
    batch = Batch()
    for op in ops:
        batch.add(op)
    sink.flush(batch)
    # As the worker does at each commit; a clock far on: a sweep each time.
    expired = sink.sweep(wait, now=next(_CLOCK))
    conn.commit()
    return expired


def _users(env: Env) -> list[tuple[Any, ...]]:
    with env.target_conn() as c:
        return c.execute(
            "SELECT id, email, password, seen, prefs, blob FROM app_user ORDER BY email"
        ).fetchall()


def _parked(env: Env) -> int:
    with env.target_conn() as c:
        row = c.execute("SELECT count(*) FROM replicator.parked_patches").fetchone()
    assert row is not None
    return int(row[0])


def test_a_patch_that_arrives_before_its_row_is_written_when_the_row_comes(env: Env) -> None:
    _setup(env)
    a, b = uuid.uuid4(), uuid.uuid4()
    seen = dt.datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=dt.UTC)
    with env.target_conn() as conn:
        conn.autocommit = False
        sink = Sink(conn)
        # b's row is there, a's is not: b is patched at once, a's patch waits.
        _write(sink, conn, Upsert(USER, {"id": b}, {"email": "b@x"}))
        values = {"password": "hash-a", "seen": seen, "prefs": {"k": [1, "x"]}, "blob": b"\x00\xff"}
        _write(
            sink,
            conn,
            Patch(USER, {"id": a}, values),
            Patch(USER, {"id": b}, {"password": "hash-b"}),
        )
        assert _users(env) == [(b, "b@x", "hash-b", None, None, None)]
        assert _parked(env) == 1
        _write(sink, conn, Upsert(USER, {"id": a}, {"email": "a@x"}))
    # The values come back with their types (PostgreSQL's own JSON of them, read back).
    assert _users(env) == [
        (a, "a@x", "hash-a", seen, {"k": [1, "x"]}, b"\x00\xff"),
        (b, "b@x", "hash-b", None, None, None),
    ]
    assert _parked(env) == 0


def test_a_later_patch_waits_behind_the_parked_ones_of_its_key(env: Env) -> None:
    _setup(env)
    a = uuid.uuid4()
    with env.target_conn() as conn, env.target_conn() as other:
        conn.autocommit = other.autocommit = False
        sink, elsewhere = Sink(conn), Sink(other)
        _write(sink, conn, Patch(USER, {"id": a}, {"password": "first"}))
        # Another worker writes the row; it has not swept yet (it looks once a second).
        batch = Batch()
        batch.add(Upsert(USER, {"id": a}, {"email": "a@x"}))
        elsewhere.flush(batch)
        other.commit()
        # A newer patch of the same key must not be overwritten by the older parked one.
        _write(sink, conn, Patch(USER, {"id": a}, {"password": "second"}))
    assert [r[2] for r in _users(env)] == ["second"]
    assert _parked(env) == 0


def test_a_patch_whose_row_never_comes_is_handed_back_to_be_dead_lettered(env: Env) -> None:
    _setup(env)
    a = uuid.uuid4()
    with env.target_conn() as conn:
        conn.autocommit = False
        sink = Sink(conn)
        _write(sink, conn, Upsert(USER, {"id": a}, {"email": "a@x"}))
        _write(sink, conn, Delete(USER, {"id": a}))
        assert _write(sink, conn, Patch(USER, {"id": a}, {"password": "late"})) == []
        expired = _write(sink, conn, wait=0.001)
    assert len(expired) == 1
    assert expired[0].table == USER and expired[0].key == {"id": str(a)}
    assert "waited" in expired[0].message and "never came" in expired[0].message
    assert _parked(env) == 0 and _users(env) == []


def test_a_sweep_committing_while_a_patch_is_judged_never_loses_the_patch(env: Env) -> None:
    """A patch is written or parked by one statement, at one snapshot. Judged by two (write if
    nothing waits; park if something waits or the row is missing), a sweep by another worker
    that committed between them made the second see nothing waiting and the row there: the
    patch was neither written nor parked (found by the scale-out e2e under load)."""
    _setup(env)
    a = uuid.uuid4()
    with env.target_conn() as conn:
        conn.autocommit = False
        sink = Sink(conn)
        _write(sink, conn, Patch(USER, {"id": a}, {"password": "h1"}))  # no row yet: parked
        with env.target_conn() as other:
            other.execute("INSERT INTO app_user (id, email) VALUES (%s, 'a@x')", (a,))
        merge = sink._merge
        swept: list[bool] = []

        def merge_then_sweep_elsewhere(stmt: Any) -> None:
            merge(stmt)
            if not swept:  # another worker's sweep, committed right after this statement
                swept.append(True)
                with env.target_conn() as other:
                    other.execute(
                        "WITH p AS (DELETE FROM replicator.parked_patches RETURNING vals)"
                        " UPDATE app_user SET password = (SELECT vals->>'password' FROM p)"
                        " WHERE id = %s",
                        (a,),
                    )

        sink._merge = merge_then_sweep_elsewhere  # type: ignore[method-assign]
        batch = Batch()
        batch.add(Patch(USER, {"id": a}, {"password": "h2"}))
        sink.flush(batch)
        conn.commit()
        sink._merge = merge  # type: ignore[method-assign]
        assert swept
        _write(sink, conn, Upsert(USER, {"id": uuid.uuid4()}, {"email": "b@x"}))  # a sweep
    assert [u[2] for u in _users(env) if u[0] == a] == ["h2"]
