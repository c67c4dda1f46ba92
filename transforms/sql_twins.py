"""SQL twins of converters and validators: the same function as a SQL expression.

A twin takes its arguments as :class:`Expr` (SQL text over the source columns, with a type
category) and returns an :class:`Expr` for the converted value plus *checks*: SQL conditions
under which the SQL form cannot vouch for the row (the Python function would refuse it, or the
SQL form might differ from Python's). A row whose check holds is taken out of the SQL path and
given to the Python transform, which either maps it or dead-letters it with its own reason, so
a check may be conservative (flag more rows than Python refuses) but never miss one. Value
expressions are guarded (``CASE WHEN valid THEN ... END``) so that a flagged row never makes the
statement fail: one bad row must not abort a chunk.

Twins of the converters in :mod:`transforms.converters` are registered here; a mapping registers
twins of its own functions with :func:`sql_twin` and :func:`sql_check` (see
``transforms/mcp_manager/sql.py``). The property tests in tests/integration/test_sql_twins.py
prove each twin equal to its function on a real server. Pure text: no database here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

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

Check = tuple[str, str]  # (SQL condition: the SQL form cannot vouch for the row, reason)

# Type categories of source columns and expressions (see category()).
TEXT, UUID, BOOL, INT, NUMERIC, FLOAT = "text", "uuid", "bool", "int", "numeric", "float"
JSON, JSONB, TSTZ, TS, DATE, UNKNOWN = "json", "jsonb", "timestamptz", "timestamp", "date", "?"


class NotCompilable(Exception):
    """This transform (or part of it) has no SQL form; the reason says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Expr:
    """A SQL expression over the source columns, its type category and its checks."""

    sql: str
    type: str
    checks: tuple[Check, ...] = ()
    # A JSON source column as stored (``sql`` reads a JSON null as SQL NULL): what substring
    # tests of its text read, where the two do not differ (see :func:`unsafe_json`).
    raw: str | None = None
    # NULL for a NULL argument, and no check holds then: the NULL pass-through a converter
    # gets (transforms.compile.col_expr) would only test the argument once more per row.
    null_safe: bool = False

    def guarded(self, cond: str) -> Expr:
        """Only computed where ``cond`` holds (NULL elsewhere); the checks are kept."""
        return Expr(
            f"(CASE WHEN {cond} THEN {self.sql} END)",
            self.type,
            self.checks,
            null_safe=self.null_safe,
        )


def category(type_name: str, *, enum: bool = False) -> str:
    """The category of a column from its ``format_type()``; ``enum`` for user enums (text)."""
    t = type_name.lower()
    if enum or t in ("text", "name", "citext", "character varying", "character", "bpchar"):
        return TEXT
    if t.startswith(("character varying(", "character(")):
        return TEXT
    simple = {
        "uuid": UUID,
        "boolean": BOOL,
        "smallint": INT,
        "integer": INT,
        "bigint": INT,
        "real": FLOAT,
        "double precision": FLOAT,
        "json": JSON,
        "jsonb": JSONB,
        "timestamp with time zone": TSTZ,
        "timestamp without time zone": TS,
        "date": DATE,
        # short names, as SQL accepts them
        "timestamptz": TSTZ,
        "timestamp": TS,
        "bool": BOOL,
        "int2": INT,
        "int4": INT,
        "int8": INT,
        "int": INT,
    }
    if t in simple:
        return simple[t]
    if t.startswith("numeric"):
        return NUMERIC
    if t.startswith("timestamp(") and "with time zone" in t:
        return TSTZ
    if t.startswith("timestamp("):
        return TS
    return UNKNOWN


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    if "\x00" in name:
        raise NotCompilable(f"identifier {name!r} holds a NUL")
    return '"' + name.replace('"', '""') + '"'


def column(name: str, type_category: str, *, enum: bool = False) -> Expr:
    """A source column; an enum is read as its label text (its type is not on the other side)."""
    if enum:
        return Expr(f"{ident(name)}::text", TEXT)
    if type_category in (JSON, JSONB):
        # psycopg loads a JSON null as None, which the Python path then writes as SQL NULL.
        q = ident(name)
        return Expr(
            f"(CASE WHEN {type_category}_typeof({q}) <> 'null' THEN {q} END)",
            type_category,
            raw=q,
        )
    return Expr(ident(name), type_category)


def literal(value: Any) -> Expr:
    """A Python constant as a SQL literal of its type."""
    if value is None:
        return Expr("NULL", UNKNOWN)
    if isinstance(value, bool):
        return Expr("true" if value else "false", BOOL)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise NotCompilable(f"{value} is outside bigint")
        return Expr(f"{value}::bigint", INT)
    if isinstance(value, str):
        if "\x00" in value:
            raise NotCompilable("a text constant holds a NUL, which PostgreSQL text cannot")
        return Expr("'" + value.replace("'", "''") + "'::text", TEXT)
    if isinstance(value, uuid.UUID):
        return Expr(f"'{value}'::uuid", UUID)
    raise NotCompilable(f"no SQL literal for a {type(value).__name__} constant")


def string_literal(value: str) -> str:
    return literal(value).sql


def merge_checks(*exprs: Expr) -> tuple[Check, ...]:
    return tuple(c for e in exprs for c in e.checks)


# ---- the registry -------------------------------------------------------------------------

Builder = Callable[..., Expr]
CheckBuilder = Callable[[Expr], list[Check]]


@dataclass(frozen=True, slots=True)
class Twin:
    build: Builder
    # False: some checks are conservative (they flag rows the function accepts: those go the
    # Python way). The property tests then only require "refused => flagged".
    exact: bool = True


_TWINS: dict[Callable[..., Any], Twin] = {}
_CHECKS: dict[Callable[..., Any], tuple[CheckBuilder, bool]] = {}


def sql_twin(fn: Callable[..., Any], *, exact: bool = True) -> Callable[[Builder], Builder]:
    """Register the decorated builder (``Expr`` args -> ``Expr``) as ``fn``'s SQL twin."""

    def register(builder: Builder) -> Builder:
        _TWINS[fn] = Twin(builder, exact)
        return builder

    return register


def sql_check(
    fn: Callable[..., Any], *, exact: bool = True
) -> Callable[[CheckBuilder], CheckBuilder]:
    """Register the SQL form of a validator (``AfterValidator(fn)`` in a row model): the
    decorated builder gives the conditions under which ``fn`` would refuse the value."""

    def register(builder: CheckBuilder) -> CheckBuilder:
        _CHECKS[fn] = (builder, exact)
        return builder

    return register


# The SQL form of a validator over a whole JSON list of strings (``list[Annotated[str,
# AfterValidator(fn)]]``): one condition over the list's JSON (an :class:`Expr`, already known to
# be an array) that holds where some item is not a string or fails ``fn``. Conservative (it
# may flag lists ``fn`` accepts); it spares reading the items one by one in a subquery, which
# costs several microseconds per row.
ListCheckBuilder = Callable[[Expr], str]
_LIST_CHECKS: dict[Callable[..., Any], ListCheckBuilder] = {}


def sql_list_check(fn: Callable[..., Any]) -> Callable[[ListCheckBuilder], ListCheckBuilder]:
    """Register the decorated builder as the whole-list form of ``fn``'s check."""

    def register(builder: ListCheckBuilder) -> ListCheckBuilder:
        _LIST_CHECKS[fn] = builder
        return builder

    return register


_TEXT_KEYS: set[Callable[..., Any]] = set()
_F = TypeVar("_F", bound=Callable[..., Any])


def takes_key_text(fn: _F) -> _F:
    """Declare that ``fn`` (a converter of source key columns with no SQL twin, computed in
    Python per key) gives the same result for each argument's text, ``str(value)``, as for the
    value itself: the compiled forms then pass it the server's text of uuid, integer and text
    keys, and neither side builds a Python object per value (a uuid object and its printing
    were most of a uuid5 id's cost). Prove it with a property test."""
    _TEXT_KEYS.add(fn)
    return fn


def reads_key_text(fn: Callable[..., Any]) -> bool:
    try:
        return fn in _TEXT_KEYS
    except TypeError:  # an unhashable callable
        return False


def list_check_of(fn: Callable[..., Any]) -> ListCheckBuilder | None:
    try:
        return _LIST_CHECKS.get(fn)
    except TypeError:
        return None


# JSON text of an array of plain strings (printable ASCII, no space; the escapes \" and \\
# alone), with JSON's white space around the tokens: a regular expression, for checks in the
# style of :func:`sql_list_check`. ``item`` is the pattern of one string, quotes included.
JSON_WS = "[ \\t\\n\\r]*"


def json_string_array_re(item: str) -> str:
    return f"^{JSON_WS}\\[{JSON_WS}(?:{item}(?:{JSON_WS},{JSON_WS}{item})*)?{JSON_WS}\\]{JSON_WS}$"


# Any JSON string token (the text is valid JSON: a backslash always starts an escape).
JSON_STRING = '"(?:[^"\\\\]|\\\\.)*"'

# One character of such a string: printable ASCII but space, quote and backslash, or \" or \\.
JSON_PLAIN_CHAR = '(?:[!#-\\[\\]-~]|\\\\["\\\\])'


def twin_of(fn: Callable[..., Any]) -> Twin | None:
    if isinstance(fn, ValueMap):
        return Twin(lambda x: value_map_sql(fn, x))
    try:
        return _TWINS.get(fn) or _DERIVED.get(fn)
    except TypeError:  # an unhashable callable
        return None


# Forms derived from converters' code (transforms.derive), each registered only once proved
# equal to its function on the real server (replicator.derived): the process's current proofs.
_DERIVED: dict[Callable[..., Any], Twin] = {}


def hand_twin_of(fn: Callable[..., Any]) -> Twin | None:
    """A twin written by hand (or a ValueMap's), not a derived form."""
    if isinstance(fn, ValueMap):
        return twin_of(fn)
    try:
        return _TWINS.get(fn)
    except TypeError:
        return None


def forget_derived() -> None:
    """Stop using every derived form (they are proved again before the next use)."""
    _DERIVED.clear()


def use_derived(fn: Callable[..., Any], build: Builder | None) -> None:
    """Use ``build`` (a proved derived form) as ``fn``'s twin; None: stop using one."""
    if build is None:
        _DERIVED.pop(fn, None)
    else:
        # Not exact: a derived form's checks may flag rows the function accepts (non-ASCII
        # text for .lower(), say); those go the Python way.
        _DERIVED[fn] = Twin(build, exact=False)


def check_of(fn: Callable[..., Any]) -> tuple[CheckBuilder, bool] | None:
    try:
        return _CHECKS.get(fn)
    except TypeError:
        return None


def apply_twin(fn: Callable[..., Any], args: Iterable[Expr]) -> Expr:
    twin = twin_of(fn)
    if twin is None:
        name = getattr(fn, "__qualname__", type(fn).__name__)
        raise NotCompilable(f"{name} has no SQL twin")
    return twin.build(*args)


def _need(fn: str, x: Expr, *types: str) -> None:
    if x.type not in types:
        raise NotCompilable(
            f"{fn} takes {' or '.join(types)}, the source column is {x.type}: "
            "the Python function refuses every such value"
        )


# Printable ASCII only: where Python's str methods and PostgreSQL's (locale-dependent) ones
# are known to agree. Other text is left to the Python path by conservative checks.
NOT_PLAIN_ASCII = "[^ -~]"


# Tests of a fixed-length form, each equal to a regular expression such as `^[0-9a-f]{64}$` but
# written without the bounded repetition: PostgreSQL's regex engine unrolls `{64}` into 64
# states, which cost 5-6 µs a value (a third of a whole api_key row's validation) where a length
# and a character-class test cost 0.5 µs. NULL gives NULL, as the regular expression did.
def is_canonical_uuid(x: str) -> str:
    """``x ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'``"""
    dashes = " AND ".join(f"substr({x}, {i}, 1) = '-'" for i in (9, 14, 19, 24))
    return (
        f"(length({x}) = 36 AND {x} !~ '[^0-9a-f-]' AND {dashes}"
        f" AND length(replace({x}, '-', '')) = 32)"
    )


def is_hex64(x: str) -> str:
    """``x ~ '^[0-9a-f]{64}$'``"""
    return f"(length({x}) = 64 AND {x} !~ '[^0-9a-f]')"


def is_base64url43(x: str) -> str:
    """``x ~ '^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$'`` (32 bytes, the last 2 bits zero)."""
    return (
        f"(length({x}) = 43 AND {x} !~ '[^A-Za-z0-9_-]'"
        f" AND strpos('AEIMQUYcgkosw048', right({x}, 1)) > 0)"
    )


def unsafe_json(x: Expr) -> list[Check]:
    """JSON text (``x`` is a json expression) that the SQL form leaves to Python: a \\u0000
    escape (jsonb refuses it, the server cannot de-escape it to text) or a \\u escape of a
    surrogate (jsonb refuses a lone one). Conservative: an escaped backslash before "u0000"
    is flagged too; plain substring tests keep this cheap on every row. Tested on the stored
    column where ``x`` is one: a JSON null holds no escape, so the answer is the same without
    the null test repeated in every check."""
    t = f"({x.raw or x.sql})::text"
    # The regular expression runs only on text with a \u escape at all (most JSON has none).
    surrogate = f"strpos({t}, '\\u') > 0 AND {t} ~ '\\\\u[dD][89abAB]'"
    return [
        (f"strpos({t}, '\\u0000') > 0", "JSON contains a NUL character (\\u0000)"),
        (f"({surrogate})", "JSON escapes a surrogate (Python path)"),
    ]


@sql_twin(uuid_to_text)
def _uuid_to_text(x: Expr) -> Expr:
    _need("uuid_to_text", x, UUID)
    return Expr(f"({x.sql})::text", TEXT, x.checks)


@sql_twin(text_to_uuid)
def _text_to_uuid(x: Expr) -> Expr:
    if x.type == UUID:
        return x
    _need("text_to_uuid", x, TEXT)
    ok = is_canonical_uuid(f"({x.sql})")
    bad = (f"NOT ({ok})", "not a canonical lower-case UUID")
    return Expr(f"({x.sql})::uuid", UUID, (*x.checks, bad)).guarded(ok)


@sql_twin(to_utc)
def _to_utc(x: Expr) -> Expr:
    if x.type == TSTZ:
        return x
    _need("to_utc", x, TS)
    return Expr(f"(({x.sql}) AT TIME ZONE 'UTC')", TSTZ, x.checks)


@sql_twin(sha256_hex_to_base64url)
def _sha_b64(x: Expr) -> Expr:
    _need("sha256_hex_to_base64url", x, TEXT)
    ok = is_hex64(f"({x.sql})")
    value = (
        f"rtrim(translate(encode(decode({x.sql}, 'hex'), 'base64'), '+/' || chr(10), '-_'), '=')"
    )
    bad = (f"NOT ({ok})", "not a SHA-256 hex digest (64 lower-case hex characters)")
    return Expr(value, TEXT, (*x.checks, bad)).guarded(ok)


@sql_twin(base64url_to_sha256_hex)
def _b64_sha(x: Expr) -> Expr:
    _need("base64url_to_sha256_hex", x, TEXT)
    ok = is_base64url43(f"({x.sql})")
    value = f"encode(decode(translate({x.sql}, '-_', '+/') || '=', 'base64'), 'hex')"
    bad = (f"NOT ({ok})", "not a SHA-256 digest in base64url (43 characters, no padding)")
    return Expr(value, TEXT, (*x.checks, bad)).guarded(ok)


@sql_twin(negate)
def _negate(x: Expr) -> Expr:
    _need("negate", x, BOOL)
    return Expr(f"(NOT ({x.sql}))", BOOL, x.checks)


@sql_twin(jsonb_safe, exact=False)
def _jsonb_safe(x: Expr) -> Expr:
    if x.type == JSONB:
        return x  # jsonb holds no NUL
    _need("jsonb_safe", x, JSON)
    nul, sur = unsafe_json(x)
    ok = f"NOT ({nul[0]} OR {sur[0]})"
    if x.raw is not None:
        # The stored column parsed once, its JSON null made SQL NULL after the parse (the
        # column's own null test reads the document a second time, before it): NULL in, NULL
        # out, and the checks read the stored text, which holds no escape then.
        value = f"NULLIF(({x.raw})::jsonb, 'null'::jsonb)"
        return Expr(value, JSONB, (*x.checks, nul, sur), null_safe=True).guarded(ok)
    return Expr(f"({x.sql})::jsonb", JSONB, (*x.checks, nul, sur)).guarded(ok)


def _literal_type(values: Iterable[Hashable]) -> str:
    types = {literal(v).type for v in values}
    if len(types) != 1:
        raise NotCompilable("a ValueMap whose keys or values mix types")
    return types.pop()


def value_map_sql(vm: ValueMap[Any, Any], x: Expr) -> Expr:
    """``CASE x WHEN k THEN v ... END``; a value outside the map (NULL included) is flagged."""
    mapping: Mapping[Any, Any] = vm._forward
    if not mapping:
        raise NotCompilable(f"{vm.name}: an empty ValueMap")
    kt = _literal_type(mapping)
    if kt != x.type and not (kt == TEXT and x.type == TEXT):
        raise NotCompilable(f"{vm.name}: the map's keys are {kt}, the column is {x.type}")
    vt = _literal_type(mapping.values())
    arms = " ".join(f"WHEN {literal(k).sql} THEN {literal(v).sql}" for k, v in mapping.items())
    keys = ", ".join(literal(k).sql for k in mapping)
    bad = (f"({x.sql}) IS NULL OR ({x.sql}) NOT IN ({keys})", f"{vm.name} is not in the map")
    return Expr(f"(CASE {x.sql} {arms} END)", vt, (*x.checks, bad))


# ---- canonical text, alike on both servers -------------------------------------------------


def canonical(x: Expr, target_type: str, *, target_enum: bool = False) -> str:
    """SQL for the canonical text of ``x`` as stored in a target column of ``target_type``.

    Both sides use the same builtin casts (sessions in UTC, ISO dates), so equal stored values
    give equal text on any server; casts that could fail are refused here, not at run time.
    """
    tc = category(target_type, enum=target_enum)
    src = x.type
    same = {
        TEXT: {TEXT, UUID},
        UUID: {UUID},
        BOOL: {BOOL},
        INT: {INT},
        NUMERIC: {NUMERIC, INT},
        FLOAT: {FLOAT, INT},
        JSONB: {JSON, JSONB},
        JSON: {JSON, JSONB},
        TSTZ: {TSTZ},
        TS: {TS},
        DATE: {DATE},
    }
    if src == UNKNOWN and x.sql == "NULL":
        return "NULL::text"
    if tc not in same or src not in same[tc]:
        raise NotCompilable(f"a {src} value written into a {target_type} column has no SQL check")
    if tc == TEXT:
        return f"({x.sql})::text"
    if tc == NUMERIC:
        return f"trim_scale(({x.sql})::numeric)::text"
    if tc in (JSON, JSONB):
        return f"({x.sql})::jsonb::text"
    if tc == INT:
        return f"({x.sql})::bigint::text"
    if tc == FLOAT:
        return f"({x.sql})::float8::text"
    return f"({x.sql})::text"
