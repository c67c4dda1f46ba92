"""The bulk path's row-level helpers (no server): COPY text of derived values, and derived values
computed for a whole chunk where the converter refuses some keys."""

from __future__ import annotations

import pytest

from connectors.copy_chunk import copy_fields
from replicator.apply.bulk import _copy_text, _derive_all
from transforms.compile import DerivedKey


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
