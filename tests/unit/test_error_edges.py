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
