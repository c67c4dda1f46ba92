"""bench.tpcb_mapping (pgbench's tables reshaped, used by ``bench.live --workload tpcb``): the
reverse of the forward is the identity (hypothesis, through transforms.testing.InMemoryStore),
a TPC-B transaction's changes land where the docs say, and the converters refuse what legacy
cannot hold."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.tpcb_mapping import MAPPING, TARGET_COLUMNS, Blanks, cents_to_units
from replicator.errors import TransformError
from transforms.api import RowChange
from transforms.testing import InMemoryStore

INT4 = st.integers(-(2**31), 2**31 - 1)
BALANCE = st.none() | st.integers(-(2**31) // 100, (2**31 - 1) // 100)


def _filler(width: int) -> st.SearchStrategy[str | None]:
    # What psycopg reads from a char(width): blank-padded to the width.
    text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=width)
    return st.none() | text.map(lambda s: s.rstrip(" ").ljust(width))


MTIME = st.none() | st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1))


def _rows(key: str, **cols: st.SearchStrategy[Any]) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(
        st.fixed_dictionaries({key: INT4, **cols}), max_size=6, unique_by=lambda r: r[key]
    )


LEGACY = st.fixed_dictionaries(
    {
        "public.pgbench_branches": _rows("bid", bbalance=BALANCE, filler=_filler(88)),
        "public.pgbench_tellers": _rows(
            "tid", bid=st.none() | INT4, tbalance=BALANCE, filler=_filler(84)
        ),
        "public.pgbench_accounts": _rows(
            "aid", bid=st.none() | INT4, abalance=BALANCE, filler=_filler(84)
        ),
        "public.pgbench_history": _rows(
            "hid",
            tid=st.none() | INT4,
            bid=st.none() | INT4,
            aid=st.none() | INT4,
            delta=BALANCE,
            mtime=MTIME,
            filler=_filler(22),
        ),
    }
)


def _round_trip(rows: dict[str, list[dict[str, Any]]]) -> InMemoryStore:
    target = InMemoryStore().load(MAPPING.forward, rows)
    as_logged = {t: target.rows(t, cols) for t, cols in TARGET_COLUMNS.items()}
    return InMemoryStore().load(MAPPING.reverse, as_logged)


@given(LEGACY)
def test_reverse_of_forward_is_identity(rows: dict[str, list[dict[str, Any]]]) -> None:
    assert _round_trip(rows) == InMemoryStore.of(MAPPING.reverse, rows)


def test_a_tpcb_transaction_lands_reshaped() -> None:
    legacy = {
        "public.pgbench_branches": [{"bid": 1, "bbalance": 0, "filler": None}],
        "public.pgbench_tellers": [{"tid": 3, "bid": 1, "tbalance": 0, "filler": None}],
        "public.pgbench_accounts": [{"aid": 7, "bid": 1, "abalance": 0, "filler": " " * 84}],
    }
    target = InMemoryStore().load(MAPPING.forward, legacy)
    mtime = datetime(2026, 12, 7, 15, 0, 0, 123456)
    target.run(
        MAPPING.forward,
        [
            RowChange(
                "update",
                "public.pgbench_accounts",
                new={"aid": 7, "bid": 1, "abalance": -42, "filler": " " * 84},
                key_columns=("aid",),
            ),
            RowChange(
                "update",
                "public.pgbench_tellers",
                new={"tid": 3, "bid": 1, "tbalance": -42, "filler": None},
                key_columns=("tid",),
            ),
            RowChange(
                "update",
                "public.pgbench_branches",
                new={"bid": 1, "bbalance": -42, "filler": None},
                key_columns=("bid",),
            ),
            RowChange(
                "insert",
                "public.pgbench_history",
                new={
                    "hid": 1,
                    "tid": 3,
                    "bid": 1,
                    "aid": 7,
                    "delta": -42,
                    "mtime": mtime,
                    "filler": None,
                },
                key_columns=("hid",),
            ),
        ],
    )
    assert target.rows("public.account") == [{"id": 7, "branch_id": 1, "note": ""}]
    assert target.rows("public.account_balance") == [{"account_id": 7, "balance_cents": -4200}]
    assert target.rows("public.teller")[0]["balance_cents"] == -4200
    assert target.rows("public.branch")[0]["balance_cents"] == -4200
    (transfer,) = target.rows("public.transfer")
    assert transfer["amount_cents"] == -4200
    assert transfer["created_at"] == mtime.replace(tzinfo=UTC)
    # An account deleted on legacy removes both halves of the split.
    target.run(
        MAPPING.forward,
        [RowChange("delete", "public.pgbench_accounts", old={"aid": 7}, key_columns=("aid",))],
    )
    assert target.rows("public.account") == target.rows("public.account_balance") == []


def test_the_reverse_refuses_what_legacy_cannot_hold() -> None:
    with pytest.raises(ValueError, match="whole number of units"):
        cents_to_units(150)
    with pytest.raises(ValueError, match="does not fit"):
        cents_to_units(2**31 * 100)
    with pytest.raises(ValueError, match="char\\(22\\)"):
        Blanks(22).pad("x" * 23)
    # Through the transform, the refusal names the table, key and column (dead-lettered).
    with pytest.raises(TransformError, match="balance_cents"):
        InMemoryStore().run(
            MAPPING.reverse,
            [
                RowChange(
                    "insert",
                    "public.account_balance",
                    new={"account_id": 1, "balance_cents": 1},
                    key_columns=("account_id",),
                )
            ],
        )
