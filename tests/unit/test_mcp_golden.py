"""Golden tests: tricky rows and the exact ops (or error) the MCP Manager mapping gives.

Each file in tests/fixtures/transforms/ holds cases: a row change and the pinned result.
Typed values are tagged in JSON: ``{"$uuid": "…"}``, ``{"$datetime": "…"}`` (ISO 8601; naive
when it has no offset). After an intended change, rewrite the expectations with
``UPDATE_GOLDEN=1 pytest tests/unit/test_mcp_golden.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from replicator.errors import TransformError
from transforms.api import Delete, Patch, RowChange, TargetOp, Truncate, Upsert
from transforms.mcp_manager import MAPPING

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "transforms"
FILES = sorted(FIXTURES.glob("mcp_*.json"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$uuid"}:
            return uuid.UUID(value["$uuid"])
        if set(value) == {"$datetime"}:
            return datetime.fromisoformat(value["$datetime"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def encode(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    return value


def encode_op(op: TargetOp) -> dict[str, Any]:
    if isinstance(op, Truncate):
        return {"op": "truncate", "table": op.table}
    out: dict[str, Any] = {
        "op": type(op).__name__.lower(),
        "table": op.table,
        "key": encode(dict(op.key)),
    }
    if isinstance(op, Upsert | Patch):
        out["values"] = encode(dict(op.values))
    if isinstance(op, Upsert) and op.insert_only:
        out["insert_only"] = encode(dict(op.insert_only))
    assert isinstance(op, Upsert | Patch | Delete)
    return out


def outcome(case: dict[str, Any]) -> dict[str, Any]:
    c = case["change"]
    change = RowChange(
        c["op"],
        c["table"],
        new=decode(c.get("new")),
        old=decode(c.get("old")),
        unchanged=frozenset(c.get("unchanged", ())),
        key_columns=tuple(c.get("key_columns", ())),
    )
    direction = MAPPING.forward if case["direction"] == "forward" else MAPPING.reverse
    transform = direction.transform_for(change.table)
    assert transform is not None
    try:
        return {"ops": [encode_op(op) for op in transform(change)]}
    except TransformError as e:
        return {
            "error": {
                "table": e.table,
                "key": encode(e.key),
                "column": e.column,
                "message": e.message,
            }
        }


def cases() -> list[Any]:
    out = []
    for path in FILES:
        for case in json.loads(path.read_text(encoding="utf-8"))["cases"]:
            out.append(pytest.param(path, case, id=f"{path.stem}:{case['name']}"))
    return out


@pytest.mark.parametrize(("path", "case"), cases())
def test_golden(path: Path, case: dict[str, Any]) -> None:
    got = outcome(case)
    if UPDATE:
        doc = json.loads(path.read_text(encoding="utf-8"))
        for c in doc["cases"]:
            if c["name"] == case["name"]:
                c.pop("ops", None)
                c.pop("error", None)
                c.update(got)
        path.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return
    expected = {k: case[k] for k in ("ops", "error") if k in case}
    assert got == expected


def test_fixtures_exist() -> None:
    assert {p.name for p in FILES} >= {"mcp_forward.json", "mcp_reverse.json"}
