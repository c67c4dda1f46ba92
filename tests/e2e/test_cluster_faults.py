"""Issue 18's cluster proofs on three local KRaft brokers (topics: 3 replicas, 2 in sync to
acknowledge): a broker killed with -9 under live sync and a writer, restarted later — nothing
lost, nothing applied twice, and the longest stall of the target printed; and two `replicator
apply` processes with configuration files of their own (as on two hosts) over a partitioned
topic, one killed — the other takes its partitions over and nothing is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cli import Background
from tests.e2e.test_faults import Writer, _converged, _schema, _slot_exists, _vars
from tests.support import Env, Services, wait_for

# Counts, on the target, how often each audit row was inserted and how often one was written
# again: audit rows are insert-only on legacy, so any update is a change applied twice.
# ENABLE ALWAYS: apply sessions run as replica, where ordinary triggers stay silent.
EFFECTS = """
CREATE TABLE effects (what text PRIMARY KEY, n bigint NOT NULL);
INSERT INTO effects VALUES ('insert', 0), ('update', 0);
CREATE TABLE twice (id bigint, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION count_effect() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE effects SET n = n + 1 WHERE what = lower(TG_OP);
  IF TG_OP = 'UPDATE' THEN INSERT INTO twice (id) VALUES (NEW.id); END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER audit_effects AFTER INSERT OR UPDATE ON audit
  FOR EACH ROW EXECUTE FUNCTION count_effect();
ALTER TABLE audit ENABLE ALWAYS TRIGGER audit_effects;
"""


@pytest.fixture(scope="module")
def trio(services: Services) -> Iterator[Any]:
    if services.kind != "local":
        pytest.skip("starts and kills local Kafka brokers")
    from replicator.local import cluster as local_cluster

    before = local_cluster._load("trio")
    cluster = local_cluster.start_cluster("trio", brokers=3)
    try:
        yield cluster
    finally:
        if before is None or not all(n.running for n in before.nodes):
            local_cluster.stop_cluster("trio")


def _admin(bootstrap: str) -> Any:
    from connectors import kafka_io

    return kafka_io.admin(bootstrap)


def _leader(bootstrap: str, topic: str, partition: int = 0) -> int:
    client = _admin(bootstrap)
    try:
        for p in client.describe_topics([topic])[0]["partitions"]:
            if p["partition_index"] == partition:
                return int(p["leader_id"])
    finally:
        client.close()
    raise AssertionError(f"{topic} has no partition {partition}")


def _replication(bootstrap: str, topic: str) -> tuple[int, str]:
    from kafka.admin import ConfigResource

    client = _admin(bootstrap)
    try:
        parts = client.describe_topics([topic])[0]["partitions"]
        configs = client.describe_configs([ConfigResource("TOPIC", topic)])["topic"][topic]
    finally:
        client.close()
    return len(parts[0]["replica_nodes"]), configs["min.insync.replicas"]["value"]


class StallMeter(threading.Thread):
    """Samples the target's audit rows; the longest time they did not grow while legacy did."""

    def __init__(self, env: Env, writer: Writer) -> None:
        super().__init__(daemon=True)
        self.env, self.writer = env, writer
        self.stop = threading.Event()
        self.longest = 0.0

    def run(self) -> None:
        with self.env.target_conn() as c:
            last, since = -1, time.monotonic()
            while not self.stop.is_set():
                row = c.execute("SELECT count(*) FROM audit").fetchone()
                n = int(row[0]) if row else 0
                now = time.monotonic()
                if n != last or self.writer.stop.is_set():
                    last, since = n, now
                self.longest = max(self.longest, now - since)
                time.sleep(0.05)


def _backfill_applied(env: Env) -> bool:
    with env.target_conn() as c:
        row = c.execute(
            "SELECT bool_and(status = 'applied') FROM replicator.backfill"
            " WHERE to_regclass('replicator.backfill') IS NOT NULL"
        ).fetchone()
    return bool(row and row[0])


def _effects(env: Env) -> dict[str, int]:
    with env.target_conn() as c:
        return {w: int(n) for w, n in c.execute("SELECT what, n FROM effects").fetchall()}


def _audits(env: Env) -> int:
    with env.target_conn() as c:
        row = c.execute("SELECT count(*) FROM audit").fetchone()
    return int(row[0]) if row else 0


def test_kill_9_of_a_broker_under_live_sync_loses_and_duplicates_nothing(
    env: Env, trio: Any, tmp_path: Path
) -> None:
    from replicator.local import cluster as local_cluster

    _schema(env)
    with env.target_conn() as c:
        c.execute(EFFECTS)
    vars_ = _vars(env, REPLICATOR_KAFKA__BOOTSTRAP_SERVERS=trio.bootstrap)
    topic = f"{env.name}.fwd.changes"
    writer = Writer(env)
    meter = StallMeter(env, writer)
    with Background(["run"], vars_, tmp_path / "run.log") as run:
        wait_for(lambda: _slot_exists(env) or run.proc.poll() is not None, 90, what="the slot")
        # The writer starts once the (empty) backfill is applied: a row both in a snapshot
        # chunk and in the changes after it is written twice by design, not by a fault.
        wait_for(lambda: _backfill_applied(env), 90, what="the backfill")
        assert _replication(trio.bootstrap, topic) == (3, "2")
        writer.start()
        try:
            wait_for(lambda: _audits(env) > 100, 60, what="apply under way")
            meter.start()
            victim = _leader(trio.bootstrap, topic)
            local_cluster.kill_node("trio", victim)
            killed_at = _audits(env)
            # Live sync goes on with two brokers: a new leader, two replicas in sync.
            wait_for(lambda: _audits(env) > killed_at + 300, 120, what="apply with a broker down")
            local_cluster.start_cluster("trio", brokers=3)
            back_at = _audits(env)
            wait_for(lambda: _audits(env) > back_at + 300, 120, what="apply after the restart")
            writer.finish()
            try:
                _converged(env)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- run ---\n{run.output()[-6000:]}") from None
        finally:
            writer.stop.set()
            meter.stop.set()
            local_cluster.start_cluster("trio", brokers=3)
        assert run.proc.poll() is None, run.output()
    assert "Traceback" not in run.output(), run.output()
    effects = _effects(env)
    if effects["update"]:
        with env.target_conn() as c:
            twice = c.execute("SELECT id, at FROM twice ORDER BY at LIMIT 10").fetchall()
        raise AssertionError(f"{effects}: applied twice {twice}\n{run.output()[-4000:]}")
    assert effects == {"insert": _audits(env), "update": 0}, effects  # 0 lost, 0 applied twice
    print(
        f"\nbroker {victim} (leader of {topic}) killed: {writer.commits} source transactions, "
        f"{effects['insert']} audit rows applied once each, longest stall {meter.longest:.2f} s"
    )
    assert meter.longest < 60


def _toml(vars_: dict[str, str], path: Path) -> Path:
    """The REPLICATOR_* variables as a configuration file of its own (another host's)."""
    sections: dict[str, list[str]] = {"": []}
    for key, value in sorted(vars_.items()):
        name = key.removeprefix("REPLICATOR_").lower()
        section, _, field = name.rpartition("__")
        literal = value if value.isdigit() else '"' + value.replace('"', '\\"') + '"'
        sections.setdefault(section, []).append(f"{field} = {literal}")
    text = "\n".join(sections.pop(""))
    for section, lines in sections.items():
        text += f"\n[{section}]\n" + "\n".join(lines)
    path.write_text(text + "\n")
    return path


def _members(bootstrap: str, group: str) -> list[set[int]]:
    client = _admin(bootstrap)
    try:
        described = client.describe_groups([group])[group]
    finally:
        client.close()
    if described.get("error") or described.get("group_state") != "Stable":
        return []
    out = []
    for m in described["members"]:
        parts: set[int] = set()
        for a in m["member_assignment"]["assigned_partitions"]:
            parts.update(a["partitions"])
        out.append(parts)
    return out


def _positions(env: Env, topic: str) -> dict[int, int]:
    with env.target_conn() as c:
        rows = c.execute(
            "SELECT partition, next_offset FROM replicator.offsets WHERE topic = %s", (topic,)
        ).fetchall()
    return {int(p): int(o) for p, o in rows}


def test_an_apply_process_killed_hands_its_partitions_to_the_other(
    env: Env, trio: Any, tmp_path: Path
) -> None:
    _schema(env)
    vars_ = _vars(
        env,
        REPLICATOR_KAFKA__BOOTSTRAP_SERVERS=trio.bootstrap,
        REPLICATOR_KAFKA__PARTITIONS="4",
    )
    configs = [_toml(vars_, tmp_path / f"host{k}.toml") for k in (1, 2)]
    topic, group = f"{env.name}.fwd.changes", f"{env.name}-fwd-apply"
    writer = Writer(env)
    with Background(["capture"], vars_, tmp_path / "capture.log") as cap:
        wait_for(lambda: _slot_exists(env) or cap.proc.poll() is not None, 90, what="the slot")
        hosts = [
            Background(["apply", "-c", str(c)], {}, tmp_path / f"{c.stem}.log") for c in configs
        ]
        try:
            # Live sync: the (empty) backfill is behind, both processes hold partitions.
            wait_for(lambda: _backfill_applied(env), 90, what="the backfill")
            writer.start()
            split = wait_for(
                lambda: (m := _members(trio.bootstrap, group)) and len(m) == 2 and all(m) and m,
                90,
                what="both apply processes holding partitions",
            )
            wait_for(lambda: len(_positions(env, topic)) == 4, 60, what="all partitions applied")
            before = _audits(env)
            wait_for(lambda: _audits(env) > before + 200, 60, what="apply under way")
            hosts[0].kill9()
            killed = time.monotonic()
            assert "Traceback" not in hosts[0].output()
            at_kill = _positions(env, topic)
            taken = wait_for(
                lambda: (m := _members(trio.bootstrap, group)) == [{0, 1, 2, 3}] and m,
                120,
                what="the survivor holding every partition",
            )
            took = time.monotonic() - killed
            # Every partition, including the dead process's, moves on under the survivor.
            wait_for(
                lambda: all(o > at_kill[p] for p, o in _positions(env, topic).items()),
                60,
                what="every partition applied after the kill",
            )
            writer.finish()
            _converged(env)
        finally:
            writer.stop.set()
            for h in hosts:
                h.stop()
        assert cap.proc.poll() is None, cap.output()
    assert "Traceback" not in hosts[1].output(), hosts[1].output()
    print(f"\npartitions before the kill {split}, after {taken}, {took:.1f} s after the kill")
