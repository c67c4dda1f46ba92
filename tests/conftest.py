from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from tests.support import Env, Services, isolated_env, start_services

# Tests assert behaviour, never speed (benchmarks do that): no per-example deadline, which a
# busy two-core machine (a fault matrix beside the unit tests) trips at random.
hypothesis_settings.register_profile("replicator", deadline=None)
hypothesis_settings.load_profile("replicator")

# A non-interactive shell starts a background job with SIGINT ignored, and Python keeps that (so
# does every CLI it starts): run-tests.sh runs the fault matrix so, and CI may run the whole
# script so. The tests (and the switch's signal handling they exercise) expect Python's usual
# handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path)
        if "/integration/" in path:
            item.add_marker(pytest.mark.integration)
        elif "/e2e/" in path:
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Tables a test module leaves for the end of the run (the switch's fault matrix)."""
    for name, module in list(sys.modules.items()):
        if name.startswith("tests.") and getattr(module, "SUMMARY", None):
            for line in module.SUMMARY:
                terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    svc = start_services()
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture
def env(services: Services) -> Iterator[Env]:
    with isolated_env(services) as e:
        yield e
