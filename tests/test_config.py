"""privdl.config: privdl.toml and the default environment variable names."""

import pytest

from privdl import config
from privdl.errors import InputError


def test_default_names():
    assert (config.KEY_ENV, config.AUDIT_KEY_ENV, config.ACTOR_ENV, config.CONFIG_ENV) == (
        "PRIVDL_KEY",
        "PRIVDL_AUDIT_KEY",
        "PRIVDL_ACTOR",
        "PRIVDL_CONFIG",
    )


def test_load_resolves_audit_paths_against_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("PRIVDL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert config.load_config() == {} and config.default_audit_log() is None
    (tmp_path / "privdl.toml").write_text('[audit]\nlog = "logs/a.jsonl"\nactor = "team"\n', encoding="utf-8")
    assert config.default_audit_log() == tmp_path / "logs" / "a.jsonl"
    assert config.audit_defaults(config.load_config())["actor"] == "team"
    (tmp_path / "bad.toml").write_text("[audit\n", encoding="utf-8")
    with pytest.raises(InputError):
        config.load_config(tmp_path / "bad.toml")
    monkeypatch.setenv("PRIVDL_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(InputError):
        config.find_config()
