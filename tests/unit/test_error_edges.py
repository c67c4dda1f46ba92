"""Foreign exceptions at the edges: psycopg's and kafka-python's real classes, translated once
into the replicator's tree with the right retriability and exit code, the cause kept."""

from __future__ import annotations

import psycopg
import pytest
from kafka import errors as kerr
from psycopg import errors as pgerr

from connectors import kafka_io, pg
from replicator import cli
from replicator.errors import (
    InternalError,
    KafkaRefused,
    KafkaUnavailable,
    PermissionDenied,
    PreconditionError,
    ReplicatorError,
    TargetRejected,
    TransientDatabaseError,
)

WHERE = "postgresql://u:***@h:5432/db"


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        pgerr.SyntaxError('syntax error at or near "SELEC"'),
        pgerr.UndefinedColumn('column "nope" does not exist'),
        pgerr.UndefinedFunction("function replicator.nope() does not exist"),
        pgerr.InFailedSqlTransaction("current transaction is aborted"),
        psycopg.ProgrammingError("the query has 2 placeholders but 1 parameters were passed"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_statement_of_ours_the_server_refuses_is_a_bug(exc: psycopg.Error) -> None:
    err = pg.translate(exc, where=WHERE)
    assert isinstance(err, InternalError)
    assert not err.retriable and err.exit_code == 70
    assert err.message.startswith(WHERE) and "\n" not in err.message
    assert "--debug" in (err.hint or "")


@pytest.mark.parametrize(
    ("exc", "cls", "code"),
    [
        (pgerr.SerializationFailure("could not serialize"), TransientDatabaseError, 75),
        (pgerr.UniqueViolation("duplicate key"), TargetRejected, 2),
        (pgerr.InsufficientPrivilege("permission denied for table t"), PermissionDenied, 2),
        (
            pgerr.UndefinedObject('replication slot "p_fwd" does not exist'),
            PreconditionError,
            2,
        ),
    ],
    ids=lambda x: x.__name__ if isinstance(x, type) else str(x)[:20],
)
def test_operator_and_transient_errors_keep_their_classes(
    exc: psycopg.Error, cls: type[ReplicatorError], code: int
) -> None:
    err = pg.translate(exc, where=WHERE)
    assert type(err) is cls and err.exit_code == code


def test_the_psycopg_cause_stays_attached_for_debug() -> None:
    with pytest.raises(InternalError) as info, pg.translated(WHERE):
        raise pgerr.UndefinedColumn('column "nope" does not exist')
    assert isinstance(info.value.__cause__, pgerr.UndefinedColumn)


# -- Kafka -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        kerr.KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:1"),
        kerr.NotLeaderForPartitionError(),
        kerr.RequestTimedOutError(),
        kerr.RebalanceInProgressError(),  # not retriable to kafka-python; a new session cures it
    ],
    ids=lambda e: type(e).__name__,
)
def test_retriable_kafka_errors_are_retried(exc: kerr.KafkaError) -> None:
    err = kafka_io.translate(exc, what="send failed")
    assert isinstance(err, KafkaUnavailable) and err.retriable and err.exit_code == 75


@pytest.mark.parametrize(
    ("exc", "acl"),
    [
        (kerr.TopicAuthorizationFailedError(), "--topic"),
        (kerr.GroupAuthorizationFailedError(), "--group"),
        (kerr.ClusterAuthorizationFailedError(), "--cluster"),
    ],
    ids=lambda x: type(x).__name__ if isinstance(x, Exception) else x,
)
def test_an_authorization_failure_names_the_acl_and_is_not_retried(
    exc: kerr.KafkaError, acl: str
) -> None:
    err = kafka_io.translate(exc, what="send failed")
    assert isinstance(err, PermissionDenied) and not err.retriable and err.exit_code == 2
    assert "kafka-acls" in (err.hint or "") and acl in (err.hint or "")


def test_a_message_too_large_names_the_setting_and_is_not_retried() -> None:
    exc = kerr.MessageSizeTooLargeError("The message is 20000000 bytes when serialized")
    err = kafka_io.translate(exc, what="send failed")
    assert isinstance(err, KafkaRefused) and not err.retriable and err.exit_code == 2
    assert "max.message.bytes" in (err.hint or "")


def test_other_non_retriable_kafka_errors_are_not_retried() -> None:
    err = kafka_io.translate(kerr.InvalidReplicationFactorError(), what="topic creation failed")
    assert isinstance(err, KafkaRefused) and not err.retriable


def test_the_kafka_cause_stays_attached_for_debug() -> None:
    with pytest.raises(PermissionDenied) as info, kafka_io.translated("send failed"):
        raise kerr.TopicAuthorizationFailedError()
    assert isinstance(info.value.__cause__, kerr.TopicAuthorizationFailedError)


def test_a_refused_send_future_is_translated_too() -> None:
    class Failed:
        is_done = True
        exception = kerr.MessageSizeTooLargeError("too large")

        def failed(self) -> bool:
            return True

    with pytest.raises(KafkaRefused):
        kafka_io.Sent(Failed()).check()


# -- the CLI's answer ------------------------------------------------------------------------


def _main(monkeypatch: pytest.MonkeyPatch, exc: BaseException, *, debug: bool) -> int:
    def app() -> None:
        try:
            raise exc
        except psycopg.Error as e:
            raise pg.translate(e, where=WHERE) from e

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(cli._State, "debug", debug)
    with pytest.raises(SystemExit) as info:
        cli.main()
    return int(info.value.code or 0)


def test_the_cli_exits_70_for_a_bug_in_our_sql_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _main(monkeypatch, pgerr.SyntaxError('syntax error at or near "SELEC"'), debug=False)
    err = capsys.readouterr().err
    assert code == 70
    assert "Traceback" not in err and 'syntax error at or near "SELEC"' in err
    assert err.splitlines()[0].startswith("error:")


def test_debug_shows_the_psycopg_cause(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _main(monkeypatch, pgerr.UndefinedColumn('column "nope" does not exist'), debug=True)
    err = capsys.readouterr().err
    assert code == 70
    assert "Traceback" in err and "UndefinedColumn" in err and "direct cause" in err


# -- the apply consumer's positions (issue #28, finding 5) -------------------------------------


class _FakeKafkaConsumer:
    def __init__(self, raises: BaseException, begins: int = 0) -> None:
        self.raises, self.begins = raises, begins

    def poll(self, timeout_ms: int) -> dict[object, list[object]]:
        raise self.raises

    def beginning_offsets(self, tps: list[object]) -> dict[object, int]:
        return dict.fromkeys(tps, self.begins)


def _consumer(fake: _FakeKafkaConsumer, assign_error: ReplicatorError | None = None) -> object:
    c = kafka_io.Consumer.__new__(kafka_io.Consumer)
    c.topic, c._consumer, c._assign_error = "p.fwd.changes", fake, assign_error
    c._gap_hint = "re-sync"
    return c


def test_a_position_retention_deleted_stops_apply_naming_it() -> None:
    from kafka import TopicPartition

    from replicator.errors import StateError

    tp = TopicPartition("p.fwd.changes", 2)
    c = _consumer(_FakeKafkaConsumer(kerr.OffsetOutOfRangeError({tp: 5}), begins=9))
    with pytest.raises(StateError) as err:
        c.poll(100)  # type: ignore[attr-defined]
    assert not err.value.retriable and err.value.hint == "re-sync"
    assert "p.fwd.changes partition 2" in err.value.message
    assert "offset 5" in err.value.message and "begins at offset 9" in err.value.message
    past = _consumer(_FakeKafkaConsumer(kerr.OffsetOutOfRangeError({tp: 50}), begins=9))
    with pytest.raises(StateError, match="past the log's end"):
        past.poll(100)  # type: ignore[attr-defined]


def test_an_assignment_that_failed_before_its_seeks_raises_its_own_error() -> None:
    """Without a reset policy kafka-python refuses a partition left without a position; the
    cause (a target gone while seeking: retried) must not turn into a refusal (not retried)."""
    gone = TransientDatabaseError("target went away")
    c = _consumer(_FakeKafkaConsumer(kerr.NoOffsetForPartitionError("no offset")), gone)
    with pytest.raises(TransientDatabaseError):
        c.poll(100)  # type: ignore[attr-defined]
