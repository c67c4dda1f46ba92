from __future__ import annotations

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
