"""Every SQL twin equals its Python converter on a real server (hypothesis property tests).

For each value: the source value is loaded by psycopg from its source type (as apply and
validation load rows), the Python converter runs on it, and the compiled column runs on the
server. Python refuses -> the SQL form flags the row (it goes the Python way, which
dead-letters it). Python accepts -> for an exact twin the SQL form accepts too and gives the
same value; a conservative twin may flag the row instead, never give another value.
"""

from __future__ import annotations

import base64
import json
import string
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from replicator.errors import TransformError
from tests.support import Services
from transforms.compile import col_expr, model_checks
from transforms.converters import (
    ValueMap,
    base64url_to_sha256_hex,
    jsonb_safe,
    negate,
    sha256_hex_to_base64url,
    text_to_uuid,
    to_utc,
    uuid_to_text,
)
from transforms.declarative import Col, col, const
from transforms.mcp_manager import forward, models, reverse
from transforms.sql_twins import Expr, category, column, literal

PROPS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def conn(services: Services) -> Iterator[psycopg.Connection[Any]]:
    c = psycopg.connect(services.legacy.settings("postgres").conninfo(), autocommit=True)
    # A session zone other than UTC (the twins must not depend on it), without daylight
    # saving: psycopg loads timestamptz in the session's zone, where a time in a DST fold
    # could come back as the other instant.
    c.execute("SET TIME ZONE 'Asia/Kolkata'")
    yield c
    c.close()


def _run(
    conn: psycopg.Connection[Any], spec: Col, pg_types: list[str], values: list[Any]
) -> tuple[Any, str | None, Any, Exception | None, bool]:
    """(SQL value, SQL reject reason, Python value, Python error, twin exact)."""
    names = [f"a{i}" for i in range(len(pg_types))]
    casts = ", ".join(f"%s::{t} AS {n}" for t, n in zip(pg_types, names, strict=True))
    typed = conn.execute(f"SELECT {casts}", values).fetchone()
    assert typed is not None
    row = dict(zip(names, typed, strict=True))
    cols = {n: column(n, category(t)) for n, t in zip(names, pg_types, strict=True)}
    renamed = Col(tuple(names), spec.convert, spec.convert_none)
    expr, exact = col_expr(renamed, cols)
    reject = _reject(expr)
    got = conn.execute(
        f"SELECT {reject}, {expr.sql}, ({expr.sql}) IS NULL FROM (SELECT {casts}) s", values
    ).fetchone()
    assert got is not None
    py_value: Any = None
    py_error: Exception | None = None
    try:
        py_value = renamed.compute(row)
    except (ValueError, TypeError, TransformError) as e:
        py_error = e
    # A JSON null loads as None like SQL NULL: tell them apart, the sink writes None as NULL.
    sql_value = _SQL_NULL if got[2] else got[1]
    return sql_value, got[0], py_value, py_error, exact


class _Null:
    """SQL NULL (as distinct from a JSON null, which psycopg also loads as None)."""

    def __repr__(self) -> str:
        return "NULL"


_SQL_NULL = _Null()


def _reject(e: Expr) -> str:
    if not e.checks:
        return "NULL::text"
    return "(CASE " + " ".join(f"WHEN {c} THEN {literal(r).sql}" for c, r in e.checks) + " END)"


def _agree(
    conn: psycopg.Connection[Any],
    spec: Col,
    pg_types: list[str],
    values: list[Any],
    same: Callable[[Any, Any], bool] | None = None,
) -> None:
    sql_value, reject, py_value, py_error, exact = _run(conn, spec, pg_types, values)
    if py_error is not None:
        assert reject is not None, f"{values!r}: Python refused ({py_error}), SQL did not flag"
        return
    if exact:
        assert reject is None, f"{values!r}: Python accepted, an exact twin flagged: {reject}"
    if reject is None:
        if py_value is None or sql_value is _SQL_NULL:
            assert py_value is None and sql_value is _SQL_NULL, (
                f"{values!r}: {py_value!r} vs {sql_value!r}"
            )
            return
        ok = same(py_value, sql_value) if same else py_value == sql_value
        assert ok, f"{values!r}: Python {py_value!r} != SQL {sql_value!r}"


def _instant(a: datetime | None, b: datetime | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.tzinfo is not None and b.tzinfo is not None and a == b


# ---- ids ----------------------------------------------------------------------------------

uuid_texts = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.uuids().map(lambda u: u.urn),
    st.uuids().map(lambda u: u.hex),
    st.text(max_size=40).filter(lambda s: "\x00" not in s),
    st.none(),
)


@PROPS
@given(st.one_of(st.uuids(), st.none()))
def test_uuid_to_text(conn: psycopg.Connection[Any], value: uuid.UUID | None) -> None:
    _agree(conn, col("x", convert=uuid_to_text), ["uuid"], [value])


@PROPS
@given(uuid_texts)
@example(" 0e5f6a1c-4b8a-4d1e-9f0a-2c3b4d5e6f70")
@example("0E5F6A1C-4B8A-4D1E-9F0A-2C3B4D5E6F70")
@example("0e5f6a1c4-b8a-4d1e-9f0a-2c3b4d5e6f70")  # dashes moved, the length kept
@example("0e5f6a1c-4b8a-4d1e-9f0a-2c3b4d5e6f7-")  # a fifth dash
@example("0e5f6a1c-4b8a-4d1e-9f0a-2c3b4d5e6f7é")  # not ASCII
def test_text_to_uuid(conn: psycopg.Connection[Any], value: str | None) -> None:
    _agree(conn, col("x", convert=text_to_uuid), ["text"], [value])


# ---- time ---------------------------------------------------------------------------------

moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1))
offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@PROPS
@given(st.one_of(moments, st.none()))
def test_to_utc_naive(conn: psycopg.Connection[Any], value: datetime | None) -> None:
    _agree(conn, col("x", convert=to_utc), ["timestamp"], [value], _instant)


@PROPS
@given(st.one_of(st.builds(lambda m, z: m.replace(tzinfo=z), moments, offsets), st.none()))
def test_to_utc_aware(conn: psycopg.Connection[Any], value: datetime | None) -> None:
    _agree(conn, col("x", convert=to_utc), ["timestamptz"], [value], _instant)


# ---- digests, booleans, maps ---------------------------------------------------------------

hex_like = st.one_of(
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.binary(min_size=32, max_size=32).map(lambda b: b.hex().upper()),
    st.binary(min_size=31, max_size=33).map(bytes.hex),
    st.text(alphabet="0123456789abcdefg \n", min_size=60, max_size=66),
    st.none(),
)


@PROPS
@given(hex_like)
@example("a" * 64 + "\n")
@example("a" * 63 + "é")
def test_sha256_hex_to_base64url(conn: psycopg.Connection[Any], value: str | None) -> None:
    _agree(conn, col("x", convert=sha256_hex_to_base64url), ["text"], [value])


b64_like = st.one_of(
    st.binary(min_size=32, max_size=32).map(
        lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    ),
    st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet=string.ascii_letters + string.digits + "-_=+/", min_size=40, max_size=46),
    st.none(),
)


@PROPS
@given(b64_like)
@example("A" * 42 + "B")  # the last character's low bits are not zero
@example("A" * 42 + "-")
@example("A" * 41 + "=A")
def test_base64url_to_sha256_hex(conn: psycopg.Connection[Any], value: str | None) -> None:
    _agree(conn, col("x", convert=base64url_to_sha256_hex), ["text"], [value])


@pytest.mark.parametrize("value", [True, False, None])
def test_negate(conn: psycopg.Connection[Any], value: bool | None) -> None:
    _agree(conn, col("x", convert=negate), ["boolean"], [value])


@pytest.mark.parametrize("value", [True, False, None])
@pytest.mark.parametrize("none", [False, True])
def test_value_map_bool_every_entry(
    conn: psycopg.Connection[Any], value: bool | None, none: bool
) -> None:
    _agree(conn, col("x", convert=forward.ROLE, none=none), ["boolean"], [value])


TRANSPORT = ValueMap({"stdio": "local", "sse": "remote", "streamable_http": "remote-http"})


@pytest.mark.parametrize("value", ["stdio", "sse", "streamable_http", "ftp", "", "SSE", None])
def test_value_map_text_every_entry_and_outside(
    conn: psycopg.Connection[Any], value: str | None
) -> None:
    _agree(conn, col("x", convert=TRANSPORT, none=True), ["text"], [value])


@pytest.mark.parametrize("value", [True, 0, "credential", "it's", 2**40])
def test_constants(conn: psycopg.Connection[Any], value: Any) -> None:
    _agree(conn, const(value), [], [])


# ---- JSON ---------------------------------------------------------------------------------

json_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_text, inner, max_size=4),
    max_leaves=12,
)
json_docs = st.builds(
    lambda v, ascii_only: json.dumps(v, ensure_ascii=ascii_only), json_values, st.booleans()
)


@PROPS
@given(st.one_of(json_docs, st.none()))
@example('{"a": "x\\u0000y"}')
@example('{"k\\u0000": 1}')
@example('["\\\\u0000"]')
@example('"\\ud83d\\ude00"')
def test_jsonb_safe(conn: psycopg.Connection[Any], value: str | None) -> None:
    def stored_alike(py: Any, sql: Any) -> bool:
        # As the target stores them: the sink writes the Python value as JSON into jsonb
        # (2.306928049134981e+16 becomes the numeric 23069280491349810, as SQL's cast does).
        row = conn.execute(
            "SELECT %s::jsonb IS NOT DISTINCT FROM %s::jsonb",
            [None if py is None else json.dumps(py), None if sql is None else json.dumps(sql)],
        ).fetchone()
        return bool(row and row[0])

    _agree(conn, col("x", convert=jsonb_safe), ["json"], [value], stored_alike)


scope_items = st.one_of(
    st.from_regex(r"[a-z]{1,6}:[a-z*]{1,6}", fullmatch=True),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    st.sampled_from(
        ["a:b:c", ":x", "x:", "x", 'q"uote:\\back', "tab\t:x", "é:ü", "a, b:c", "x:y, z", "s/l:x"]
    ),
)


@PROPS
@given(st.lists(scope_items, max_size=6))
def test_permissions_and_metadata_from_scopes(
    conn: psycopg.Connection[Any], scopes: list[str]
) -> None:
    doc = json.dumps(scopes)
    _agree(conn, col("x", convert=forward.permissions_from_scopes), ["json"], [doc])
    _agree(conn, col("x", convert=forward.metadata_from_scopes), ["json"], [doc])


# ---- the MCP mapping's own converters and validators ---------------------------------------

emails = st.one_of(
    st.emails(),
    st.emails().map(str.upper),
    st.text(max_size=20).filter(lambda s: "\x00" not in s),
    st.sampled_from(["A@b.co", "a@b.co", "ß@x.de", "İ@x.tr", "a b@c.d", "a@b", "a@@b.c"]),
)


@PROPS
@given(emails)
def test_email_lower_and_the_email_validator(conn: psycopg.Connection[Any], value: str) -> None:
    _agree(conn, col("x", convert=forward.email_lower), ["text"], [value])
    _agree_check(conn, models.LegacyUser, "email", "text", value)


@PROPS
@given(st.one_of(st.none(), st.just(""), st.text(max_size=10).filter(lambda s: "\x00" not in s)))
def test_name_and_full_name(conn: psycopg.Connection[Any], value: str | None) -> None:
    _agree(conn, col("x", convert=forward.name_from_full_name, none=True), ["text"], [value])
    _agree(conn, col("x", convert=reverse.full_name_from_name), ["text"], [value])
    _agree(conn, col("x", convert=reverse.require_password, none=True), ["text"], [value])
    _agree(conn, col("x", convert=reverse.empty_if_null, none=True), ["text"], [value])


roles = st.one_of(
    st.none(),
    st.sampled_from(["admin", "user", "user, admin", "admin ", "administrator", "ADMIN", ""]),
    st.sampled_from(["user,\tadmin", "admin\u00a0", ",admin,"]),
    st.text(alphabet="admin, u\t", max_size=12),
)


@PROPS
@given(roles, st.one_of(st.none(), st.booleans()))
def test_role_and_banned(conn: psycopg.Connection[Any], role: str | None, banned: Any) -> None:
    _agree(conn, col("x", convert=reverse.superuser_from_role, none=True), ["text"], [role])
    _agree(conn, col("x", convert=reverse.is_active_from_banned, none=True), ["boolean"], [banned])


aware = st.one_of(st.none(), st.builds(lambda m, z: m.replace(tzinfo=z), moments, offsets))


@PROPS
@given(aware, st.one_of(st.none(), st.booleans()), aware)
def test_expiry_from(
    conn: psycopg.Connection[Any], expires: datetime | None, enabled: Any, updated: Any
) -> None:
    spec = col("e", "n", "u", convert=reverse.expiry_from)
    _agree(
        conn, spec, ["timestamptz", "boolean", "timestamptz"], [expires, enabled, updated], _instant
    )


@PROPS
@given(st.one_of(st.integers(-(2**63), 2**63 - 1), st.none()))
@example(0)
def test_bigint_id_validator(conn: psycopg.Connection[Any], value: int | None) -> None:
    _agree_check(conn, models.LegacyAudit, "id", "bigint", value)


@PROPS
@given(st.lists(scope_items, max_size=4).map(json.dumps) | st.sampled_from(['{"a": 1}', "[1]"]))
@example('["\\u0000"]')  # no text form: flagged for the Python path, never a failed query
@example('["read", "a\\u0000b"]')
def test_scopes_validator(conn: psycopg.Connection[Any], doc: str) -> None:
    _agree_check(conn, models.LegacyApiKey, "scopes", "json", doc)


@PROPS
@given(
    st.builds(
        lambda v, ascii_only, pretty: json.dumps(v, ensure_ascii=ascii_only, indent=pretty),
        st.lists(json_values, max_size=4) | st.lists(json_text, max_size=4) | json_values,
        st.booleans(),
        st.sampled_from([None, 1]),
    ),
    st.sampled_from(["json", "jsonb"]),
)
@example('["a\\"b", "c\\\\", "\\u00e9", "\\/"]', "json")  # escapes inside the items
@example('["x", "\\u0000"]', "json")  # no text form: flagged, never a failed query
@example('["x", null]', "json")
@example('[["x"]]', "jsonb")
@example('[ "a" ,\n "b" ]', "json")
def test_list_of_strings_validator(conn: psycopg.Connection[Any], doc: str, pg_type: str) -> None:
    # A list[str] field with no item validators is checked by one regular expression over
    # the JSON text (transforms.compile._list_checks).
    if pg_type == "jsonb" and "\\u0000" in doc:
        return  # jsonb refuses the document itself
    # Inexact only for a \u0000 escape: any other list the model takes passes.
    exact_here = "\\u0000" not in doc
    _agree_check(conn, models.LegacyServer, "args", pg_type, doc, exact_here=exact_here)


@PROPS
@given(uuid_texts)
@example("0e5f6a1c4-b8a-4d1e-9f0a-2c3b4d5e6f70")
@example("0e5f6a1c-4b8a-4d1e-9f0a-2c3b4d5e6f7-")
def test_uuid_text_validator(conn: psycopg.Connection[Any], value: str | None) -> None:
    _agree_check(conn, models.TargetUser, "id", "text", value)


def _agree_check(
    conn: psycopg.Connection[Any],
    model: Any,
    field: str,
    pg_type: str,
    value: Any,
    *,
    exact_here: bool = False,
) -> None:
    """A row model's SQL checks flag every value the model refuses (exact ones, or all where
    the caller knows the value is outside what makes them inexact: only those)."""
    from transforms.declarative import RowValidator

    typed = conn.execute(f"SELECT %s::{pg_type}", [value]).fetchone()
    assert typed is not None
    refused = RowValidator(model).check({field: typed[0]}) is not None
    checks, exact = model_checks(model, {field: column("x", category(pg_type))})
    reject = _reject(Expr("x", "?", tuple(checks)))
    got = conn.execute(f"SELECT {reject} FROM (SELECT %s::{pg_type} AS x) s", [value]).fetchone()
    assert got is not None
    if refused:
        assert got[0] is not None, f"{value!r}: the model refused it, SQL did not flag"
    elif exact or exact_here:
        assert got[0] is None, f"{value!r}: the model accepted it, SQL flagged {got[0]}"


def test_aware_results_are_utc(conn: psycopg.Connection[Any]) -> None:
    v, reject, py, err, _ = _run(
        conn, col("x", convert=to_utc), ["timestamp"], [datetime(2020, 1, 1, 12)]
    )
    assert err is None and reject is None
    assert v == py == datetime(2020, 1, 1, 12, tzinfo=UTC)
