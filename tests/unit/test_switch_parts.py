"""The switch's small parts: fault specs, the hook's environment and masked output, signals."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from replicator.config import Settings
from replicator.cutover import faults
from replicator.cutover.hook import HookRefused, hook_env, masked, run_hook
from replicator.cutover.interrupt import Interrupted, SignalGuard
from replicator.errors import CutoverAborted


def _settings(**cutover: object) -> Settings:
    os.environ["REPLICATOR_CONFIG"] = os.devnull
    return Settings(
        name="p",
        source={"host": "db1", "password": "legacy-secret-1"},
        target={"host": "db2", "password": "target-secret-2"},
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_username": "u",
            "sasl_password": "kafka-secret-3",
        },
        cutover=cutover,
    )


def test_fault_specs() -> None:
    assert faults.parse("drain=sigkill, decide:new") == {"drain": "sigkill", "decide:new": "raise"}
    assert faults.parse(None) == {}
    with pytest.raises(ValueError, match="unknown fault kind"):
        faults.parse("drain=explode")


def test_a_raise_fault_strikes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "verify=raise")
    f = faults.Faults(None)
    f.strike("drain")
    with pytest.raises(CutoverAborted, match="induced failure at verify"):
        f.strike("verify")
    f.strike("verify")  # once only


def test_the_hook_gets_no_secret_of_the_replicator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICATOR_SOURCE__PASSWORD", "legacy-secret-1")
    monkeypatch.setenv("KUBECONFIG_EXTRA", "x")
    monkeypatch.setenv("DEPLOY_TOKEN", "hook-needs-this")
    s = _settings(hook_env=["DEPLOY_TOKEN"])
    env = hook_env(s, action="cutover", run_id="r1", new=s.target)
    assert not any(k.startswith("REPLICATOR_") and "PASSWORD" in k for k in env)
    assert "legacy-secret-1" not in "".join(env.values())
    assert env["DEPLOY_TOKEN"] == "hook-needs-this" and "KUBECONFIG_EXTRA" not in env
    assert env["REPLICATOR_NEW_WRITER"] == "postgresql://db2:5432/postgres"
    assert env["REPLICATOR_ACTION"] == "cutover" and env["REPLICATOR_RUN_ID"] == "r1"
    assert env["PATH"] == os.environ["PATH"]


def test_what_the_hook_prints_is_masked_before_it_reaches_an_error() -> None:
    s = _settings()
    said = masked("dsn postgresql://u:target-secret-2@h and kafka-secret-3", s)
    assert "secret" not in said and said.count("***") == 2
    script = (
        "import sys; print('connecting with legacy-secret-1 failed', file=sys.stderr); sys.exit(4)"
    )
    with pytest.raises(HookRefused) as refused:
        run_hook(f'{sys.executable} -c "{script}"', s, action="cutover", run_id="r", new=s.target)
    assert "legacy-secret-1" not in refused.value.message
    assert "exited with 4" in refused.value.message and "***" in refused.value.message


def test_a_hook_that_hangs_is_killed_with_what_it_started() -> None:
    s = _settings(hook_timeout_s=0.3)
    with pytest.raises(CutoverAborted, match=r"did not finish within 0\.3s") as hung:
        run_hook("sh -c 'sleep 30 & sleep 30'", s, action="cutover", run_id="r", new=s.target)
    assert not isinstance(hung.value, HookRefused)  # it may have switched


def test_a_hook_that_cannot_run_says_it_did_not_switch() -> None:
    s = _settings()
    with pytest.raises(HookRefused, match="could not run"):
        run_hook("/no/such/hook", s, action="cutover", run_id="r", new=s.target)


def test_the_first_signal_raises_later_ones_are_noted() -> None:
    guard = SignalGuard()
    with guard.armed():
        with pytest.raises(Interrupted) as first:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)  # let the handler run here
        assert first.value.signame == "SIGTERM" and isinstance(first.value, KeyboardInterrupt)
        with guard.calm():
            os.kill(os.getpid(), signal.SIGTERM)  # ignored: an abort must not be cut in half
            signal.sigtimedwait([], 0)
            guard.check()  # an abort's own steps go on


def test_a_stop_that_a_handler_swallowed_still_stops_the_next_step() -> None:
    """A step's code that turns errors into a fallback may catch the Interrupted (it is a
    ReplicatorError too); the switch must not go on as if no stop had been asked for."""
    guard = SignalGuard()
    with guard.armed():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)
        except Interrupted:
            pass  # swallowed, as an `except ReplicatorError: fall back` would
        with pytest.raises(Interrupted, match="SIGTERM"):
            guard.check()


def test_a_signal_while_calm_stops_the_switch_at_the_next_step() -> None:
    guard = SignalGuard()
    with guard.armed():
        with guard.calm():
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)
        with pytest.raises(Interrupted, match="SIGINT"):
            guard.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
