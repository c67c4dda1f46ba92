"""The examples in docs/transforms.md run as written: the 1→2 split and its reverse round-trip
through transforms.testing.InMemoryStore (a hypothesis property), and its sequences reverse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from transforms.api import MappingSet, RowChange
from transforms.testing import InMemoryStore

DOC = (Path(__file__).resolve().parents[2] / "docs" / "transforms.md").read_text()


def _block(first_line: str) -> dict[str, Any]:
    blocks = [b.split("```", 1)[0] for b in DOC.split("```python\n")[1:]]
    (code,) = [b for b in blocks if b.startswith(first_line)]
    ns: dict[str, Any] = {}
    exec(compile(code, "docs/transforms.md", "exec"), ns)
    return ns


SPLIT = _block("# mypkg/split.py")["MAPPING"]
TARGET_COLUMNS = {
    "public.person": ("id", "name"),
    "public.address": ("person_id", "street", "city"),
}
TEXT = st.none() | st.text(max_size=8)
CUSTOMERS = st.lists(
    st.fixed_dictionaries(
        {"id": st.integers(1, 10_000), "name": TEXT, "street": TEXT, "city": TEXT}
    ),
    max_size=8,
    unique_by=lambda r: r["id"],
)


def _target_rows(target: InMemoryStore) -> dict[str, list[dict[str, Any]]]:
    return {t: target.rows(t, cols) for t, cols in TARGET_COLUMNS.items()}


@given(CUSTOMERS)
def test_the_split_example_round_trips(customers: list[dict[str, Any]]) -> None:
    assert isinstance(SPLIT, MappingSet)
    rows = {"public.customer": customers}
    target = InMemoryStore().load(SPLIT.forward, rows)
    assert len(target.rows("public.person")) == len(target.rows("public.address")) == len(customers)
    back = InMemoryStore().load(SPLIT.reverse, _target_rows(target))
    assert back == InMemoryStore.of(SPLIT.reverse, rows)


def test_the_split_example_deletes_and_clears_as_documented() -> None:
    row = {"id": 1, "name": "Ann", "street": "Main St", "city": "Oslo"}
    target = InMemoryStore().load(SPLIT.forward, {"public.customer": [row]})
    legacy = InMemoryStore().load(SPLIT.reverse, _target_rows(target))
    # An address deleted on the target clears the legacy columns; the person stays.
    legacy.apply_change(
        SPLIT.reverse,
        RowChange("delete", "public.address", old={"person_id": 1}, key_columns=("person_id",)),
    )
    assert legacy.rows("public.customer") == [
        {"id": 1, "name": "Ann", "street": None, "city": None}
    ]
    # A customer deleted on legacy removes both target rows.
    target.apply_change(
        SPLIT.forward, RowChange("delete", "public.customer", old={"id": 1}, key_columns=("id",))
    )
    assert len(target) == 0


def test_the_split_example_sequence_names_each_side() -> None:
    (fwd,) = SPLIT.forward.sequences
    (rev,) = SPLIT.reverse.sequences
    assert (fwd.table, fwd.column, fwd.target_table, fwd.target_column) == (
        "public.customer", "id", "public.person", "id",
    )  # fmt: skip
    assert (rev.table, rev.target_table) == ("public.person", "public.customer")


def test_the_sequences_and_converters_snippets_run() -> None:
    conv = _block("from transforms.converters import LocalTimestamps")
    assert conv["BERLIN"].zone.key == "Europe/Berlin"
