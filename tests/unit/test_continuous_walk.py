"""Continuous validation's walk (no servers): a walk is stored as a clean full validation only
when every table's check was clean — a table whose mapping reads columns legacy lacks is never
clean, so the walk that met it is not stored either."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from replicator.config import Settings
from replicator.runtime import continuous
from replicator.validate import report as report_mod
from replicator.validate import run as run_mod
from replicator.validate.report import Report, TableResult
from transforms.mcp_manager import MAPPING


def _walk(monkeypatch: pytest.MonkeyPatch, broken: str) -> list[Report]:
    stored: list[Report] = []
    monkeypatch.setattr(run_mod, "_log_offsets", lambda s, wanted: {0: 1})
    monkeypatch.setattr(report_mod, "store", lambda conn, r: stored.append(r) or 1)
    monkeypatch.setattr(continuous, "ensure_runs_table", lambda conn: None)
    checker = continuous.ContinuousValidation(Settings(), MAPPING)
    monkeypatch.setattr(checker, "_order", lambda target: checker.tables)

    def check(legacy: Any, target: Any, table: str) -> Report:
        r = Report("full", [table], datetime.now(UTC))
        r.tables = [TableResult(table, "full")]
        if table == broken:
            r.mapping_errors = [f"{table}: the mapping reads legacy column x, which it lacks"]
        return r

    monkeypatch.setattr(checker, "check", check)
    checker._walk(None, None, threading.Event())  # type: ignore[arg-type]
    return stored


def test_a_walk_meeting_a_mapping_error_is_not_stored_as_clean(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tables = sorted(MAPPING.forward.target_tables)
    assert [r.outcome for r in _walk(monkeypatch, "nothing")] == ["clean"]
    assert _walk(monkeypatch, tables[1]) == []
