"""The bulk path's direct COPY (replicator.apply.direct_copy) never loads what the staged
path would refuse, nor refuses what it would load: targets COPY cannot write (a view, row-level
security) take the staged path, and no cast cuts a value to a column's size (a domain over
varchar(n) too), wherever the chunk goes."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support import Env
from transforms.loader import load_mapping


def _loader(env: Env, mapping: str, conn: psycopg.Connection[Any], change: Any = None) -> Any:
    from connectors.pgsink import Sink
    from replicator.apply.bulk import BulkLoader

    return BulkLoader(
        load_mapping(mapping).forward,
        Sink(conn, "target"),
        "target",
        flush=lambda batch: None,
        change=change or (lambda *a: None),
        dead=lambda *a: None,
        count=lambda *a: None,
        connect=lambda: psycopg.connect(env.target.conninfo()),
    )


def _chunk(table: str, data: bytes, types: tuple[str, str] = ("integer", "text")) -> bytes:
    from connectors.copy_chunk import CopyChunk
    from connectors.envelope import RelationInfo

    relation = RelationInfo("public", table, ("id", "v"), (23, 25), ("id",))
    return CopyChunk("p", 1, relation, types, (), data.count(b"\n"), data).encode()


@pytest.mark.parametrize("prefill", [False, True], ids=["fresh-direct", "held-a-row-staged"])
def test_a_domain_over_varchar_n_is_never_cut_silently(env: Env, prefill: bool) -> None:
    """An explicit cast to a domain over varchar(3) cuts 'long' to 'lon' as one to varchar(3)
    does: the staged path casts to the base type unsized, and the column refuses the value
    as the direct COPY does, whether or not the target held a row."""
    from connectors.pgsink import Batch

    with env.target_conn() as c:
        c.execute("CREATE DOMAIN code3 AS varchar(3)")
        c.execute("CREATE TABLE r3dom (id int PRIMARY KEY, v code3)")
        if prefill:
            c.execute("INSERT INTO r3dom VALUES (0, 'z')")
    conn = psycopg.connect(env.target.conninfo())
    changes: list[Any] = []
    loader = _loader(env, "identity:public.r3dom", conn, change=lambda *a: changes.append(a[1]))
    try:
        loader.load(0, 0, _chunk("r3dom", b"3\tlong\n"), Batch())
        conn.commit()
        rows = conn.execute("SELECT id, v FROM r3dom WHERE id = 3").fetchall()
        # Refused (the Python path, where the worker dead-letters it), never stored as 'lon'.
        assert rows == [], f"value silently cut: {rows}"
        assert [ch.new for ch in changes] == [{"id": "3", "v": "long"}]
    finally:
        loader.close()
        conn.close()


def test_an_updatable_view_target_still_loads(env: Env) -> None:
    """An auto-updatable view takes INSERT … SELECT; COPY refuses a view: staged."""
    from connectors.pgsink import Batch

    with env.target_conn() as c:
        c.execute("CREATE TABLE r3base (id int PRIMARY KEY, v text)")
        c.execute("CREATE VIEW r3view AS SELECT id, v FROM r3base")
    conn = psycopg.connect(env.target.conninfo())
    loader = _loader(env, "identity:public.r3view", conn)
    try:
        loader.load(0, 0, _chunk("r3view", b"1\ta\n2\tb\n"), Batch())
        conn.commit()
        assert conn.execute("SELECT count(*) FROM r3base").fetchone() == (2,)
    finally:
        loader.close()
        conn.close()


def test_a_target_under_row_level_security_still_loads(env: Env) -> None:
    """Rows under row-level security for the replicator's role: INSERT … SELECT works, COPY
    FROM is refused ("not supported with row-level security"): staged. The role is
    cluster-wide, so it gets a unique name and is dropped."""
    import uuid

    from connectors.pgsink import Batch

    role = f"r3_rls_{uuid.uuid4().hex[:8]}"
    with env.target_conn() as c:
        c.execute(f"CREATE ROLE {role} NOSUPERUSER")
        c.execute("CREATE TABLE r3rls (id int PRIMARY KEY, v text)")
        c.execute(f"ALTER TABLE r3rls OWNER TO {role}")
        c.execute("ALTER TABLE r3rls ENABLE ROW LEVEL SECURITY")
        c.execute("ALTER TABLE r3rls FORCE ROW LEVEL SECURITY")
        c.execute("CREATE POLICY p ON r3rls USING (true) WITH CHECK (true)")
    conn = psycopg.connect(env.target.conninfo())
    conn.execute(f"SET ROLE {role}")
    conn.commit()
    loader = _loader(env, "identity:public.r3rls", conn)
    try:
        loader.load(0, 0, _chunk("r3rls", b"1\ta\n2\tb\n"), Batch())
        conn.commit()
        assert conn.execute("SELECT count(*) FROM r3rls").fetchone() == (2,)
    finally:
        loader.close()
        conn.close()
        with env.target_conn() as c:
            c.execute("DROP TABLE IF EXISTS r3rls")
            c.execute(f"DROP ROLE IF EXISTS {role}")
