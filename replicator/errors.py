"""The replicator's one exception tree.

Every error the product raises is a :class:`ReplicatorError`. Each class says whether trying
again can help (``retriable``): the runtime retries retriable errors with backoff and never
retries the others, which are reported to the operator with ``hint`` (what to do) or, for bad
data, dead-lettered. Foreign exceptions (psycopg, kafka-python) are translated into this tree
at the connector edge, once; nothing above the connectors sees them.

Exit codes (``exit_code``): 2 for a problem a retry will not fix (configuration, credentials,
privileges, schema), 75 for a temporary one, 70 for a bug in the replicator itself.

This module imports nothing but the standard library so that every layer may use it.
"""

from __future__ import annotations


class ReplicatorError(Exception):
    """Base of every error the replicator raises."""

    retriable: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"

    @property
    def exit_code(self) -> int:
        """The CLI's exit code: 75 (EX_TEMPFAIL) when a retry may help, else 2 (the operator
        must act)."""
        return 75 if self.retriable else 2


class InternalError(ReplicatorError):
    """A bug in the replicator, e.g. the server refused one of our own statements (syntax,
    unknown column or function). Never retried; exit 70, and ``--debug`` shows the trace."""

    @property
    def exit_code(self) -> int:
        return 70


# -- configuration and operator errors (never retried) ---------------------------------------


class ConfigError(ReplicatorError):
    """The configuration is invalid or incomplete."""


class PreconditionError(ReplicatorError):
    """The environment is not fit to run (wal_level, privilege, missing table...)."""


class SchemaError(PreconditionError):
    """The mapping does not fit the live schema (missing column, narrowed type, no key)."""


# -- connection-level errors -----------------------------------------------------------------


class ConnectionFailed(ReplicatorError):
    """A service could not be reached; it may come back."""

    retriable = True


class AuthenticationFailed(ReplicatorError):
    """The server refused the credentials. Retrying will not help."""


class TLSFailed(ReplicatorError):
    """A TLS handshake failed for a reason the configuration must fix: a certificate not signed
    by the configured CA, a host name it does not name, a plaintext client at a TLS listener
    (or the reverse). Retrying will not help."""


class PermissionDenied(PreconditionError):
    """The role lacks a privilege the replicator needs."""


class SlotInUse(ReplicatorError):
    """Another process streams from the replication slot; wait for it to stop."""

    retriable = True


class TransientDatabaseError(ReplicatorError):
    """Serialization failure, deadlock, admin shutdown: the transaction may be retried."""

    retriable = True


class KafkaUnavailable(ConnectionFailed):
    """The Kafka cluster does not answer or does not acknowledge."""


class KafkaRefused(ReplicatorError):
    """Kafka answered with an error that a retry will not cure (kafka-python says it is not
    retriable): a message too large, a topic configuration, an unsupported feature."""


# -- data errors (dead-lettered, never retried) ----------------------------------------------


class DataError(ReplicatorError):
    """A change cannot be applied as it is; it goes to the dead-letter queue with its reason."""

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        key: dict[str, object] | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.table = table
        self.key = key
        self.column = column


class MalformedMessage(DataError):
    """A message from the wire (WAL or Kafka) could not be decoded."""


class TransformError(DataError):
    """A transform rejected a row (validation failed, value out of the target's domain)."""


class TargetRejected(DataError):
    """The target database refused a row (constraint, type)."""


# -- pipeline state errors -------------------------------------------------------------------


class StateError(ReplicatorError):
    """The pipeline's stored state forbids the requested action (wrong direction, ...)."""


class CutoverAborted(ReplicatorError):
    """A cutover or rollback step failed; the pipeline was returned to its previous state."""

    def __init__(self, message: str, *, step: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.step = step
