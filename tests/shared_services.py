"""Start the local services before two pytest sessions share them, stop them after.

``run-tests.sh`` runs the switch's fault matrix beside the rest of the suite: two sessions that
must neither start a second set of services nor stop the set the other is using. So the script
starts them first (``start`` prints what it started) and stops only that afterwards (``stop``
with the same names). A service already running before the script stays running.
"""

from __future__ import annotations

import sys

from replicator.local import services as ls


def start() -> list[str]:
    status = ls.status()
    started = []
    for name in ("legacy", "target"):
        if not status["postgres"].get(name, {}).get("running", False):
            started.append(name)
        ls.start_postgres(name)
    if not (status["kafka"] and status["kafka"]["running"]):
        started.append("kafka")
    ls.start_kafka()
    return started


def stop(names: list[str]) -> None:
    for name in names:
        if name == "kafka":
            ls.stop_kafka()
        else:
            ls.stop_postgres(name)


if __name__ == "__main__":
    if sys.argv[1:2] == ["start"]:
        print(" ".join(start()))
    elif sys.argv[1:2] == ["stop"]:
        stop(sys.argv[2:])
    else:
        sys.exit("usage: python -m tests.shared_services start | stop [names…]")
