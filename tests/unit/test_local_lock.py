"""The lock that lets one start or stop of the local services run at a time
(replicator.local.lock), across processes, and the diagnosis of a broker left behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from replicator.errors import PreconditionError
from replicator.local.lock import held
from replicator.local.services import _other_brokers

HOLDER = """
import sys, time
from pathlib import Path
from replicator.local.lock import held
with held(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(state: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_command_waits_for_the_first(tmp_path: Path) -> None:
    proc = _holder(tmp_path, 0.6)
    start = time.monotonic()
    with held(tmp_path):
        waited = time.monotonic() - start  # until the first one let go, after its 0.6 s
    assert waited > 0.4
    proc.wait()


def test_nested_holds_in_one_thread_do_not_wait(tmp_path: Path) -> None:
    with held(tmp_path), held(tmp_path, timeout=0.1):
        pass


def test_a_lock_held_too_long_is_a_clear_error(tmp_path: Path) -> None:
    proc = _holder(tmp_path, 5)
    try:
        with pytest.raises(PreconditionError) as err, held(tmp_path, timeout=0.3):
            pass
        assert "services.lock" in str(err.value) and err.value.hint
    finally:
        proc.kill()
        proc.wait()


def test_a_broker_left_behind_on_the_same_properties_is_named(tmp_path: Path) -> None:
    props = tmp_path / "server.properties"
    # A stand-in with a broker's command line: "kafka.Kafka <properties>".
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "kafka.Kafka", str(props)]
    )
    try:
        deadline = time.monotonic() + 5
        while other.pid not in _other_brokers(props, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _other_brokers(props, 0) == [other.pid]
        assert _other_brokers(props, other.pid) == []
        assert _other_brokers(tmp_path / "elsewhere.properties", 0) == []
    finally:
        other.kill()
        other.wait()
