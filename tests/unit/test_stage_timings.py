"""The stage timings' files and how bench.live joins them (no services)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from replicator.stage_timings import (
    ApplyTimings,
    CaptureTimings,
    apply_timings,
    stage_breakdown,
    stage_samples,
)


def _env(commit_ts: str | None, *, last: bool = True, control: Any = None) -> SimpleNamespace:
    return SimpleNamespace(commit_ts=commit_ts, last=last, control=control)


class _Future:
    """Stands for the producer's future: callbacks run when the acknowledgement comes."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def add_callback(self, fn: Any) -> None:
        self.callbacks.append(fn)

    def ack(self, partition: int, offset: int) -> None:
        md = type("Md", (), {"partition": partition, "offset": offset})()
        for fn in self.callbacks:
            fn(md)


def test_capture_writes_a_line_when_kafka_acknowledges(tmp_path: Path) -> None:
    t = CaptureTimings(str(tmp_path))
    fut = _Future()
    t.sent(fut, ready_at=10.0)
    assert not any(f.read_text() for f in tmp_path.glob("capture-*.csv"))
    fut.ack(0, 7)
    t.close()
    (line,) = next(tmp_path.glob("capture-*.csv")).read_text().splitlines()
    p, o, ready, sent, acked = line.split(",")
    assert (p, o, float(ready)) == ("0", "7", 10.0)
    assert float(sent) <= float(acked)


def test_apply_writes_its_transactions_at_commit_and_forgets_a_rolled_back_batch(
    tmp_path: Path,
) -> None:
    t = ApplyTimings(str(tmp_path))
    t.read(0, 1, _env("2026-01-01T00:00:00+00:00"), 5.0)
    t.forget()  # rolled back: read again later
    t.committed()
    t.read(0, 1, _env("2026-01-01T00:00:00+00:00"), 6.0)
    t.read(0, 1, _env("2026-01-01T00:00:00.001000+00:00"), 6.0)  # two in one message
    t.read(0, 2, _env("2026-01-01T00:00:01+00:00", last=False), 6.0)  # a slice: not timed
    t.read(0, 3, _env(None, control={"kind": "heartbeat"}), 6.0)  # not a transaction
    t.committed()
    t.close()
    lines = next(tmp_path.glob("apply-*.csv")).read_text().splitlines()
    assert [ln.split(",")[:4] for ln in lines] == [
        ["0", "1", "2026-01-01T00:00:00+00:00", "6.000000"],
        ["0", "1", "2026-01-01T00:00:00.001000+00:00", "6.000000"],
    ]


def test_timings_off_write_nothing(tmp_path: Path) -> None:
    t = apply_timings("")
    t.read(0, 1, _env("2026-01-01T00:00:00+00:00"), 5.0)
    t.committed()
    assert not list(tmp_path.iterdir())


def test_stages_are_joined_by_partition_and_offset(tmp_path: Path) -> None:
    commit = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    (tmp_path / "capture-1.csv").write_text(
        f"0,5,{commit + 0.001},{commit + 0.002},{commit + 0.004}\n0,6,1,2\n"  # a cut line
    )
    (tmp_path / "apply-2.csv").write_text(
        f"0,5,2026-01-01T00:00:00+00:00,{commit + 0.005},{commit + 0.009}\n"
        f"0,4,None,{commit},{commit}\n"  # a control message: no commit time
        f"0,3,2025-12-31T23:59:00+00:00,{commit},{commit}\n"  # before the window
    )
    samples = stage_samples(tmp_path, commit - 1, commit + 1)
    rounded = {k: [round(v, 3) for v in vs] for k, vs in samples.items()}
    assert rounded == {
        "capture": [2.0],
        "kafka": [2.0],
        "fetch": [1.0],
        "apply": [4.0],
        "total": [9.0],
    }
    summary = stage_breakdown(tmp_path, commit - 1, commit + 1)
    assert summary["transactions"] == 1 and summary["total"] == {"p50": 9.0, "p99": 9.0}
