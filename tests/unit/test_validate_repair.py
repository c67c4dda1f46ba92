"""What `validate --repair` does about each kind of difference (no servers): re-send the legacy
rows of a missing or changed row, delete an extra one, refuse a collision and a row the mapping
refuses (each with its key and what to do), leave unsettled rows and orphans alone; and how the
run after it turns each into repaired or still different."""

from __future__ import annotations

from datetime import UTC, datetime

from replicator.config import Settings
from replicator.validate.expect import Rejected
from replicator.validate.repair import check, plan, repair
from replicator.validate.report import Difference, Orphan, Report, key_text
from transforms.mcp_manager import MAPPING


def _report() -> Report:
    r = Report("full", None, datetime.now(UTC))
    r.differences = [
        Difference("public.apikey", "missing", {"id": "k1"}),
        Difference("public.organization", "differs", {"id": "o1"}, columns=["slug"]),
        Difference("public.audit_log", "extra", {"id": "9"}),
        Difference(
            "public.user", "collides", {"id": "u1"},
            sources=[{"table": "public.user", "key": {"id": "a"}},
                     {"table": "public.user", "key": {"id": "b"}}],
        ),
        Difference("public.mcp_server", "unsettled", {"id": "3"}),
        Difference("public.team", "missing", {"id": "t1"}),  # its source unknown
    ]  # fmt: skip
    r.provenance = {
        ("public.apikey", key_text({"id": "k1"})): {("public.api_key", ("k1",))},
        ("public.organization", key_text({"id": "o1"})): {("public.organization", ("o1",))},
    }
    r.rejected = [Rejected("public.user", {"id": "bad"}, "email is not an address")]
    r.orphans = [Orphan("public.member", "member_user_fk", "public.user", {"id": "m1"}, {})]
    return r


def test_each_kind_of_difference_gets_its_action_and_a_reason_when_refused() -> None:
    got = {(a.table, a.kind): a for a in plan(_report())}
    assert got["public.apikey", "missing"].action == "resend"
    assert got["public.apikey", "missing"].sources == [{"table": "public.api_key", "key": ["k1"]}]
    assert got["public.organization", "differs"].action == "resend"
    assert got["public.audit_log", "extra"].action == "delete"
    collides = got["public.user", "collides"]
    assert collides.action == "refuse" and "change the data or the mapping" in collides.reason
    rejected = got["public.user", "rejected"]
    assert rejected.action == "refuse" and "email is not an address" in rejected.reason
    assert "dlq replay" in rejected.reason
    assert got["public.team", "missing"].action == "refuse"
    assert got["public.mcp_server", "unsettled"].action == "none"
    assert got["public.member", "orphan"].action == "none"


def test_a_dry_run_plans_and_sends_nothing_and_the_check_says_what_is_left() -> None:
    report = _report()
    dry = repair(Settings(), MAPPING, report, dry_run=True, direction="fwd")  # no server
    assert dry.repair_id is None
    assert dry.count("planned") == 3 and dry.count("refused") == 3
    assert dry.count("still_different") == 2  # unsettled and the orphan: nothing to send
    after = Report("full", None, datetime.now(UTC))
    after.differences = [Difference("public.organization", "differs", {"id": "o1"})]
    check(dry, after)
    results = {(a.table, a.kind): a.result for a in dry.actions}
    assert results["public.apikey", "missing"] == "repaired"
    assert results["public.organization", "differs"] == "still_different"
    assert results["public.user", "collides"] == "refused"
    assert dry.to_json()["counts"]["refused"] == 3


def test_after_a_cutover_legacy_is_repaired_from_the_target() -> None:
    got = {(a.table, a.kind): a for a in plan(_report(), "rev")}
    differs = got["public.organization", "differs"]
    assert differs.action == "resend"
    assert differs.sources == [{"table": "public.organization", "key": ["o1"]}]
    assert got["public.audit_log", "extra"].action == "resend"  # legacy lacks it: sent back
    missing = got["public.apikey", "missing"]  # legacy has a row the target lost: deleted
    assert missing.action == "delete"
    assert missing.sources == [{"table": "public.api_key", "key": ["k1"]}]
    assert got["public.user", "collides"].action == "refuse"


def test_a_repair_delete_names_the_whole_key_of_a_mapped_table() -> None:
    """The sink deletes by the columns a delete names: a key short of the table's (a reverse
    repair's provenance key zipped onto other key columns) would delete every row sharing
    that value. Refused, to the dead-letter queue, with nothing deleted."""
    import pytest

    from replicator.apply.rows import repair_delete
    from replicator.errors import DataError
    from transforms.api import Delete

    ok = repair_delete(MAPPING.forward, {"table": "public.organization", "key": {"id": "o1"}})
    assert ok == Delete("public.organization", {"id": "o1"})
    for key in ({"slug": "acme"}, {"id": "o1", "slug": "acme"}):
        with pytest.raises(DataError, match="key"):
            repair_delete(MAPPING.forward, {"table": "public.organization", "key": key})
    with pytest.raises(DataError, match="not a mapped table"):
        repair_delete(MAPPING.forward, {"table": "public.secrets", "key": {"id": "1"}})
