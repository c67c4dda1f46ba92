"""SQL twins of the MCP mapping's own converters and validators (see transforms.sql_twins).

Importing this module registers them; ``transforms.mcp_manager`` does so with the mapping.
Text tests that Python and PostgreSQL may answer differently (case, whitespace beyond ASCII)
are flagged conservatively: such rows take the Python path, which decides them.
"""

from __future__ import annotations

from transforms.converters import to_utc
from transforms.mcp_manager import forward, models, reverse
from transforms.sql_twins import (
    BOOL,
    INT,
    JSON,
    JSON_PLAIN_CHAR,
    JSONB,
    NOT_PLAIN_ASCII,
    TEXT,
    TS,
    TSTZ,
    Check,
    Expr,
    NotCompilable,
    apply_twin,
    is_canonical_uuid,
    json_string_array_re,
    merge_checks,
    sql_check,
    sql_list_check,
    sql_twin,
    unsafe_json,
)


def _need(what: str, x: Expr, *types: str) -> None:
    if x.type not in types:
        raise NotCompilable(f"{what} takes {' or '.join(types)}, the column is {x.type}")


# ---- forward ------------------------------------------------------------------------------


@sql_twin(forward.email_lower, exact=False)
def _email_lower(x: Expr) -> Expr:
    _need("email_lower", x, TEXT)
    bad = (
        f"({x.sql}) <> lower({x.sql}) OR ({x.sql}) ~ '{NOT_PLAIN_ASCII}'",
        "email is not lower-case (or not plain ASCII: decided by the Python path)",
    )
    return Expr(x.sql, TEXT, (*x.checks, bad))


@sql_twin(forward.name_from_full_name)
def _name_from_full_name(x: Expr) -> Expr:
    _need("name_from_full_name", x, TEXT)
    bad = (f"({x.sql}) = ''", "full_name is '' which the target cannot tell from NULL")
    return Expr(f"coalesce({x.sql}, '')", TEXT, (*x.checks, bad))


@sql_twin(forward.permissions_from_scopes, exact=False)
def _permissions(x: Expr) -> Expr:
    # {"resource": ["action", ...]} with resources in order of first appearance, compact JSON.
    # Only a list of plain strings is computed here (any other goes the Python way): each
    # item's JSON text is then cut at its first colon as it stands, with no de-escaping and
    # quoting again, and one level of subquery orders the items by their resource's first
    # position, then their own (a third less per row than grouping them in a second level).
    _need("permissions_from_scopes", x, JSON, JSONB)
    j = "json" if x.type == JSON else "jsonb"
    item, part = "s.v::text", "strpos(s.v::text, ':')"
    sql = (
        "(SELECT coalesce(string_agg(CASE WHEN w.o = w.fo THEN CASE WHEN w.fo = 1 THEN '{'"
        " ELSE '],' END || w.r || ':[' ELSE ',' END || w.a, '' ORDER BY w.fo, w.o) || ']}',"
        " '{}') FROM (SELECT p.*, min(p.o) OVER (PARTITION BY p.r) AS fo FROM (SELECT"
        f" CASE WHEN {part} > 0 THEN left({item}, {part} - 1) || '\"' ELSE {item} END AS r,"
        f" CASE WHEN {part} > 0 THEN '\"' || substr({item}, {part} + 1) ELSE '\"\"' END AS a,"
        f" s.o FROM {j}_array_elements({x.sql}) WITH ORDINALITY AS s(v, o)) p) w)"
    )
    e = _guard_list(x, sql)
    return Expr(e.sql, e.type, (*e.checks, _not_plain(x)))


def _not_plain(x: Expr) -> Check:
    plain = json_string_array_re(f'"{JSON_PLAIN_CHAR}*"')
    return (f"({x.sql})::text !~ '{plain}'", "scopes is not a list of plain strings (Python path)")


@sql_twin(forward.metadata_from_scopes, exact=False)
def _metadata(x: Expr) -> Expr:
    # {"scopes": [...]} in compact JSON. For a list of plain strings (printable ASCII, no
    # space) jsonb prints the list as json.dumps does but for ", " between items (a space it
    # never prints inside such an item): no subquery reading the items. Any other list goes
    # the Python way.
    _need("metadata_from_scopes", x, JSON, JSONB)
    e = _guard_list(x, f"('{{\"scopes\":' || replace(({x.sql})::jsonb::text, ', ', ',') || '}}')")
    return Expr(e.sql, e.type, (*e.checks, _not_plain(x)))


def _guard_list(x: Expr, sql: str) -> Expr:
    # The elements are read as text, which the server cannot do for a \u0000 escape: such
    # JSON is flagged, and the value not computed, so the statement never fails on it.
    j = "json" if x.type == JSON else "jsonb"
    unsafe = unsafe_json(x) if x.type == JSON else []
    bad = [(f"{j}_typeof({x.sql}) <> 'array'", "scopes is not a list"), *unsafe]
    ok = " AND ".join(f"NOT ({c})" for c, _ in bad)
    return Expr(sql, TEXT, (*x.checks, *bad)).guarded(ok)


@sql_check(models._email, exact=False)
def _email_check(x: Expr) -> list[Check]:
    # Within printable ASCII, Python's \s is the space alone.
    return [
        (
            f"({x.sql}) ~ '{NOT_PLAIN_ASCII}' OR ({x.sql}) !~ '^[^@ ]+@[^@ ]+\\.[^@ ]+$'",
            "not an email address",
        )
    ]


@sql_check(models._scope, exact=False)
def _scope_check(x: Expr) -> list[Check]:
    return [
        (
            f"({x.sql}) ~ '{NOT_PLAIN_ASCII}' OR ({x.sql}) !~ '^[^: ]+:[^ ]+$'",
            "scope is not of the form resource:action",
        )
    ]


@sql_list_check(models._scope)
def _scopes_check(x: Expr) -> str:
    # Items of plain printable ASCII (\" and \\ the only escapes): resource, colon, action.
    head = '(?:[!#-9;-\\[\\]-~]|\\\\["\\\\])'  # no colon either
    item = f'"{head}+:{JSON_PLAIN_CHAR}+"'
    return f"({x.sql})::text !~ '{json_string_array_re(item)}'"


@sql_check(models._positive_bigint)
def _positive_check(x: Expr) -> list[Check]:
    _need("a bigint id", x, INT)
    return [(f"({x.sql}) <= 0", "outside bigint's positive range")]


@sql_check(models._uuid_text)
def _uuid_text_check(x: Expr) -> list[Check]:
    _need("a UUID text id", x, TEXT)
    return [(f"NOT {is_canonical_uuid(f'({x.sql})')}", "not a canonical lower-case UUID")]


# ---- reverse ------------------------------------------------------------------------------


@sql_twin(reverse.full_name_from_name)
def _full_name(x: Expr) -> Expr:
    _need("full_name_from_name", x, TEXT)
    return Expr(f"nullif({x.sql}, '')", TEXT, x.checks)


@sql_twin(reverse.is_active_from_banned)
def _is_active(x: Expr) -> Expr:
    _need("is_active_from_banned", x, BOOL)
    return Expr(f"(({x.sql}) IS NOT TRUE)", BOOL, x.checks)


@sql_twin(reverse.superuser_from_role, exact=False)
def _superuser(x: Expr) -> Expr:
    _need("superuser_from_role", x, TEXT)
    sql = (
        f"EXISTS (SELECT 1 FROM unnest(string_to_array({x.sql}, ',')) AS r(v)"
        " WHERE btrim(r.v, ' ') = 'admin')"
    )
    # Python's strip() removes every kind of white space; btrim here only the space.
    bad = (f"({x.sql}) ~ '{NOT_PLAIN_ASCII}'", "role is not plain ASCII (Python path)")
    return Expr(sql, BOOL, (*x.checks, bad))


@sql_twin(reverse.require_password)
def _require_password(x: Expr) -> Expr:
    _need("require_password", x, TEXT)
    bad = (f"({x.sql}) IS NULL", "a credential account without a password")
    return Expr(x.sql, TEXT, (*x.checks, bad))


@sql_twin(reverse.empty_if_null)
def _empty_if_null(x: Expr) -> Expr:
    _need("empty_if_null", x, TEXT)
    return Expr(f"coalesce({x.sql}, '')", TEXT, x.checks)


@sql_twin(reverse.expiry_from)
def _expiry_from(expires_at: Expr, enabled: Expr, updated_at: Expr) -> Expr:
    _need("expiry_from(enabled)", enabled, BOOL)
    for t in (expires_at, updated_at):
        _need("expiry_from", t, TSTZ, TS)
    ea, ua = apply_twin(to_utc, [expires_at]), apply_twin(to_utc, [updated_at])
    sql = (
        f"(CASE WHEN ({enabled.sql}) IS FALSE THEN (CASE WHEN ({ea.sql}) IS NULL THEN {ua.sql}"
        f" ELSE least({ea.sql}, {ua.sql}) END) ELSE {ea.sql} END)"
    )
    bad = (
        f"({enabled.sql}) IS FALSE AND ({ua.sql}) IS NULL",
        "a disabled key without updated_at",
    )
    return Expr(sql, TSTZ, (*merge_checks(expires_at, enabled, updated_at), bad))
