"""A keyed copy of ``public.item`` both ways: what `validate` (and so a cutover) needs, which an
``identity:`` mapping does not declare. Used by tests/e2e/test_web.py as
``tests.e2e.web_mapping:MAPPING``."""

from __future__ import annotations

from transforms.api import MappingSet, TableTransform
from transforms.declarative import Target, direction, table_mapping


def _copy() -> TableTransform:
    return table_mapping(
        "public.item",
        [Target("public.item", key={"id": "id"}, columns={"title": "title"})],
        source_key=("id",),
    )


MAPPING = MappingSet("web", forward=direction(_copy()), reverse=direction(_copy()))
