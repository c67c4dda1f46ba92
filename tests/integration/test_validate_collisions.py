"""Two legacy rows that map to one target key: a mapping collision, reported with both legacy
keys and the target key, whichever path compares (SQL or Python, full or by key)."""

from __future__ import annotations

import pytest

from replicator.validate.run import validate
from tests.support import Env
from transforms.api import MappingSet
from transforms.declarative import Target, direction, table_mapping

# The target's key is a legacy column that is not unique: rows 1 and 2 both become code 'a'.
ITEM = table_mapping(
    "public.item",
    [Target("public.item", key={"code": "code"}, columns={"name": "name"})],
    source_key=("id",),
)
MAPPING = MappingSet("collide", forward=direction(ITEM), reverse=direction())
COLLIDES = [
    {"table": "public.item", "key": {"id": "1"}},
    {"table": "public.item", "key": {"id": "2"}},
]


@pytest.mark.parametrize("python_path", [False, True], ids=["sql", "python"])
def test_two_legacy_rows_writing_one_target_key_are_reported(env: Env, python_path: bool) -> None:
    with env.legacy_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, code text NOT NULL, name text)")
        c.execute(
            "INSERT INTO item VALUES (1, 'a', 'first'), (2, 'a', 'second'), (3, 'b', 'third')"
        )
        c.execute("INSERT INTO item SELECT g, 'c' || g, 'n' FROM generate_series(10, 60) g")
    with env.target_conn() as c:
        c.execute("CREATE TABLE item (code text PRIMARY KEY, name text)")
        # What the apply leaves: the last row written for 'a'; 'first' is lost.
        c.execute("INSERT INTO item VALUES ('a', 'second'), ('b', 'third')")
        c.execute("INSERT INTO item SELECT 'c' || g, 'n' FROM generate_series(10, 60) g")
    full = validate(env.settings(), MAPPING, save=False, python_path=python_path)
    keyed = validate(
        env.settings(),
        MAPPING,
        keys={"public.item": {(1,), (2,), (3,)}},
        save=False,
        python_path=python_path,
    )
    for report in (full, keyed):
        assert [t.path for t in report.tables] == ["python" if python_path else "sql"]
        assert [(d.table, d.kind, d.key, d.sources) for d in report.differences] == [
            ("public.item", "collides", {"code": "a"}, COLLIDES)
        ]
        (t,) = report.tables
        assert (t.collides, t.differences, report.outcome) == (1, 1, "different")
