"""Issue 18's security proofs, run as an operator would: Kafka over SASL_SSL (SCRAM) with the
host name checked, both databases over verify-full, every secret from a file — and each wrong
setting (password, CA, a plaintext client at the TLS listener) named by `replicator check` with
its fix and exit code 2. No secret appears in anything these commands print."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from replicator.config import DatabaseSettings
from tests.e2e.cli import Background, run_cli
from tests.e2e.test_faults import SCHEMA
from tests.support import Env, Services, mcp_writer, wait_for

MCP = "transforms.mcp_manager:MAPPING"


@dataclass
class Tls:
    kafka: dict[str, Any]  # [kafka] settings of the SASL_SSL cluster
    mtls_bootstrap: str
    ca: Path
    client_cert: Path
    client_key: Path
    wrong_ca: Path
    secrets: list[str]  # what must never be printed


@pytest.fixture(scope="module")
def tls(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    if services.kind != "local":
        pytest.skip("starts a local SASL_SSL broker and turns TLS on in the local clusters")
    from replicator.local import cluster as local_cluster
    from replicator.local import services as local_services
    from replicator.local import tls as local_tls

    for name in ("legacy", "target"):
        local_tls.enable_postgres_tls(local_services.start_postgres(name))
    running = local_cluster._load("tls")
    cluster = local_cluster.start_cluster("tls", sasl_ssl=True)
    pki = local_tls.local_pki()
    wrong, _ = local_tls.make_ca(tmp_path_factory.mktemp("wrong-ca"), "an unrelated CA")
    try:
        yield Tls(
            kafka=cluster.settings(),
            mtls_bootstrap=cluster.mtls_bootstrap,
            ca=pki.ca,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
            wrong_ca=wrong,
            secrets=[cluster.password, services.legacy.password, services.target.password],
        )
    finally:
        if running is None or not all(n.running for n in running.nodes):
            local_cluster.stop_cluster("tls")


def _secure_vars(env: Env, tls: Tls, tmp_path: Path) -> dict[str, str]:
    """Every secret from a file; verify-full to both databases (one by name, one by IP)."""
    files = {}
    for key, value in (
        ("source", env.legacy.password.get_secret_value()),
        ("target", env.target.password.get_secret_value()),
        ("kafka", tls.kafka["sasl_password"]),
    ):
        files[key] = tmp_path / f"{key}.secret"
        files[key].write_text(value + "\n")
        files[key].chmod(0o600)
    out = {
        k: v
        for k, v in env.env_vars().items()
        if not k.endswith(("__PASSWORD", "__SSLMODE", "BOOTSTRAP_SERVERS"))
    }
    out.update(
        {
            "REPLICATOR_MAPPING": "identity:public.parent,public.child,public.audit",
            "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "1",
            "REPLICATOR_APPLY__BATCH_MAX_WAIT_MS": "20",
            "REPLICATOR_SOURCE__HOST": "localhost",  # the certificate's DNS name
            "REPLICATOR_TARGET__HOST": "127.0.0.1",  # its IP address entry
            "REPLICATOR_SOURCE__PASSWORD_FILE": str(files["source"]),
            "REPLICATOR_TARGET__PASSWORD_FILE": str(files["target"]),
            "REPLICATOR_KAFKA__BOOTSTRAP_SERVERS": tls.kafka["bootstrap_servers"],
            "REPLICATOR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "REPLICATOR_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "REPLICATOR_KAFKA__SASL_USERNAME": tls.kafka["sasl_username"],
            "REPLICATOR_KAFKA__SASL_PASSWORD_FILE": str(files["kafka"]),
            "REPLICATOR_KAFKA__SSL_CAFILE": str(tls.ca),
        }
    )
    for side in ("SOURCE", "TARGET"):
        out[f"REPLICATOR_{side}__SSLMODE"] = "verify-full"
        out[f"REPLICATOR_{side}__SSLROOTCERT"] = str(tls.ca)
    return out


class Outputs:
    """Everything the commands of a test printed, checked for secrets at the end."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = [s for s in secrets if s]
        self.texts: list[str] = []

    def cli(self, args: list[str], vars_: dict[str, str], code: int | None = 0) -> str:
        r = run_cli(args, vars_)
        text = r.stdout + r.stderr
        self.texts.append(text)
        assert code is None or r.returncode == code, f"{args}: exit {r.returncode}\n{text}"
        assert "--debug" in args or "Traceback" not in text, text
        return " ".join(text.split())

    def assert_clean(self) -> None:
        for text in self.texts:
            for secret in self.secrets:
                assert secret not in text, "a secret was printed"


def _schema(env: Env) -> None:
    for conn in (env.legacy_conn(), env.target_conn()):
        with conn:
            conn.execute(SCHEMA)


def _ssl_sessions(env: Env) -> int:
    """The replicator's connections to the target that use TLS (pg_stat_ssl)."""
    with env.target_conn() as c:
        row = c.execute(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
            " WHERE s.ssl AND a.application_name = 'replicator' AND a.datname = %s",
            (env.target_db,),
        ).fetchone()
    return int(row[0]) if row else 0


def _tls_db(env: Env, tls: Tls, side: str, **change: str) -> DatabaseSettings:
    base = (env.legacy if side == "legacy" else env.target).model_dump()
    base.update(
        {"sslmode": "verify-full", "sslrootcert": str(tls.ca), "host": "localhost", **change}
    )
    return DatabaseSettings(**base)


def test_live_sync_over_sasl_ssl_and_verify_full_with_secrets_from_files(
    env: Env, tls: Tls, tmp_path: Path
) -> None:
    from transforms.mcp_manager.generate import generate
    from transforms.mcp_manager.target_schema import apply_target_schema

    generate(env.url("legacy"), scale=1, seed=3)
    # drizzle-kit (Node, DATABASE_URL) builds the target over verify-full too.
    apply_target_schema(_tls_db(env, tls, "target").url())
    vars_ = {**_secure_vars(env, tls, tmp_path), "REPLICATOR_MAPPING": MCP}
    out = Outputs(tls.secrets)
    text = out.cli(["check"], vars_)
    assert "SASL_SSL" in text
    stop, counts = threading.Event(), {"txns": 0}
    writer = threading.Thread(target=mcp_writer, args=(env, stop, counts), daemon=True)
    with Background(["run"], vars_, tmp_path / "run.log") as run:
        try:
            wait_for(lambda: _ssl_sessions(env) > 0 or run.proc.poll() is not None, 90)
            assert run.proc.poll() is None, run.output()
            writer.start()
            wait_for(lambda: counts["txns"] > 40, 60, what="writes")
        finally:
            stop.set()
            writer.join(30)
        # Every other command that talks to Kafka, over the same settings: validate proves the
        # target equals the transformed legacy data while live sync runs.
        wait_for(lambda: _caught_up(out, vars_), 60, what="lag under a second")
        out.cli(["validate"], vars_)
        out.cli(["validate", "--fast"], vars_)
        out.cli(["dlq", "list"], vars_)
    out.texts.append(run.output())
    assert "Traceback" not in run.output(), run.output()
    out.cli(["teardown", "--drop-topics", "--yes"], vars_)
    out.assert_clean()


def _caught_up(out: Outputs, vars_: dict[str, str]) -> bool:
    st = json.loads(out.cli(["status", "--json"], vars_, code=None))
    assert st["unreachable"] == [], st
    lag = st["target"]["end_to_end_lag_s"]
    return lag is not None and lag < 1.0 and st["kafka"]["messages_behind"] == 0


def test_node_tools_refuse_a_ca_they_were_not_given(env: Env, tls: Tls) -> None:
    from replicator.errors import ConnectionFailed, SchemaError, TLSFailed
    from transforms.mcp_manager.target_schema import apply_target_schema

    wrong = _tls_db(env, tls, "target", sslrootcert=str(tls.wrong_ca))
    assert "sslmode=verify-full" in wrong.url() and "sslrootcert=" in wrong.url()
    with pytest.raises((SchemaError, ConnectionFailed, TLSFailed)) as err:
        apply_target_schema(wrong.url())
    assert env.target.password.get_secret_value() not in str(err.value)


@pytest.mark.parametrize("case", ["wrong password", "wrong CA", "plaintext client"])
def test_check_names_each_kafka_security_mistake_with_exit_code_2(
    env: Env, tls: Tls, tmp_path: Path, case: str
) -> None:
    _schema(env)
    vars_ = _secure_vars(env, tls, tmp_path)
    secrets = list(tls.secrets)
    if case == "wrong password":
        wrong = "Not-The-Password-123"
        (tmp_path / "kafka.secret").write_text(wrong)
        secrets.append(wrong)
        expect = ["refused the SASL credentials", "sasl_password"]
    elif case == "wrong CA":
        vars_["REPLICATOR_KAFKA__SSL_CAFILE"] = str(tls.wrong_ca)
        expect = ["certificate is not trusted", "ssl_cafile"]
    else:
        for key in list(vars_):
            if key.startswith(("REPLICATOR_KAFKA__SASL", "REPLICATOR_KAFKA__SSL")):
                del vars_[key]
        vars_["REPLICATOR_KAFKA__SECURITY_PROTOCOL"] = "PLAINTEXT"
        expect = ["is a TLS listener", "security_protocol = SASL_SSL"]
    out = Outputs(secrets)
    text = out.cli(["check"], vars_, code=2)
    for words in expect:
        assert words in text, text
    assert "source" in text and "ok" in text  # the databases' findings still come
    if case == "wrong password":
        # A long-running command stops with the same words instead of retrying forever; its
        # --debug trace (down to kafka-python's error) holds no secret either.
        text = out.cli(["--debug", "capture"], vars_, code=2)
        assert expect[0] in text and "Traceback" in text, text
    out.assert_clean()


def test_check_names_postgres_tls_mistakes_and_takes_mutual_tls_and_every_mechanism(
    env: Env, tls: Tls, tmp_path: Path
) -> None:
    _schema(env)
    vars_ = _secure_vars(env, tls, tmp_path)
    out = Outputs(tls.secrets)
    bad = {**vars_, "REPLICATOR_TARGET__SSLROOTCERT": str(tls.wrong_ca)}
    text = out.cli(["check"], bad, code=2)
    assert "certificate is not trusted" in text and "sslrootcert" in text
    both = {**vars_, "REPLICATOR_SOURCE__PASSWORD": "inline"}
    text = out.cli(["check"], both, code=2)
    assert "password and password_file are both set" in text
    # Mutual TLS: the MTLS listener wants a client certificate.
    mtls = {
        k: v
        for k, v in vars_.items()
        if not k.startswith(("REPLICATOR_KAFKA__SASL", "REPLICATOR_KAFKA__SECURITY"))
    }
    mtls["REPLICATOR_KAFKA__BOOTSTRAP_SERVERS"] = tls.mtls_bootstrap
    mtls["REPLICATOR_KAFKA__SECURITY_PROTOCOL"] = "SSL"
    text = out.cli(["check"], mtls, code=2)
    assert "requires a client certificate" in text
    mtls["REPLICATOR_KAFKA__SSL_CERTFILE"] = str(tls.client_cert)
    mtls["REPLICATOR_KAFKA__SSL_KEYFILE"] = str(tls.client_key)
    out.cli(["check"], mtls)
    # The other SASL mechanisms the broker enables.
    for mechanism in ("PLAIN", "SCRAM-SHA-256"):
        out.cli(["check"], {**vars_, "REPLICATOR_KAFKA__SASL_MECHANISM": mechanism})
    out.assert_clean()
