"""bench/tpcb_mapping.py's forward direction with hand-written SQL twins: the compiled
baseline that ``bench.backfill --workload tpcb`` and ``bench.validate --workload tpcb`` measure
the plain-Python mapping (whose forms are derived from its code) against, in the same run.

The converters here are copies of the plain ones (other function objects, so that registering
their twins leaves the plain mapping's without any), each with the twin a user would write by
hand; tests/unit/test_tpcb_mapping.py keeps the two mappings alike.
"""

from __future__ import annotations

from bench import tpcb_mapping as plain
from transforms.api import MappingSet
from transforms.converters import to_utc
from transforms.declarative import Target, col, direction, table_mapping
from transforms.sql_twins import INT, TEXT, Expr, NotCompilable, sql_twin

_LO, _HI = -(2**63) // 100 + 1, (2**63 - 1) // 100


def units_to_cents(value: int) -> int:
    return value * 100


@sql_twin(units_to_cents)
def _cents(x: Expr) -> Expr:
    if x.type != INT:
        raise NotCompilable("units_to_cents takes an integer column")
    ok = f"({x.sql}) BETWEEN {_LO} AND {_HI}"
    bad = (f"NOT ({ok})", "cents outside bigint")
    return Expr(f"(CASE WHEN {ok} THEN ({x.sql}) * 100 END)", INT, (*x.checks, bad))


BRANCH_FILLER, TELLER_FILLER, ACCOUNT_FILLER, HISTORY_FILLER = (
    plain.Blanks(88),
    plain.Blanks(84),
    plain.Blanks(84),
    plain.Blanks(22),
)


def _rtrim(x: Expr) -> Expr:
    if x.type != TEXT:
        raise NotCompilable("Blanks.strip takes a text column")
    return Expr(f"rtrim({x.sql}, ' ')", TEXT, x.checks)


for _blanks in (BRANCH_FILLER, TELLER_FILLER, ACCOUNT_FILLER, HISTORY_FILLER):
    sql_twin(_blanks.strip)(_rtrim)

BRANCHES = table_mapping(
    "public.pgbench_branches",
    [
        Target(
            "public.branch",
            key={"id": "bid"},
            columns={
                "balance_cents": col("bbalance", convert=units_to_cents),
                "note": col("filler", convert=BRANCH_FILLER.strip),
            },
        )
    ],
    source_key=("bid",),
)

TELLERS = table_mapping(
    "public.pgbench_tellers",
    [
        Target(
            "public.teller",
            key={"id": "tid"},
            columns={
                "branch_id": "bid",
                "balance_cents": col("tbalance", convert=units_to_cents),
                "note": col("filler", convert=TELLER_FILLER.strip),
            },
        )
    ],
    source_key=("tid",),
)

ACCOUNTS = table_mapping(
    "public.pgbench_accounts",
    [
        Target(
            "public.account",
            key={"id": "aid"},
            columns={"branch_id": "bid", "note": col("filler", convert=ACCOUNT_FILLER.strip)},
        ),
        Target(
            "public.account_balance",
            key={"account_id": "aid"},
            columns={"balance_cents": col("abalance", convert=units_to_cents)},
        ),
    ],
    source_key=("aid",),
)

HISTORY = table_mapping(
    "public.pgbench_history",
    [
        Target(
            "public.transfer",
            key={"id": "hid"},
            columns={
                "teller_id": "tid",
                "branch_id": "bid",
                "account_id": "aid",
                "amount_cents": col("delta", convert=units_to_cents),
                "created_at": col("mtime", convert=to_utc),
                "note": col("filler", convert=HISTORY_FILLER.strip),
            },
        )
    ],
    source_key=("hid",),
)

MAPPING = MappingSet(
    "tpcb",
    forward=direction(BRANCHES, TELLERS, ACCOUNTS, HISTORY, sequences=[plain.HISTORY_ID]),
    reverse=plain.MAPPING.reverse,
)
