"""The end-to-end lag estimate (replicator.status.lag): from the data, right both ways."""

from __future__ import annotations

from replicator.status.lag import SLOT_SLACK_BYTES, Applied, SlotReading, estimate

NOW = 1_000_000.0


def _part(commit: float | None, beat: float | None, latency: float = 0.02) -> Applied:
    return Applied(
        next_offset=10,
        commit_ts=None if commit is None else NOW - commit,
        heartbeat_at=None if beat is None else NOW - beat,
        heartbeat_latency_s=None if beat is None else latency,
    )


def _lag(parts: dict[int, Applied], behind: dict[int, int], capture: bool = False) -> float | None:
    lag = estimate(NOW, parts, behind, capture_behind=capture, heartbeat_interval_s=5.0)
    return None if lag is None else round(lag, 6)


def test_waiting_under_load_is_the_age_of_the_newest_applied_commit_not_of_the_heartbeat() -> None:
    # Heartbeat 4.2 s ago, last transaction applied committed 0.12 s ago, more in Kafka: the
    # old figure said 4.2 s (the sawtooth).
    assert _lag({0: _part(0.12, 4.2)}, {0: 3}) == 0.12


def test_nothing_waiting_is_the_last_heartbeats_transit() -> None:
    assert _lag({0: _part(30.0, 2.0, latency=0.015)}, {0: 0}) == 0.015


def test_an_idle_stream_waits_since_the_newer_heartbeat() -> None:
    # No transaction for a minute; a heartbeat 1 s ago went through: whatever waits now
    # committed after it.
    assert _lag({0: _part(60.0, 1.0)}, {0: 1}) == 1.0


def test_wal_the_capture_has_not_read_waits_since_the_newest_point_of_any_partition() -> None:
    parts = {0: _part(9.0, 4.0), 1: _part(3.0, 4.0)}
    assert _lag(parts, {0: 0, 1: 0}, capture=True) == 3.0
    # Kafka behind on partition 0 only: its own point.
    assert _lag(parts, {0: 2, 1: 0}) == 4.0


def test_a_partition_waiting_with_nothing_applied_yet_waits_since_the_oldest_point() -> None:
    assert _lag({0: _part(2.0, 3.0)}, {0: 0, 1: 5}) == 2.0


def test_an_overdue_heartbeat_is_a_floor() -> None:
    # Nothing seen waiting (a capture attached but not reading), yet the heartbeat due 7 s ago
    # has not arrived.
    assert _lag({0: _part(40.0, 12.0)}, {0: 0}) == 7.0


def test_nothing_applied_is_unknown() -> None:
    assert _lag({}, {0: 4}) is None
    assert _lag({0: _part(None, None)}, {0: 0}) is None


def test_the_slot_counts_as_behind_past_a_slack_only_while_a_capture_reads_it() -> None:
    def slot(active: bool, unread: int | None) -> SlotReading:
        return SlotReading(True, active, "reserved", 0, 0, 0, unread, NOW, 0.0)

    assert not slot(True, SLOT_SLACK_BYTES).capture_behind
    assert slot(True, SLOT_SLACK_BYTES + 1).capture_behind
    assert slot(False, 200).capture_behind  # detached: a single row waits for a reader
    assert not slot(False, 0).capture_behind
    assert not slot(False, None).capture_behind
    assert slot(True, 0).now_at(2.5) == NOW + 2.5
