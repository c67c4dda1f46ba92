"""The operator's switch hook: run with only what it needs, its output never carrying a secret.

Its exit status is a promise: non-zero means "I changed nothing" (the switch is then taken
back); a hook that may have switched must exit 0 or be killed trying, which leaves the old
writer fenced for a rerun. A hook killed by a signal, or timed out, may have switched.

The hook points the application at the new writer (a deployment flip, a DNS change). It gets a
small environment — ``PATH``, locale, home, the Kubernetes service address a ``kubectl`` needs,
the names listed in ``cutover.hook_env``, and ``REPLICATOR_ACTION``, ``REPLICATOR_RUN_ID``,
``REPLICATOR_NEW_WRITER`` (host, port and database, no password) — never the replicator's own
environment, where ``REPLICATOR_*__PASSWORD`` lives. What it prints goes into errors, the journal
and ``status``: every secret of the settings is masked there first. A hook that outlives
``cutover.hook_timeout_s`` is killed with its whole process group.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, SecretStr

from replicator.config import DatabaseSettings, Settings
from replicator.errors import CutoverAborted

# What any program expects to find; nothing of the replicator's own.
BASE_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
)


class HookRefused(CutoverAborted):
    """The hook says it did not switch the application (it exited non-zero, or never ran)."""


def hook_env(s: Settings, *, action: str, run_id: str, new: DatabaseSettings) -> dict[str, str]:
    names = [*BASE_ENV, *s.cutover.hook_env]
    env = {k: os.environ[k] for k in names if k in os.environ}
    env.update(
        REPLICATOR_ACTION=action,
        REPLICATOR_RUN_ID=run_id,
        REPLICATOR_NEW_WRITER=f"postgresql://{new.host}:{new.port}/{new.dbname}",
    )
    return env


def secrets_of(model: BaseModel) -> Iterator[str]:
    """Every non-empty secret value in the settings, at any depth."""
    for name in type(model).model_fields:
        value: Any = getattr(model, name)
        if isinstance(value, SecretStr):
            if value.get_secret_value():
                yield value.get_secret_value()
        elif isinstance(value, BaseModel):
            yield from secrets_of(value)


def masked(text: str, s: Settings) -> str:
    for secret in sorted(set(secrets_of(s)), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def run_hook(command: str, s: Settings, *, action: str, run_id: str, new: DatabaseSettings) -> None:
    """Run the hook; :class:`HookRefused` when it says it did not switch, :class:`CutoverAborted`
    when it may have (it timed out or was killed)."""
    timeout = s.cutover.hook_timeout_s
    try:
        proc = subprocess.Popen(
            shlex.split(command),
            env=hook_env(s, action=action, run_id=run_id, new=new),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own group: a timeout kills what it started too
        )
    except (OSError, ValueError) as exc:  # it never started: nothing was switched
        raise HookRefused(
            f"switch hook could not run: {masked(str(exc), s)}", step="switch"
        ) from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException as exc:  # a timeout, or the switch interrupted: it may have switched
        _kill_group(proc)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise CutoverAborted(
                f"switch hook did not finish within {timeout:g}s and was killed",
                step="switch",
            ) from None
        raise
    if proc.returncode < 0:  # killed (OOM, a signal): it may have switched before it died
        raise CutoverAborted(
            f"switch hook was killed by signal {-proc.returncode}: it may have switched",
            step="switch",
        )
    if proc.returncode != 0:
        said = masked((stderr or stdout).strip(), s)[-400:]
        raise HookRefused(
            f"switch hook exited with {proc.returncode}: {said}",
            step="switch",
            hint="the application was not switched; fix the hook and run again",
        )


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
