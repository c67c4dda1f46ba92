"""COPY's binary format read back as text (connectors.copy_chunk.field_text) equals the text
PostgreSQL itself prints for the same values, type by type, on a real server (hypothesis)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connectors.copy_chunk import (
    BINARY_TEXT_OIDS,
    TRAILER,
    binary_tuples,
    copy_fields,
    field_text,
    strip_binary_header,
)
from tests.support import Services

PROPS = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def conn(services: Services) -> Iterator[psycopg.Connection[Any]]:
    c = psycopg.connect(services.legacy.settings("postgres").conninfo(), autocommit=True)
    # The reader's text settings: UTF-8, ISO dates. Binary timestamps print in UTC.
    c.execute("SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, MDY'; SET client_encoding = 'UTF8'")
    c.execute(
        "DROP TYPE IF EXISTS copy_binary_mood; CREATE TYPE copy_binary_mood AS ENUM ('ok', 'sad ☹')"
    )
    yield c
    c.execute("DROP TYPE IF EXISTS copy_binary_mood")
    c.close()


def _both(conn: psycopg.Connection[Any], pg_type: str, values: list[str | None]) -> None:
    """Each value cast to ``pg_type`` by the server, printed by COPY text and by field_text
    from COPY binary: the same text."""
    query = f"SELECT v::{pg_type} FROM unnest(%s::text[]) WITH ORDINALITY AS u(v, o) ORDER BY o"
    oid = conn.execute("SELECT %s::regtype::oid", (pg_type,)).fetchone()
    assert oid is not None
    is_enum = pg_type == "copy_binary_mood"
    assert is_enum or int(oid[0]) in BINARY_TEXT_OIDS
    with conn.cursor() as cur, cur.copy(f"COPY ({query}) TO STDOUT", (values,)) as cp:
        text = [copy_fields(bytes(line).rstrip(b"\n"))[0] for line in cp]
    blocks = []
    with (
        conn.cursor() as cur,
        cur.copy(f"COPY ({query}) TO STDOUT (FORMAT binary)", (values,)) as cp,
    ):
        for i, block in enumerate(cp):
            data = strip_binary_header(bytes(block)) if i == 0 else bytes(block)
            if data and data != TRAILER:
                blocks.append(data)
    fields = [f for data in blocks for (f,) in binary_tuples(data)]
    got = [None if f is None else field_text(int(oid[0]), f, enum=is_enum) for f in fields]
    assert got == text


_INT = {"int2": 2**15, "int4": 2**31, "int8": 2**63}


@pytest.mark.parametrize("pg_type", sorted(_INT))
@given(st.data())
@PROPS
def test_integers(conn: psycopg.Connection[Any], pg_type: str, data: st.DataObject) -> None:
    bound = _INT[pg_type]
    values = data.draw(st.lists(st.integers(-bound, bound - 1), max_size=20))
    _both(conn, pg_type, [str(v) for v in [*values, -bound, bound - 1, 0]] + [None])


_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)


@pytest.mark.parametrize("pg_type", ["text", "varchar", "varchar(50)", "char(8)", "json"])
@given(values=st.lists(_TEXT, max_size=10))
@example(values=["a\tb\nc\\d\r", "Zoë ✓ 王芳", "", " pad "])
@PROPS
def test_text_like(conn: psycopg.Connection[Any], pg_type: str, values: list[str]) -> None:
    import json

    if pg_type == "json":
        values = [
            json.dumps({"k": v, "n": [1, 2.5, None]}, ensure_ascii=i % 2 == 0)
            for i, v in enumerate(values)
        ]
    elif pg_type == "char(8)":
        values = [v[:8] for v in values]
    _both(conn, pg_type, [*values, None])


@given(values=st.lists(_TEXT, max_size=10))
@example(values=['say "hi"\\', "\u2028", "a\u0001b"])
@PROPS
def test_jsonb(conn: psycopg.Connection[Any], values: list[str]) -> None:
    import json

    docs = [json.dumps({"b": v, "a": [True, 1e100, -0.0, {"z": None}]}) for v in values]
    _both(conn, "jsonb", [*docs, '"plain"', "[]", "{}", "null", None])


def test_booleans_uuids_and_enums(conn: psycopg.Connection[Any]) -> None:
    _both(conn, "bool", ["t", "f", None])
    _both(conn, "uuid", [str(uuid.uuid4()) for _ in range(20)] + [str(uuid.UUID(int=0)), None])
    _both(conn, "copy_binary_mood", ["ok", "sad ☹", None])


_INSTANTS = st.datetimes(
    min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)
)


@pytest.mark.parametrize("pg_type", ["timestamp", "timestamptz", "timestamp(3)", "date"])
@given(values=st.lists(_INSTANTS, max_size=20))
@PROPS
def test_dates_and_timestamps(
    conn: psycopg.Connection[Any], pg_type: str, values: list[dt.datetime]
) -> None:
    edges = [
        "infinity",
        "-infinity",
        "2000-01-01 00:00:00",
        "1999-12-31 23:59:59.999999",
        "2000-02-29 12:00:00.5",
        "1900-02-28 01:02:03.000001",
        "0044-03-15 12:00:00 BC",
        "0001-01-01 00:00:00 BC",
        "4713-11-24 00:00:00 BC",
        "29999-12-31 23:59:59",
        "1970-01-01 00:00:00",
    ]
    if pg_type == "date":
        edges += ["5874897-12-31"]
    texts = [v.isoformat(sep=" ") + ("+00" if pg_type == "timestamptz" else "") for v in values]
    _both(conn, pg_type, [*texts, *edges, None])


@pytest.mark.parametrize("binary", [True, False])
def test_the_drain_cuts_after_whole_rows_and_raises_a_copy_that_fails_midway(
    conn: psycopg.Connection[Any], binary: bool
) -> None:
    """The reader drains COPY output itself (replicator.backfill.copy_read._drain): every row
    once, parts cut after whole rows; an error the server raises after sending rows is raised
    as its own class, and the session stays usable."""
    from replicator.backfill.copy_read import _drain

    fmt = " (FORMAT binary)" if binary else ""
    with (
        conn.cursor() as cur,
        cur.copy(
            f"COPY (SELECT g, repeat('x', 50) FROM generate_series(1, 3000) g) TO STDOUT{fmt}"
        ),
    ):
        parts, last = conn.wait(_drain(conn.pgconn, binary, 10_000, conn.info.encoding))
    assert sum(n for _, n in parts) == 3000 and len(parts) > 10
    data = b"".join(p for p, _ in parts)
    if binary:
        rows = binary_tuples(data)
        assert [int.from_bytes(r[0], "big") for r in rows] == list(range(1, 3001))
        assert binary_tuples(last)[0][0] == (3000).to_bytes(4, "big")
    else:
        assert [copy_fields(line)[0] for line in data.splitlines()] == [
            str(i) for i in range(1, 3001)
        ]
    # Rows are sent before the division by zero at the 2,000th: the error still surfaces.
    with (
        pytest.raises(psycopg.errors.DivisionByZero),
        conn.cursor() as cur,
        cur.copy(f"COPY (SELECT 1 / (2000 - g) FROM generate_series(1, 3000) g) TO STDOUT{fmt}"),
    ):
        conn.wait(_drain(conn.pgconn, binary, 10_000, conn.info.encoding))
    assert conn.execute("SELECT 1").fetchone() == (1,)
