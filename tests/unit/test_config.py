from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from replicator.config import Settings, load_settings, render_template
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
    assert s.topic("fwd", "changes") == "replicator.fwd.changes"  # the model's default name
    assert s.slot("rev") == "replicator_rev"


def _model_keys(model: type[BaseModel]) -> dict[str, Any]:
    """Top-level keys -> None, sections -> their set of keys, as the settings model has them."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out[name] = set(sub.model_fields)
        else:
            out[name] = None
    return out


def test_the_template_has_every_key_of_the_model_and_no_other() -> None:
    parsed = tomllib.loads(render_template())
    shown = {k: set(v) if isinstance(v, dict) else None for k, v in parsed.items()}
    assert shown == _model_keys(Settings)


def test_every_key_of_the_template_is_explained() -> None:
    text = render_template()
    for name, field in Settings.model_fields.items():
        assert field.description, name
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            for key, f in sub.model_fields.items():
                assert f.description, f"{name}.{key} has no description"
                assert f"# {f.description[:40]}" in text


def test_the_template_loads_back_into_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "replicator.toml"
    path.write_text(render_template())
    loaded = load_settings(path)
    monkeypatch.setenv("REPLICATOR_CONFIG", os.devnull)  # the model alone, no file
    assert loaded.model_dump() == Settings().model_dump()


def test_template_values_are_checked_and_quoted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bootstrap"):
        render_template(bootstrap="typo:9092")
    path = tmp_path / "replicator.toml"
    path.write_text(
        render_template(source_password='a"b\\c', cutover_app_roles=["app", "web"], name="x1")
    )
    s = load_settings(path)
    assert s.source.password.get_secret_value() == 'a"b\\c'
    assert (s.cutover.app_roles, s.name) == (["app", "web"], "x1")


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


def test_compression_is_one_the_producer_can_use() -> None:
    from pydantic import ValidationError

    from replicator.config import KafkaSettings

    assert KafkaSettings(compression="none").compression == "none"
    with pytest.raises(ValidationError, match="'lz4', 'gzip' or 'none'"):
        KafkaSettings(compression="zstd")  # type: ignore[arg-type]


def test_a_malformed_file_is_the_users_error_naming_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "replicator.toml"
    path.write_text('name = "demo"\n\n[source\nhost = "db"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.exit_code == 2
    assert f"{path}, line 3, column 8" in err.value.message
    assert "Expected ']'" in err.value.message
