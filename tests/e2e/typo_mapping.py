"""Mappings with a misspelt source column, as a new user writes them (issue 22): the CLI loads
them as ``tests.e2e.typo_mapping:MAPPING`` (the working directory is the repository)."""

from __future__ import annotations

from transforms.api import MappingSet, SequenceSync
from transforms.declarative import Target, direction, table_mapping

# legacy public.acct (id, amount, note) -> target public.accounts (id, "amountCents", note)
ACCT = table_mapping(
    "public.acct",
    [
        Target(
            "public.accounts", key={"id": "id"}, columns={"amountCents": "amuont", "note": "note"}
        )
    ],
    source_key=("id",),
)
ACCT_BACK = table_mapping(
    "public.accounts",
    [Target("public.acct", key={"id": "id"}, columns={"amount": "amountCents", "note": "note"})],
    source_key=("id",),
)
MAPPING = MappingSet("typo", forward=direction(ACCT), reverse=direction(ACCT_BACK))

# The same, with the columns right but a source_key column that does not exist.
BAD_KEY = MappingSet(
    "typo_key",
    forward=direction(
        table_mapping(
            "public.acct",
            [
                Target(
                    "public.accounts",
                    key={"id": "id"},
                    columns={"amountCents": "amount", "note": "note"},
                )
            ],
            source_key=("acct_id",),
        ),
        # and a sequence of a table the target does not have (it is public.accounts there)
        sequences=[SequenceSync("public.acct", "id")],
    ),
    reverse=direction(ACCT_BACK),
)
