"""Running the CLI the way an operator does: a subprocess, environment variables, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REPLICATOR = [sys.executable, "-m", "replicator"]


def cli_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    env["REPLICATOR_CONFIG"] = os.devnull
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*REPLICATOR, *args],
        env=cli_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Background:
    """A long-running CLI command (run, capture, apply), stopped with SIGTERM or killed."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - owned by the child until stop()
        self.proc = subprocess.Popen(
            [*REPLICATOR, *args],
            env=cli_env(env),
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        time.sleep(0)
