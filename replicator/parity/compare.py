"""Pure parts of a parity check: rows made comparable, the two answers compared, latency
percentiles. Nothing here touches a database (tests/unit/test_parity.py)."""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from replicator.parity.spec import Pair

Row = dict[str, Any]


def canon(value: Any) -> Any:
    """One printable form per value, whatever the driver made of it: a legacy uuid and the
    target's text id are the same id, an instant is the same in any zone, JSON is compared
    by content (json and jsonb keep keys in different orders)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    if isinstance(value, date | Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)


def shape(pair: Pair, rows: Sequence[Row], side: str) -> list[tuple[Any, ...]]:
    """The rows as the pair compares them: legacy rows projected through ``project``, only
    ``columns`` kept (else every column, by name order), each value canonical."""
    out = []
    for row in rows:
        if side == "legacy" and pair.project:
            row = {**row, **{k: c(row) for k, c in pair.project.items()}}
        names = pair.columns if pair.columns is not None else sorted(row)
        out.append(tuple(canon(row[n]) for n in names))
    return out


def missing_columns(pair: Pair, rows: Sequence[Row]) -> list[str]:
    if pair.columns is None or not rows:
        return []
    return [c for c in pair.columns if c not in rows[0]]


def differs(pair: Pair, legacy: Sequence[Row], target: Sequence[Row]) -> str | None:
    """None when the answers agree, else what differs, in a sentence."""
    if pair.compare == "count":
        return None if len(legacy) == len(target) else f"{len(legacy)} rows ≠ {len(target)}"
    a, b = shape(pair, legacy, "legacy"), shape(pair, target, "target")
    if pair.compare == "ordered":
        if a == b:
            return None
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                return f"row {i + 1}: legacy {_show(x)} ≠ target {_show(y)}"
        return f"{len(a)} rows ≠ {len(b)}"
    ca, cb = Counter(a), Counter(b)
    if ca == cb:
        return None
    only_legacy, only_target = list((ca - cb).elements()), list((cb - ca).elements())
    parts = []
    if only_legacy:
        parts.append(f"{len(only_legacy)} only on legacy, e.g. {_show(only_legacy[0])}")
    if only_target:
        parts.append(f"{len(only_target)} only on target, e.g. {_show(only_target[0])}")
    return "; ".join(parts)


def _show(row: tuple[Any, ...]) -> str:
    text = ", ".join("NULL" if v is None else str(v) for v in row)
    return f"({text[:200]}{'…' if len(text) > 200 else ''})"


def percentile(samples: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (p in 0 to 100) of ``samples``; 0 for none."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def latency(samples_ms: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(samples_ms, 50), 3),
        "p95": round(percentile(samples_ms, 95), 3),
        "p99": round(percentile(samples_ms, 99), 3),
    }


def goal_misses(pair: Pair, legacy_ms: dict[str, float], target_ms: dict[str, float]) -> list[str]:
    """The goals the target misses: its p95 above ``max_ms``; its p50 above ``max_ratio``
    times legacy's (the median: one slow run on a busy machine is not the query's speed),
    judged only from ``min_ms`` up (below, both are the round trip's time)."""
    out = []
    if target_ms["p95"] > pair.max_ms:
        out.append(f"p95 {target_ms['p95']:.1f} ms > {pair.max_ms:g} ms")
    if (
        target_ms["p50"] >= pair.min_ms
        and legacy_ms["p50"] > 0
        and target_ms["p50"] > pair.max_ratio * legacy_ms["p50"]
    ):
        ratio = target_ms["p50"] / legacy_ms["p50"]
        out.append(f"p50 {ratio:.2f}x legacy's > {pair.max_ratio:g}x")
    return out
