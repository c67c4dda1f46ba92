"""TLS, SASL and secrets-from-files settings: what reaches the clients, and what never prints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from replicator.config import load_settings
from replicator.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in list(os.environ):
        if k.startswith("REPLICATOR_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "replicator.toml"
    path.write_text('name = "mcp"\n' + text.strip() + "\n")
    return path


def test_secrets_come_from_files_and_never_print(tmp_path: Path) -> None:
    (tmp_path / "pg").write_text("pg-Secret-1\n")
    (tmp_path / "kafka").write_text("kafka-Secret-2\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    path = _config(
        tmp_path,
        f"""
[source]
password_file = "{tmp_path / "pg"}"
sslmode = "verify-full"
sslrootcert = "{tmp_path / "ca.pem"}"
[kafka]
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-256"
sasl_username = "replicator"
sasl_password_file = "{tmp_path / "kafka"}"
ssl_cafile = "{tmp_path / "ca.pem"}"
""",
    )
    s = load_settings(path)
    assert s.source.password.get_secret_value() == "pg-Secret-1"  # the newline is not kept
    info = s.source.conninfo()
    assert "sslmode=verify-full" in info and f"sslrootcert={tmp_path / 'ca.pem'}" in info
    assert "sslmode=verify-full" in s.source.url() and "sslrootcert=" in s.source.url()
    opts = s.kafka.client_options()
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-256" and opts["sasl_plain_username"] == "replicator"
    assert opts["sasl_plain_password"] == "kafka-Secret-2"
    assert opts["ssl_cafile"] == str(tmp_path / "ca.pem") and opts["ssl_check_hostname"] is True
    for text in (repr(s), str(s), s.model_dump_json(), s.source.masked(), repr(opts), str(opts)):
        assert "pg-Secret-1" not in text and "kafka-Secret-2" not in text


def test_a_secret_inline_and_from_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "pg").write_text("from-file")
    path = _config(tmp_path, f'[target]\npassword = "inline"\npassword_file = "{tmp_path / "pg"}"')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "password and password_file are both set" in str(err.value)
    assert "from-file" not in str(err.value) and "inline" not in str(err.value)


def test_unreadable_secret_and_certificate_files_are_named(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        f"""
[kafka]
security_protocol = "SSL"
ssl_cafile = "{tmp_path / "missing-ca.pem"}"
ssl_key_password_file = "{tmp_path / "missing-key-password"}"
""",
    )
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "missing-key-password cannot be read" in str(err.value)


def test_kafka_security_settings_must_agree(tmp_path: Path) -> None:
    path = _config(tmp_path, '[kafka]\nsecurity_protocol = "SASL_SSL"')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "needs sasl_username and sasl_password" in str(err.value)
    (tmp_path / "ca.pem").write_text("x")
    path = _config(tmp_path, f'[kafka]\nssl_cafile = "{tmp_path / "ca.pem"}"')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "security_protocol is PLAINTEXT" in str(err.value)
    path = _config(tmp_path, '[kafka]\nsecurity_protocol = "TLS"')
    with pytest.raises(ConfigError):
        load_settings(path)


def test_plaintext_kafka_gets_no_tls_or_sasl_options(tmp_path: Path) -> None:
    s = load_settings(_config(tmp_path, ""))
    assert s.kafka.client_options() == {"security_protocol": "PLAINTEXT"}
    # node-postgres has no opportunistic TLS: "prefer" stays out of the URL.
    assert "sslmode" not in s.source.url()
