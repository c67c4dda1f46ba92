"""Values a derived form is proved on: a property test's inputs for one column type.

Edge cases first (each type's limits, empty and blank text, non-ASCII letters whose case
folding differs between Python and SQL, trailing and leading blanks), then the constants the
converter's code holds and their neighbours (where a guard's bound or a comparison flips), then
seeded random values over the whole type. The same seed gives the same values: a proof that
passed once passes again for the same code.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Sequence
from typing import Any

_INT_RANGES = {
    "smallint": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}

_TEXT_EDGES = (
    "",
    " ",
    "a",
    "A",
    "abc  ",
    "  abc",
    " a b ",
    "\t x\n",
    "x\u00a0",
    "İstanbul",
    "straße",
    "ǅ",
    "ÉCOLE",
    "ﬁ",
    "日本語 ",
    "ab\u3000",
    "😀",
    "'quote\"",
    "back\\slash",
)


def provable(type_name: str) -> bool:
    return _kind(type_name) is not None


def _kind(type_name: str) -> str | None:
    t = type_name.lower()
    if t in _INT_RANGES:
        return "int"
    if t in ("text", "character varying") or re.fullmatch(r"character varying\(\d+\)", t):
        return "text"
    if t == "character" or re.fullmatch(r"character\(\d+\)", t):
        return "char"
    if t == "boolean":
        return "bool"
    if t in ("timestamp without time zone", "timestamp with time zone"):
        return "ts"
    return None


def values_for(type_name: str, constants: Sequence[Any], n: int, seed: int = 29) -> list[Any]:
    """``n`` random values of ``type_name`` (a ``format_type()``), after its edge cases and the
    constants' neighbours; every value fits the type (a ``char(n)`` value its width)."""
    kind = _kind(type_name)
    rnd = random.Random(seed)
    if kind == "int":
        lo, hi = _INT_RANGES[type_name.lower()]
        ints = [0, 1, -1, 2, -2, lo, lo + 1, hi, hi - 1, 99, 100, -100]
        for c in (k for k in constants if isinstance(k, int) and k):
            for v in (c, -c, hi // c, lo // c, -((-hi) // c), -((-lo) // c)):
                ints += [v - 1, v, v + 1]
            ints += [hi - c, lo - c, lo + c, hi + c]
        ints += [rnd.randint(lo, hi) for _ in range(n // 2)]
        ints += [rnd.randint(-10_000, 10_000) for _ in range(n // 2)]
        return sorted({v for v in ints if lo <= v <= hi})
    if kind in ("text", "char"):
        width = None
        m = re.search(r"\((\d+)\)", type_name)
        if m:
            width = int(m.group(1))
        texts = list(_TEXT_EDGES)
        for word in (k for k in constants if isinstance(k, str)):
            texts += [word, word + " ", " " + word, word * 2, "a" + word, word + "a"]
            texts += [word.upper(), word.lower()]
        alphabet = " abcxyzABCXYZ019-_.\t\u00e9\u0130\u00df\u03a3\u00a0"
        for _ in range(n):
            k = rnd.randint(0, 12)
            texts.append("".join(rnd.choice(alphabet) for _ in range(k)))
        for _ in range(n // 4):
            k = rnd.randint(1, 6)
            texts.append("".join(chr(rnd.randint(1, 0x2FFF)) for _ in range(k)))
        out = []
        for s in texts:
            s = "".join(ch for ch in s if ch != "\x00" and not 0xD800 <= ord(ch) <= 0xDFFF)
            if width is not None:
                s = s[:width]
            out.append(s)
        return list(dict.fromkeys(out))
    if kind == "bool":
        return [True, False]
    if kind == "ts":
        base = dt.datetime(2000, 1, 1)
        stamps = [base, dt.datetime(1970, 1, 1), dt.datetime(2038, 1, 19, 3, 14, 8, 999999)]
        stamps += [base + dt.timedelta(seconds=rnd.randint(0, 2**31)) for _ in range(n // 4)]
        if "with time zone" in type_name:
            stamps = [s.replace(tzinfo=dt.UTC) for s in stamps]
        return stamps
    raise ValueError(f"no values for {type_name}")
