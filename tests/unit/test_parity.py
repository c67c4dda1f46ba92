"""The parity file's checks, the comparison of two answers and a plan said in words."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from replicator.errors import ConfigError
from replicator.parity.compare import differs, goal_misses, latency
from replicator.parity.explain import summarise
from replicator.parity.spec import Pair, load, parse

MCP_PARITY = Path(__file__).resolve().parents[2] / "transforms" / "mcp_manager" / "parity.toml"


def _file(extra: str, pair: str = "") -> str:
    return f'{extra}\n[[pair]]\nname = "p"\nlegacy = "SELECT 1"\ntarget = "SELECT 1"\n{pair}'


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[[pair", "not valid TOML"),
        (_file("colour = 1"), "unknown key(s) colour"),
        (_file("", "compare = 'bag'"), "pair #1 'p': compare = 'bag'"),
        (_file("", "sample = 3"), "pair #1 'p': unknown key(s) sample"),
        (_file("", "max_ratio = 0"), "pair #1 'p': max_ratio = 0"),
        (_file("", "[pair.target_params]\nid = 'no_such_converter'"), "no converter"),
        (_file("", "[pair.project]\nid = 'transforms.nowhere:f'"), "no converter"),
        (_file("", "[pair.project]\nid = 'uuid_to_text(a b'"), "is not `converter`"),
        ('[[pair]]\nname = "p"\nlegacy = "SELECT 1"', "pair #1 'p': `target` is missing"),
        ("runs = 3", "no [[pair]]"),
        (
            _file("") + '[[pair]]\nname = "p"\nlegacy = "SELECT 1"\ntarget = "SELECT 1"\n',
            "two pairs",
        ),
        (
            '[[pair]]\nname = "q"\nlegacy = "SELECT %(id)s"\ntarget = "SELECT 1"',
            "pair #1 'q': the legacy query wants id",
        ),
    ],
)
def test_bad_files_are_named(text: str, said: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(Path("parity.toml"), text)
    assert said in str(err.value) and err.value.hint


def test_the_shipped_mcp_pairs_parse() -> None:
    pairs = parse(MCP_PARITY, MCP_PARITY.read_text()).pairs
    assert len(pairs) == 8
    by = {p.name: p for p in pairs}
    role = by["users by role"]
    assert role.args("target", {"admin": True}) == {"admin": True, "role": "admin"}
    org = uuid.UUID(int=7)
    assert by["organization members with roles"].args("target", {"org": org}) == {"org": str(org)}
    assert by["organization members with roles"].args("legacy", {"org": org}) == {"org": org}


def test_positional_arguments_follow_the_params_columns() -> None:
    p = Pair("p", "SELECT %s, %s", "SELECT %s, %s")
    assert p.args("legacy", {"a": 1, "b": 2}) == (1, 2)
    assert p.args("legacy", {}) is None  # a LIKE '%' pattern stays as written


def test_compare_sets_order_counts_and_projection() -> None:
    u = uuid.uuid4()
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    legacy = [{"id": u, "at": at, "cfg": {"b": 1, "a": [1]}, "key": "ab" * 32}]
    target = [
        {
            "id": str(u),
            "at": at.astimezone(timezone(timedelta(hours=2))),
            "cfg": {"a": [1], "b": 1},
            "key": "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s",
        }
    ]
    p = Pair("p", "", "")
    p.project = (
        parse(Path("x"), _file("", "[pair.project]\nkey = 'sha256_hex_to_base64url'"))
        .pairs[0]
        .project
    )
    assert differs(p, legacy, target) is None
    target[0]["cfg"] = {"a": [2], "b": 1}
    assert "1 only on legacy" in (differs(p, legacy, target) or "")
    p.columns = ["id", "at"]
    assert differs(p, legacy, target) is None

    rows = [{"n": 1}, {"n": 2}]
    ordered = Pair("o", "", "", compare="ordered")
    assert differs(ordered, rows, rows[::-1]) == "row 1: legacy (1) ≠ target (2)"
    assert differs(Pair("s", "", ""), rows, rows[::-1]) is None
    assert differs(Pair("c", "", "", compare="count"), rows, rows[:1]) == "2 rows ≠ 1"


def test_latency_and_goals() -> None:
    ms = latency([float(i) for i in range(1, 101)])
    assert ms == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    p = Pair("p", "", "", max_ratio=1.1, max_ms=500, min_ms=1)
    fast = {"p50": 0.3, "p95": 0.5, "p99": 0.9}
    assert goal_misses(p, {"p50": 0.1, "p95": 0.1, "p99": 0.1}, fast) == []  # round trips
    assert (
        goal_misses(p, {"p50": 10, "p95": 12, "p99": 13}, {"p50": 10.5, "p95": 20, "p99": 30}) == []
    )
    assert goal_misses(
        p, {"p50": 10, "p95": 12, "p99": 13}, {"p50": 12, "p95": 600, "p99": 700}
    ) == [
        "p95 600.0 ms > 500 ms",
        "p50 1.20x legacy's > 1.1x",
    ]


def test_a_plan_in_words() -> None:
    plan = [
        {
            "Plan": {
                "Node Type": "Sort",
                "Sort Key": ["created_at DESC"],
                "Sort Space Type": "Disk",
                "Sort Space Used": 9000,
                "Actual Loops": 1,
                "Plans": [
                    {
                        "Node Type": "Seq Scan",
                        "Relation Name": "audit_log",
                        "Schema": "public",
                        "Filter": "((organization_id = $1) AND ((action)::text = 'login'::text))",
                        "Actual Rows": 10,
                        "Rows Removed by Filter": 99990,
                        "Actual Loops": 1,
                    }
                ],
            },
            "Execution Time": 42.0,
        }
    ]
    s = summarise(plan)
    assert s.findings[0].startswith("sort by created_at DESC spilled to disk (9000 kB)")
    assert s.findings[1].startswith(
        "sequential scan of public.audit_log: 100000 rows read to keep 10"
    )
    assert s.suggestions == [
        "CREATE INDEX CONCURRENTLY ON public.audit_log (organization_id, action);"
    ]
    small = [{"Plan": {"Node Type": "Seq Scan", "Relation Name": "t", "Filter": "(a = 1)",
                       "Actual Rows": 1, "Rows Removed by Filter": 10}, "Execution Time": 0.1}]  # fmt: skip
    assert summarise(small).suggestions == []
    assert "no scan or sort to blame" in summarise(small).findings[0]


def test_a_missing_file_says_where_to_write_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path / "parity.toml")
    assert "cannot read the parity file" in str(err.value)
    assert err.value.hint and "--file" in err.value.hint
