from __future__ import annotations

from pathlib import Path

import pytest

from replicator.config import load_settings, render_template
from replicator.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("REPLICATOR_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)


def test_template_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "replicator.toml"
    path.write_text(render_template(source_password="s3cret", source_port=6543))
    s = load_settings(path)
    assert s.source.port == 6543
    assert s.source.password.get_secret_value() == "s3cret"
    assert s.topic("fwd", "changes") == "mcp.fwd.changes"
    assert s.slot("rev") == "mcp_rev"


def test_environment_overrides_nested_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "replicator.toml"
    path.write_text(render_template())
    monkeypatch.setenv("REPLICATOR_SOURCE__PASSWORD", "from-env")
    monkeypatch.setenv("REPLICATOR_KAFKA__PARTITIONS", "4")
    s = load_settings(path)
    assert s.source.password.get_secret_value() == "from-env"
    assert s.kafka.partitions == 4


def test_unknown_keys_are_errors_naming_every_one(tmp_path: Path) -> None:
    path = tmp_path / "replicator.toml"
    path.write_text(render_template() + "\n[source2]\nx = 1\n")
    path.write_text(path.read_text().replace("[kafka]", "[kafka]\nbootstrap = 'typo'"))
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "source2" in str(err.value)
    assert "kafka.bootstrap" in str(err.value)


def test_secrets_never_printed(tmp_path: Path) -> None:
    path = tmp_path / "replicator.toml"
    path.write_text(render_template(source_password="hunter2", target_password="hunter3"))
    s = load_settings(path)
    for text in (repr(s), str(s), s.model_dump_json(), s.source.masked(), s.target.masked()):
        assert "hunter2" not in text and "hunter3" not in text
    assert "hunter2" in s.source.conninfo()  # only libpq sees it


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="replicator init"):
        load_settings(tmp_path / "nope.toml")
