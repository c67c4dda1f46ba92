"""The PostgreSQL edge: connections, and psycopg's exceptions translated into ours, once.

Everything above the connectors sees :mod:`replicator.errors` only. Connections take a libpq
conninfo string (what ``DatabaseSettings.conninfo()`` builds), never the settings model: this
edge knows nothing of the replicator's configuration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import errors as pgerr
from psycopg.conninfo import conninfo_to_dict

from replicator.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    InternalError,
    PermissionDenied,
    PreconditionError,
    ReplicatorError,
    SlotInUse,
    StateError,
    TargetRejected,
    TLSFailed,
    TransientDatabaseError,
)

# SQLSTATE classes whose failure a retry can cure.
_TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "53300",  # too_many_connections
}


def translate(exc: BaseException, *, where: str) -> ReplicatorError:
    """Map a psycopg exception to the replicator's tree. ``where`` names the server (masked)."""
    if isinstance(exc, ReplicatorError):
        return exc
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, psycopg.OperationalError) and sqlstate is None:
        low = str(exc).lower()
        if "password authentication failed" in low or "authentication failed" in low:
            return AuthenticationFailed(
                f"{where}: authentication failed",
                hint="check the user and password (REPLICATOR_<SIDE>__USER / __PASSWORD, "
                "or the file password_file names)",
            )
        if "no password supplied" in low:
            return AuthenticationFailed(
                f"{where}: the server asks for a password and none is configured",
                hint="set REPLICATOR_<SIDE>__PASSWORD or password in replicator.toml",
            )
        tls = _tls_problem(low)
        if tls is not None:
            return TLSFailed(f"{where}: {text}", hint=tls)
        if "does not exist" in low and "database" in low:
            return PreconditionError(f"{where}: {text}", hint="create the database or fix dbname")
        return ConnectionFailed(
            f"{where}: cannot connect ({text})",
            hint="check host and port, and that the server is running",
        )
    if isinstance(exc, pgerr.InvalidPassword | pgerr.InvalidAuthorizationSpecification):
        return AuthenticationFailed(f"{where}: authentication failed", hint="check the credentials")
    if isinstance(exc, pgerr.InsufficientPrivilege):
        return PermissionDenied(f"{where}: {text}")
    if isinstance(exc, pgerr.UndefinedObject) and "replication slot" in str(exc):
        return PreconditionError(
            f"{where}: {text}",
            hint="restart `replicator run` (or `replicator capture`): it creates the slot, and "
            "a new forward slot starts a new backfill",
        )
    if isinstance(exc, pgerr.ObjectInUse) and "replication slot" in str(exc):
        return SlotInUse(f"{where}: {text}", hint="another capture streams from this slot")
    if sqlstate in _TRANSIENT_SQLSTATES or isinstance(
        exc, psycopg.OperationalError | psycopg.InterfaceError
    ):
        return TransientDatabaseError(f"{where}: {text}")
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        return TargetRejected(f"{where}: {text}")
    if isinstance(exc, pgerr.ReadOnlySqlTransaction):
        if "is fenced" in text:  # our fence trigger: only replica sessions pass it
            return PermissionDenied(
                f"{where}: {text}",
                hint="the apply writes into a fenced database only with"
                " session_replication_role = replica: GRANT SET ON PARAMETER"
                " session_replication_role TO <the replicator's role> (PostgreSQL 15+), or make"
                " it superuser; `replicator status` shows the writer",
            )
        return StateError(
            f"{where}: {text}",
            hint="this database is read-only or fenced; `replicator status` shows the writer",
        )
    # What is left is a statement of ours the server refused (syntax, unknown column, table or
    # function: ProgrammingError), a misuse of the driver, or a state we did not expect: a bug,
    # not the operator's configuration (exit 70, never retried).
    code = f", SQLSTATE {sqlstate}" if sqlstate else ""
    return InternalError(
        f"{where}: {text} ({type(exc).__name__}{code})",
        hint="if `replicator check` finds nothing (a table or column changed under the "
        "replicator), this is a bug: rerun with --debug and report the trace",
    )


def _tls_problem(low: str) -> str | None:
    """What to fix for a libpq TLS failure (None: not a TLS failure)."""
    if "certificate verify failed" in low or "does not match host name" in low:
        return (
            "the server's certificate is not trusted: set sslrootcert to the CA that signed it, "
            "and connect with a host name (or IP) its certificate names (verify-full)"
        )
    if "server does not support ssl" in low:
        return "the server does not accept TLS: enable ssl on it, or lower sslmode"
    if "certificate file" in low or "private key file" in low or "sslkey" in low:
        return "check the sslrootcert, sslcert and sslkey paths and their permissions"
    if "ssl" in low and ("handshake" in low or "alert" in low or "certificate" in low):
        return "check sslmode, sslrootcert, sslcert and sslkey against the server's TLS setup"
    return None


def describe(conninfo: str) -> str:
    """A conninfo as ``postgresql://user:***@host:port/dbname``: printable, no password."""
    try:
        d = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable conninfo)"
    return (
        f"postgresql://{d.get('user', '')}:***@{d.get('host', '')}:{d.get('port', 5432)}"
        f"/{d.get('dbname', '')}"
    )


def connect(conninfo: str, **kwargs: Any) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(conninfo, **kwargs)
    except psycopg.Error as exc:
        raise translate(exc, where=describe(conninfo)) from exc


@contextlib.contextmanager
def translated(where: str) -> Iterator[None]:
    """Run a block, translating psycopg errors raised inside it."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, where=where) from exc


class Sessions:
    """Autocommit sessions kept open and reused, one per connection string. A caller reading
    the databases every second (the web page's sampler) opened a session for every part of a
    status, seven a sample, each a SCRAM handshake and a backend start on the production
    servers; now it opens one per server and keeps it. A session that broke (a restarted
    server) is dropped, and the next use opens a new one. Not thread-safe: one caller."""

    def __init__(self) -> None:
        self._open: dict[str, psycopg.Connection[Any]] = {}

    @contextlib.contextmanager
    def session(self, conninfo: str, where: str) -> Iterator[psycopg.Connection[Any]]:
        conn = self._open.get(conninfo)
        if conn is None or conn.closed or conn.broken:
            conn = self._open[conninfo] = connect(conninfo, autocommit=True)
        try:
            with translated(where):
                yield conn
        finally:
            if conn.closed or conn.broken:
                self._open.pop(conninfo, None)
                conn.close()

    def close(self) -> None:
        for conn in self._open.values():
            conn.close()
        self._open.clear()
