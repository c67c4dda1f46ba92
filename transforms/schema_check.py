"""Does a mapping fit a target schema? Pure: catalogs in, problems out.

``replicator check`` reads the live catalog and hands it here with the schema the mapping was
written against (its ``expected_target``, e.g. the Drizzle snapshot). Every problem is listed,
each with the fix, so one run shows the whole drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from transforms.api import Catalog, Direction


@dataclass(frozen=True, slots=True)
class SchemaProblem:
    message: str
    hint: str


def mapping_problems(
    direction: Direction, live: Catalog, expected: Catalog | None = None
) -> list[SchemaProblem]:
    """Every way the tables ``direction`` writes differ from ``live``:

    - a written table or column that does not exist;
    - a written column whose live type differs from ``expected`` (a narrowed or changed type
      would fail or silently truncate rows the mapping produces);
    - a live NOT NULL column without a default that the mapping never produces (every insert
      would fail).
    """
    problems: list[SchemaProblem] = []
    for name, table in sorted(direction.target_tables.items()):
        cols = live.get(name)
        if cols is None:
            problems.append(
                SchemaProblem(
                    f"target table {name} does not exist",
                    "apply the target schema (drizzle-kit migrate) or fix the mapping's table name",
                )
            )
            continue
        if not table.columns:
            continue  # an identity mapping writes whatever the source has
        want = (expected or {}).get(name, {})
        for col in table.columns:
            spec = cols.get(col)
            if spec is None:
                problems.append(
                    SchemaProblem(
                        f"{name}.{col} is written by the mapping but does not exist on the target",
                        f"add the column (ALTER TABLE {name} ADD COLUMN {col} …) or migrate "
                        "the target schema to the version the mapping expects",
                    )
                )
                continue
            exp = want.get(col)
            if exp is not None and exp.type != spec.type:
                problems.append(
                    SchemaProblem(
                        f"{name}.{col} is {spec.type} on the target; the mapping writes "
                        f"{exp.type} (as the schema it was written for defines it)",
                        f"ALTER TABLE {name} ALTER COLUMN {col} TYPE {exp.type}, or change "
                        "the mapping and its expected schema together",
                    )
                )
        produced = {*table.columns, *table.key, *table.insert_only}
        for col, spec in sorted(cols.items()):
            if spec.not_null and not spec.has_default and col not in produced:
                problems.append(
                    SchemaProblem(
                        f"{name}.{col} is NOT NULL without a default, and the mapping never "
                        "produces it: every insert into the table would fail",
                        f"give it a default (ALTER TABLE {name} ALTER COLUMN {col} SET DEFAULT "
                        "…) or produce it in the mapping",
                    )
                )
    return problems
