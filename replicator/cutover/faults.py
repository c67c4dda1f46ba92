"""Faults injected into a switch at a named point, to prove the invariants hold under each.

Tests only: ``REPLICATOR_CUTOVER_FAULT=<point>=<kind>[,<point>=<kind>…]`` (or the ``fail_at``
argument, which means ``<point>=raise``). A point is a step's name (the fault strikes as the step
begins) or a point inside one (``fence:locking``, ``decide:new``, ``finish:source``…). Kinds:

- ``raise``: an exception, as any failed step raises;
- ``sigkill``: the command dies at once (what an OOM kill or a node loss does);
- ``sigterm``: the command is asked to stop (Kubernetes' ``activeDeadlineSeconds``, Ctrl-C);
- ``drop-old`` / ``drop-new``: the server ends the session the switch holds on that side
  (a network cut, a failover), and the step goes on until it meets the dead connection.

At ``fence:locking`` another session first takes a lock that conflicts with the fence's (on
the first table it fences), then the fault lands as soon as the fence is seen waiting for it
(pg_locks), not before it asks; the lock is let go a while after. Taking it here, rather than in the
test, is what makes the fault land in the wait every time: the fence asks within milliseconds.

Nothing here runs unless the variable (or ``fail_at``) names a point.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import psycopg.sql

from replicator.errors import CutoverAborted

ENV = "REPLICATOR_CUTOVER_FAULT"
KINDS = ("raise", "sigkill", "sigterm", "drop-old", "drop-new")
DURING_S = 0.02  # how long the fence's session is given to ask for its locks, at least
WAIT_S = 5.0  # how long a ``…:locking`` fault waits to see the fence wait for its lock
WAITED = "landed while the fence waited for its lock"
LANDED: list[str] = []  # where each ``…:locking`` fault of this process landed
log = logging.getLogger(__name__)
HOLD_S = 2.0  # how long after the fault the conflicting lock is let go


def parse(text: str | None) -> dict[str, str]:
    """``point=kind,…`` → {point: kind}; a bare point means ``raise``."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        point, _, kind = part.partition("=")
        kind = kind or "raise"
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (one of {', '.join(KINDS)})")
        out[point] = kind
    return out


class Faults:
    """The faults of one switch; each strikes once."""

    def __init__(self, fail_at: str | None) -> None:
        self._pending = parse(os.environ.get(ENV))
        if fail_at:
            self._pending[fail_at] = "raise"

    def __bool__(self) -> bool:
        return bool(self._pending)

    def strike(
        self,
        point: str,
        conn_of: Callable[[str], Any] | None = None,
        tables: Sequence[str] = (),
    ) -> None:
        """The fault for ``point``, if one is pending. ``conn_of(side)`` gives the switch's held
        session on a side; ``tables`` are what a ``…:locking`` point's statement will lock."""
        kind = self._pending.pop(point, None)
        if kind is None:
            return
        side = kind.removeprefix("drop-") if kind.startswith("drop-") else None
        conn = conn_of(side) if conn_of is not None and side is not None else None
        if point.endswith(":locking") and kind != "raise":
            # Into the lock wait that follows: the fault lands while the statement waits.
            held = conn_of("old") if conn_of is not None else None
            holder = _conflicting_lock(held, tables[0]) if held is not None and tables else None
            threading.Timer(
                DURING_S, self._deliver_then_let_go, (point, kind, conn, holder)
            ).start()
            return
        self._deliver(point, kind, conn)

    def _deliver_then_let_go(
        self, point: str, kind: str, conn: Any, holder: psycopg.Connection[Any] | None
    ) -> None:
        try:
            # Said (and kept in LANDED) so that the matrix can assert where the fault landed.
            where = WAITED if holder is not None and _fence_waits(holder) else "no lock wait seen"
            LANDED.append(where)
            log.warning("induced %s at %s: %s", kind, point, where)
            self._deliver(point, kind, conn)
        finally:
            if holder is not None:
                threading.Timer(HOLD_S, _let_go, (holder,)).start()

    def _deliver(self, point: str, kind: str, conn: Any) -> None:
        if kind == "raise":
            raise CutoverAborted(f"induced failure at {point}", step=point.split(":")[0])
        if kind == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            return  # the handler raises on the main thread, at the next bytecode
        if conn is not None:
            _terminate(conn)


def _conflicting_lock(held: psycopg.Connection[Any], table: str) -> psycopg.Connection[Any]:
    """A session of its own, on the server of ``held``, holding ``table`` in ROW EXCLUSIVE
    mode (what any writer holds) until :func:`_let_go`: the fence's EXCLUSIVE lock waits."""
    params = held.info.get_parameters()
    params["password"] = held.info.password or ""
    params["application_name"] = "replicator-fault-lock"
    holder = psycopg.connect(**params)  # type: ignore[arg-type]
    ident = psycopg.sql.Identifier(*table.split(".", 1))
    holder.execute(psycopg.sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(ident))
    return holder


def _fence_waits(holder: psycopg.Connection[Any]) -> bool:
    """Whether a session waits for a lock ``holder`` holds, within :data:`WAIT_S` (pg_locks
    is read afresh on every call; pg_stat_activity would be the transaction's snapshot)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        row = holder.execute(
            "SELECT count(*) FROM pg_locks w JOIN pg_locks h ON h.relation = w.relation"
            " WHERE NOT w.granted AND h.granted AND h.pid = pg_backend_pid()"
        ).fetchone()
        if row is not None and row[0]:
            return True
        time.sleep(0.005)
    return False


def _let_go(holder: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):
        holder.rollback()
    with contextlib.suppress(psycopg.Error):
        holder.close()


def _terminate(conn: psycopg.Connection[Any]) -> None:
    """End ``conn``'s session from the server's side, as a network cut would (a session
    already gone — the step met an error first — has nothing left to cut)."""
    try:
        pid = conn.info.backend_pid
    except psycopg.OperationalError:
        return
    params = conn.info.get_parameters()
    params["password"] = conn.info.password or ""
    with psycopg.connect(**params, autocommit=True) as other:  # type: ignore[arg-type]
        other.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
