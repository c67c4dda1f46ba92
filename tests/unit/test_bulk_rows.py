"""The bulk path's row-level helpers (no server): COPY text of derived values, derived values
computed for a whole chunk where the converter refuses some keys, and which chunks travel in
COPY's binary format."""

from __future__ import annotations

import pytest

from connectors.copy_chunk import copy_fields
from replicator.apply.bulk import _copy_text, _derive_all
from replicator.backfill.copy_read import SourceTable, binary_format
from transforms.compile import DerivedKey
from transforms.identity import identity_transform
from transforms.mcp_manager import MAPPING


@pytest.mark.parametrize("value", ["plain", "tab\there", "new\nline", "back\\slash", "cr\r", ""])
def test_copy_text_reads_back_as_the_value(value: str) -> None:
    assert copy_fields(_copy_text(value).encode()) == [value]


def test_copy_text_of_null_and_numbers() -> None:
    assert _copy_text(None) == "\\N"
    assert copy_fields(_copy_text(None).encode()) == [None]
    assert _copy_text(42) == "42"


def _half(x: int) -> str:
    if x % 2:
        raise ValueError("odd")
    return str(x // 2)


def test_a_refused_key_is_null_and_the_rest_computed() -> None:
    d = DerivedKey("__key_0", _half, ("id",), "text")
    assert _derive_all(d, [0], [(2,), (3,), (10,)]) == ["1", None, "5"]
    pair = DerivedKey("__key_1", lambda a, b: f"{a}/{b}", ("a", "b"), "text")
    assert _derive_all(pair, [1, 0], [(1, 2), (3, 4)]) == ["2/1", "4/3"]


def _source(types: dict[str, int], enums: tuple[str, ...] = ()) -> SourceTable:
    cols = tuple(types)
    return SourceTable(
        "public.t", 1, cols, tuple(types.values()), tuple("x" for _ in cols), ("id",), enums
    )


def test_binary_chunks_only_where_every_column_reads_back_as_text() -> None:
    # The MCP audit log: bigint, uuid, varchar, text, json, timestamptz, and an enum.
    audit = _source(
        {"id": 20, "org": 2950, "action": 1043, "target": 25, "meta": 114, "at": 1184, "s": 99},
        enums=("s",),
    )
    declared = MAPPING.forward.tables["public.audit_log"]
    assert binary_format(audit, declared)
    # A numeric column (no text form from its binary here), or a row-copying transform
    # (it stages text), keeps the text format; so does no transform at all.
    assert not binary_format(_source({"id": 20, "amount": 1700}), declared)
    assert not binary_format(audit, identity_transform("public.t"))
    assert not binary_format(audit, None)
