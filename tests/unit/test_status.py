"""The readiness verdict: every reason named, none when all is well."""

from __future__ import annotations

from replicator.status.overview import KafkaStatus, SourceStatus, Status, TargetStatus, verdict


def _healthy() -> Status:
    return Status(
        pipeline="p",
        direction="fwd",
        collected_at="2026-11-25T00:00:00+00:00",
        source=SourceStatus("p_fwd", True, True, "reserved", 0, 1024),
        kafka=KafkaStatus("p.fwd.changes", [], 0, 0),
        target=TargetStatus(
            end_to_end_lag_s=0.2,
            backfill={"id": "b1", "status": "applied", "rows_total": 1, "rows_applied": 1},
            validation={"outcome": "clean", "age_s": 60.0, "differences": 0},
        ),
    )


def test_a_healthy_pipeline_is_ready() -> None:
    assert verdict(_healthy(), 2.0) == (True, [])


def test_every_reason_is_listed() -> None:
    st = _healthy()
    assert st.source is not None and st.kafka is not None and st.target is not None
    st.source.slot_active = False
    st.source.wal_status = "unreserved"
    st.kafka.dlq_messages = 3
    st.target.end_to_end_lag_s = 7.5
    st.target.backfill = {"id": "b2", "status": "snapshot", "rows_total": 9, "rows_applied": 1}
    st.target.validation = {"outcome": "clean", "age_s": 3 * 86400.0, "differences": 0}
    ready, reasons = verdict(st, 2.0)
    assert not ready
    assert reasons == [
        "replication slot p_fwd has no capture attached",
        "slot p_fwd is in danger: wal_status=unreserved",
        "end-to-end lag 7.5 s is over the threshold 2 s",
        "backfill b2 is incomplete (snapshot)",
        "last validation is stale (72 h old)",
        "3 dead letter(s) in p's DLQ",
    ]


def test_an_unreachable_part_is_a_reason_and_the_rest_still_counts() -> None:
    st = _healthy()
    st.target = None
    st.unreachable = [{"part": "target", "message": "cannot connect", "hint": "check"}]
    assert verdict(st, 2.0) == (False, ["target unreachable: cannot connect"])


def test_a_switch_stopped_past_its_decision_is_named_with_the_command_that_finishes_it() -> None:
    from replicator.cutover.decision import Decision

    st = _healthy()
    st.switching = Decision("rollback", "abc123", "rev", "fwd", "2026-11-25 00:00:00").to_json()
    ready, reasons = verdict(st, 2.0)
    assert not ready and len(reasons) == 1
    assert "rollback (run abc123)" in reasons[0]
    assert "`replicator rollback --yes` again" in reasons[0]


def test_status_says_how_many_tables_the_last_validation_checked_in_sql() -> None:
    from rich.console import Console

    from replicator.cli.ops import render

    st = _healthy()
    assert st.target is not None and st.target.validation is not None
    st.target.validation["paths"] = {"public.user": "sql", "public.member": "python"}
    console = Console(record=True, width=120)
    console.print(render(st))
    text = console.export_text()
    assert "checked in SQL" in text and "1/2 tables" in text


def test_after_a_cutover_the_verdict_asks_only_what_a_rollback_needs() -> None:
    """A rollback's preflight wants no backfill and no validation (its verify re-checks every
    row the reverse stream wrote): the rollback verdict must not say "no validation has run"
    beside a validation card that says "clean"."""
    st = _healthy()
    st.direction = "rev"
    assert st.target is not None
    st.target.backfill = None
    st.target.validation = None
    assert verdict(st, 2.0) == (True, [])
    st.direction = "fwd"
    assert verdict(st, 2.0)[1] == [
        "no backfill has run",
        "no validation has run (`replicator validate`)",
    ]


def test_a_slot_the_server_invalidated_is_named_with_its_reason() -> None:
    st = _healthy()
    assert st.source is not None
    st.source.wal_status, st.source.invalidation_reason = "lost", "wal_removed"
    ready, reasons = verdict(st, 2.0)
    assert not ready and reasons == [
        "slot p_fwd was invalidated by the server (wal_removed): it streams nothing more;"
        " a new slot needs a new backfill"
    ]
