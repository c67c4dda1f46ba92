"""Forged or malformed control messages (any role that may connect to the source can emit one
with the replicator's prefix): the capture forwards what it cannot read as `unreadable`, never
crashing on it, and apply dead-letters a control it must not act on."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import orjson

from connectors import pgoutput as po
from connectors.assembler import CONTROL_MAX_BYTES, _control
from replicator.apply.controls import control_problem


def _message(content: bytes, prefix: str = "replicator") -> po.LogicalMessage:
    return po.LogicalMessage(False, 1, prefix, content)


def test_the_capture_forwards_an_oversized_a_deep_or_a_broken_control_as_unreadable() -> None:
    nested: Any = 1
    for _ in range(20):
        nested = [nested]
    for content, why in [
        (b"[" * 100_000, "depth limit"),  # json.loads raised a RecursionError here
        (json.dumps({"a": nested}).encode(), "nested too deep"),
        (b"x" * (CONTROL_MAX_BYTES + 1), "bytes"),
        (b"not json", "line 1 column 1"),
        (b"[1, 2]", "not an object"),
        (b'{"s": "\\ud800"}', "surrogate"),  # orjson, encoding the envelope, refused it
        (b"\xff\xfe", "UTF-8"),
    ]:
        control = _control(_message(content))
        assert control["kind"] == "unreadable", (why, control)
        assert why in control["why"], (why, control["why"])
        assert control["bytes"] == len(content) and len(control["content"]) <= 1000
        orjson.dumps(control)  # what the capture then encodes must encode
    big = _control(_message(b'{"kind": "x", "n": 18446744073709551616}'))
    orjson.dumps(big)  # a 65-bit integer: a float, which the envelope encodes
    ok = _control(_message(b'{"kind": "heartbeat", "emitted_at": "2026-12-08T00:00:00+00:00"}'))
    assert ok["kind"] == "heartbeat"
    ddl = _control(_message(b'{"tag": "ALTER TABLE", "table": "public.t"}', "replicator.ddl"))
    assert ddl == {"kind": "ddl", "ddl": {"tag": "ALTER TABLE", "table": "public.t"}}


def test_apply_acts_only_on_controls_of_the_shape_the_replicator_emits() -> None:
    now = dt.datetime.now(dt.UTC)
    good = [
        ({"kind": "heartbeat", "emitted_at": now.isoformat()}, False),
        ({"kind": "heartbeat", "emitted_at": "2026-12-08T00:00:00+20:00"}, False),  # sent as UTC
        ({"kind": "backfill_started", "backfill_id": "b1", "tables": []}, False),
        ({"kind": "snapshot_done", "backfill_id": "b1"}, True),
        ({"kind": "marker", "marker": "fence", "id": "m1"}, False),
        (
            {
                "kind": "ddl",
                "ddl": {"tag": "ALTER TABLE", "table": "public.t", "columns": {"id": "integer"}},
            },
            False,
        ),
        ({"kind": "ddl", "ddl": {"tag": "DROP TABLE", "table": None, "dropped": True}}, False),
    ]
    for ctl, on_snapshot in good:
        assert control_problem(ctl, on_snapshot) is None, ctl
    bad = [
        ({"kind": "unreadable", "why": "nested too deep"}, False, "cannot read"),
        ({"kind": "heartbeat"}, False, "not a time"),
        ({"kind": "heartbeat", "emitted_at": "x"}, False, "not a time"),
        ({"kind": "heartbeat", "emitted_at": "infinity"}, False, "not a time"),
        ({"kind": "heartbeat", "emitted_at": "2026-12-08T00:00:00"}, False, "with its zone"),
        ({"kind": "backfill_started", "backfill_id": 1}, False, "without a backfill id"),
        ({"kind": "snapshot_done"}, True, "without a backfill id"),
        ({"kind": "snapshot_done", "backfill_id": "b1"}, False, "on the changes topic"),
        ({"kind": "marker"}, False, "without an id"),
        ({"kind": "marker", "id": 3, "marker": "fence"}, False, "without an id"),
        ({"kind": "ddl", "ddl": {"tag": "ALTER TABLE", "table": ["t"]}}, False, "types"),
        ({"kind": "ddl", "ddl": {"tag": "ALTER TABLE", "columns": 7}}, False, "types"),
        ({"kind": "ddl", "ddl": {"tag": "ALTER TABLE", "columns": ["id"]}}, False, "types"),
        ({"kind": "ddl", "ddl": {"tag": "ALTER TABLE", "columns": 0}}, False, "types"),
        ({"kind": "ddl", "ddl": {"tag": "ALTER TABLE", "columns": {"id": 5}}}, False, "types"),
        ({"kind": "ddl", "ddl": {"tag": "ALTER TABLE", "table": []}}, False, "types"),
        ({"kind": "ddl", "ddl": {"tag": "ALTER TABLE", "table": "nodot"}}, False, "types"),
        ({"kind": "ddl", "ddl": {"tag": "DROP TABLE", "dropped": "yes"}}, False, "types"),
        ({"kind": "ddl", "ddl": {"tag": 5}}, False, "types"),
        ({"kind": "marker", "id": "m", "marker": "fence", "emitted_at": "x"}, False, "not a time"),
        ({"kind": "marker", "id": "m\x00", "marker": "fence"}, False, "NUL"),
        ({"kind": "backfill_started", "backfill_id": "b\x00"}, False, "NUL"),
    ]
    for ctl, on_snapshot, why in bad:
        problem = control_problem(ctl, on_snapshot)
        assert problem is not None and why in problem.message, (ctl, problem)
        assert problem.hint and "dlq purge" in problem.hint
