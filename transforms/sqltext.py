"""SQL an operator can paste: identifiers quoted exactly as PostgreSQL's ``quote_ident`` does.

``replicator check`` prints fixes as statements. An unquoted ``branchId`` is folded to
``branchid`` and an unquoted ``user`` is a syntax error, so every name goes through
:func:`quote_ident`. Pure (no connection): psycopg's quoting needs one to print.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from transforms.api import ColumnSpec

# PostgreSQL 15's keywords that quote_ident quotes (every category but unreserved):
# SELECT word FROM pg_get_keywords() WHERE catcode <> 'U'.
_KEYWORD_TEXT = """
    all analyse analyze and any array as asc asymmetric authorization between bigint binary bit
    boolean both case cast char character check coalesce collate collation column concurrently
    constraint create cross current_catalog current_date current_role current_schema
    current_time current_timestamp current_user dec decimal default deferrable desc distinct do
    else end except exists extract false fetch float for foreign freeze from full grant greatest
    group grouping having ilike in initially inner inout int integer intersect interval into is
    isnull join lateral leading least left like limit localtime localtimestamp national natural
    nchar none normalize not notnull null nullif numeric offset on only or order out outer
    overlaps overlay placing position precision primary real references returning right row
    select session_user setof similar smallint some substring symmetric table tablesample then
    time timestamp to trailing treat trim true union unique user using values varchar variadic
    verbose when where window with xmlattributes xmlconcat xmlelement xmlexists xmlforest
    xmlnamespaces xmlparse xmlpi xmlroot xmlserialize xmltable
"""
KEYWORDS = frozenset(_KEYWORD_TEXT.split())
_PLAIN = re.compile(r"[a-z_][a-z0-9_]*")


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier: bare when PostgreSQL would read it back unchanged."""
    if _PLAIN.fullmatch(name) and name not in KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def qualified(table: str) -> str:
    """``schema.table`` (as mappings name tables) quoted part by part."""
    schema, dot, name = table.partition(".")
    return f"{quote_ident(schema)}.{quote_ident(name)}" if dot else quote_ident(schema)


def create_table(table: str, columns: Mapping[str, ColumnSpec], key: Sequence[str]) -> str:
    """``CREATE TABLE`` for ``columns`` (types as ``format_type`` prints them; defaults are
    not known to a catalog of types, so a NOT NULL column with one is left nullable)."""
    parts = [
        f"{quote_ident(c)} {spec.type}{' NOT NULL' if spec.not_null and not spec.has_default else ''}"
        for c, spec in columns.items()
    ]
    if key:
        parts.append(f"PRIMARY KEY ({', '.join(quote_ident(k) for k in key)})")
    return f"CREATE TABLE {qualified(table)} ({', '.join(parts)})"
