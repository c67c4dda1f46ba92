"""Derived SQL forms read from converters' code (transforms.derive): what is derived, with
which guards, and the reason when something is not (the column then keeps the Python path).
Whether a form equals its function is proved on the server: tests/integration/test_derived_forms.py.
"""

from __future__ import annotations

import datetime as dt

import pytest

from bench import tpcb_mapping as tpcb
from transforms.converters import to_utc
from transforms.derive import Derived, Underived, derive
from transforms.derive.form import BIGINT_MAX, BIGINT_MIN, _range_for
from transforms.derive.values import values_for
from transforms.sql_twins import BOOL, INT, NOT_PLAIN_ASCII, TEXT, TS, TSTZ, NotCompilable, column

LIMIT = 1000


def shout(name: str) -> str:
    """A docstring is skipped."""
    low = name.lower()
    if len(low) > LIMIT:
        raise ValueError("too long")
    return low.upper() + "!" if low != "" else "?"


def stamp(ts: dt.datetime) -> dt.datetime:
    return to_utc(ts)


def twice_cents(value: int) -> int:
    return tpcb.units_to_cents(value) + tpcb.units_to_cents(value)


def is_big(value: int, other: int) -> bool:
    return (value > 10 and value != other) or other < 0


def halve(value: int) -> int:
    return value // 2


def ratio(value: int) -> float:
    return value / 3


def make_closure() -> object:
    k = 3

    def inner(value: int) -> int:
        return value * k

    return inner


def built(fn: object, *args: object) -> object:
    d = derive(fn)  # type: ignore[arg-type]
    assert isinstance(d, Derived), d
    return d.build(*args)  # type: ignore[arg-type]


def test_what_is_derived_and_its_guards() -> None:
    x = column("x", INT)
    e = built(tpcb.units_to_cents, x)
    assert e.type == INT and "BETWEEN -92233720368547758 AND 92233720368547758" in e.sql
    assert [r for _, r in e.checks] == [
        "a NULL argument (the Python way)",
        "an integer result outside bigint",
    ]
    # Bound methods read the instance's constants: those read are part of the fingerprint.
    strip = built(tpcb.ACCOUNT_FILLER.strip, column("f", TEXT))
    assert strip.sql == "rtrim(\"f\", ' '::text)"
    a, b = derive(tpcb.ACCOUNT_FILLER.pad), derive(tpcb.HISTORY_FILLER.pad)
    assert isinstance(a, Derived) and isinstance(b, Derived) and a.fingerprint != b.fingerprint
    # lower/upper only on printable ASCII, under the C collation; raise -> a check; an
    # early `if ...: raise`, a conditional expression and a module constant.
    s = built(shout, column("n", TEXT))
    reasons = [r for _, r in s.checks]
    assert any(c == f"(\"n\") ~ '{NOT_PLAIN_ASCII}'" for c, _ in s.checks)
    assert "the converter raises (line 4)" in reasons[1] or any("raises" in r for r in reasons)
    assert 'COLLATE "C"' in s.sql and "1000::bigint" in s.sql and s.type == TEXT
    # Calls: a twin (to_utc) and another derivable converter.
    assert built(stamp, column("t", TS)).type == TSTZ
    assert built(twice_cents, x).type == INT
    assert built(is_big, x, column("y", INT)).type == BOOL


@pytest.mark.parametrize(
    ("fn", "reason"),
    [
        (halve, "round unlike SQL"),
        (ratio, "round unlike SQL"),
        (tpcb.cents_to_units, "only assignments to one name"),
        (tpcb.BRANCH_FILLER.pad, r"line 4: str.ljust\(\) has no derived form"),
    ],
)
def test_what_is_not_derived_says_why(fn: object, reason: str) -> None:
    with pytest.raises(NotCompilable, match=reason):
        built(fn, column("x", INT if fn in (halve, ratio, tpcb.cents_to_units) else TEXT))


def test_functions_without_readable_code_are_not_derived() -> None:
    closure = derive(make_closure())  # type: ignore[arg-type]
    assert isinstance(closure, Underived) and "enclosing function" in closure.reason
    assert isinstance(derive(len), Underived)
    assert isinstance(derive(lambda v: v), Underived)


def test_bigint_ranges_are_exact() -> None:
    for op, c in (("*", 100), ("*", -7), ("+", 5), ("-", -5), ("*", 3)):
        lo, hi = _range_for(op, c)
        f = {"*": lambda v, c=c: v * c, "+": lambda v, c=c: v + c, "-": lambda v, c=c: v - c}[op]
        assert BIGINT_MIN <= f(lo) <= BIGINT_MAX and BIGINT_MIN <= f(hi) <= BIGINT_MAX
        assert not BIGINT_MIN <= f(lo - 1) <= BIGINT_MAX or lo == BIGINT_MIN
        assert not BIGINT_MIN <= f(hi + 1) <= BIGINT_MAX or hi == BIGINT_MAX


def test_proof_values_fit_their_type_and_surround_the_constants() -> None:
    ints = values_for("integer", [100], 50)
    assert {-(2**31), 2**31 - 1, (2**31 - 1) // 100, (2**31 - 1) // 100 + 1} <= set(ints)
    chars = values_for("character(4)", ["QQ"], 50)
    assert all(len(v) <= 4 for v in chars) and "  ab" in chars and "QQQQ" in chars
    assert "İstanbul" in values_for("text", [], 10)
    assert values_for("integer", [100], 50) == ints  # seeded: the same every time


def test_apply_without_its_source_keeps_every_column_in_python(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Apply does not otherwise need the source: an unreachable one means nothing derived is
    used (and no error); a mapping whose converters all have twins opens no session at all."""
    from replicator.config import DatabaseSettings
    from replicator.derived import prove_on_source
    from transforms.identity import identity_mapping
    from transforms.sql_twins import twin_of, use_derived

    nowhere = DatabaseSettings(host="127.0.0.1", port=1, dbname="nowhere")
    use_derived(tpcb.units_to_cents, lambda x: x)  # as if proved earlier in the process
    assert prove_on_source(nowhere, tpcb.MAPPING.forward) == []
    assert twin_of(tpcb.units_to_cents) is None
    assert "not proved" in caplog.text
    caplog.clear()
    assert prove_on_source(nowhere, identity_mapping(["public.t"]).forward) == []
    assert caplog.text == ""
