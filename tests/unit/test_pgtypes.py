"""Text values of the log loaded into Python values by type OID (fast paths and psycopg's)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import adapters, pq
from psycopg.adapt import Transformer

from connectors.pgtypes import TextLoader
from replicator.errors import MalformedMessage

COLS = ("id", "name", "ok", "uid", "doc", "at", "amount", "raw", "mood")
OIDS = (20, 25, 16, 2950, 3802, 1184, 1700, 17, 99999)  # 99999: an enum psycopg does not know


def test_every_kind_of_column() -> None:
    row = TextLoader().row(
        {
            "id": "42", "name": "Zoë", "ok": "t", "uid": "6f9619ff-8b86-4011-b42d-00c04fc964ff",
            "doc": '{"a": [1, 2]}', "at": "2024-01-02 03:04:05.123456+00", "amount": "1.50",
            "raw": "\\x00ff", "mood": "happy",
        },
        COLS,
        OIDS,
    )  # fmt: skip
    assert row == {
        "id": 42,
        "name": "Zoë",
        "ok": True,
        "uid": uuid.UUID("6f9619ff-8b86-4011-b42d-00c04fc964ff"),
        "doc": {"a": [1, 2]},
        "at": datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        "amount": Decimal("1.50"),
        "raw": b"\x00\xff",
        "mood": "happy",
    }


def test_null_stays_none_and_an_unsent_column_stays_absent() -> None:
    assert TextLoader().row({"id": "1", "name": None}, COLS[:3], OIDS[:3]) == {
        "id": 1,
        "name": None,
    }


@pytest.mark.parametrize(
    ("values", "column"),
    [({"id": "x1"}, "id"), ({"ok": "yes"}, "ok"), ({"name": 5}, "name"), ({"id": 5}, "id")],
)
def test_bad_values_name_their_column(values: dict[str, object], column: str) -> None:
    with pytest.raises(MalformedMessage, match=f"column '{column}'"):
        TextLoader().row(values, COLS[:3], OIDS[:3])  # type: ignore[arg-type]


_PSYCOPG = Transformer(adapters)


@given(
    st.one_of(
        st.tuples(st.just(20), st.integers(-(2**63), 2**63 - 1).map(str)),
        st.tuples(st.just(23), st.integers(-(2**31), 2**31 - 1).map(str)),
        st.tuples(st.just(25), st.text()),
        st.tuples(st.just(1043), st.text()),
        st.tuples(st.just(16), st.sampled_from(["t", "f", "true", "false"])),
    )
)
def test_fast_paths_agree_with_psycopg(case: tuple[int, str]) -> None:
    oid, text = case
    ours = TextLoader().row({"c": text}, ("c",), (oid,))["c"]
    assert ours == _PSYCOPG.get_loader(oid, pq.Format.TEXT).load(text.encode())
