"""``replicator check``'s look at the mapping against both databases' catalogs.

Both directions are checked where they touch a catalog: the columns each reads on its source
side (a misspelt column would otherwise read as an unchanged TOAST value and leave NULLs), and
the sequences each sets at its switch (table, column or sequence missing on either side). What
the forward direction writes is checked by the target check (:func:`replicator.check._target`).
"""

from __future__ import annotations

from typing import Any

import psycopg

from connectors import pg
from replicator.config import Settings
from transforms.api import Catalog, ColumnSpec, MappingSet
from transforms.schema_check import SchemaProblem, Side, read_problems, sequence_problems

_CATALOG_SQL = """
SELECT n.nspname || '.' || c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
       a.attnotnull, a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
       a.attgenerated <> ''
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'replicator')
"""

# Which column owns which sequence: serial ('a'uto) and identity ('i'nternal) dependencies,
# what pg_get_serial_sequence follows.
_OWNED_SQL = """
SELECT tn.nspname || '.' || t.relname, a.attname, sn.nspname || '.' || s.relname
  FROM pg_class s
  JOIN pg_namespace sn ON sn.oid = s.relnamespace
  JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass
   AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  JOIN pg_class t ON t.oid = d.refobjid
  JOIN pg_namespace tn ON tn.oid = t.relnamespace
  JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
 WHERE s.relkind = 'S'
"""

_SEQUENCES_SQL = """
SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'S'
"""


def live_catalog(conn: psycopg.Connection[Any]) -> Catalog:
    out: dict[str, dict[str, ColumnSpec]] = {}
    for table, col, typ, not_null, has_default, generated in conn.execute(_CATALOG_SQL):
        out.setdefault(table, {})[col] = ColumnSpec(typ, not_null, has_default, generated)
    return out


def live_side(conn: psycopg.Connection[Any], name: str) -> Side:
    owned = {(str(t), str(c)): str(s) for t, c, s in conn.execute(_OWNED_SQL).fetchall()}
    sequences = frozenset(str(r[0]) for r in conn.execute(_SEQUENCES_SQL).fetchall())
    return Side(name, live_catalog(conn), sequences, owned)


def mapping_side_problems(mapping: MappingSet, legacy: Side, target: Side) -> list[SchemaProblem]:
    """Reads and sequences of both directions (pure, for tests: sides in, problems out)."""
    problems = read_problems(mapping.forward, legacy.catalog, side="source (legacy)")
    # The reverse direction reads target tables; one the forward direction writes and the
    # target lacks is already reported as missing.
    problems += read_problems(mapping.reverse, target.catalog, side="target")
    problems += sequence_problems(mapping.forward, legacy, target)
    problems += sequence_problems(mapping.reverse, target, legacy)
    return problems


def check_mapping_sides(s: Settings, mapping: MappingSet) -> list[SchemaProblem]:
    with pg.connect(s.source.conninfo(), autocommit=True) as conn, pg.translated(s.source.masked()):
        legacy = live_side(conn, "legacy")
    with pg.connect(s.target.conninfo(), autocommit=True) as conn, pg.translated(s.target.masked()):
        target = live_side(conn, "target")
    return mapping_side_problems(mapping, legacy, target)
