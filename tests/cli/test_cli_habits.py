"""The command line as typer / Unix users expect it (issue 15, item 3): bare groups
print help, ``-`` pipes tables, ``--json`` prints one document, one option vocabulary,
``--version``, shell completion, an example in every ``--help``, ``privdl keygen``."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from privdl.audit import AuditLog
from privdl.io import read_table
from privdl.keys import Secret

ROOT = Path(__file__).resolve().parents[2]
IDS = ["--id", "email", "--id", "full_name", "--id", "phone:mask", "--drop", "ip", "--key-env", "PRIVDL_KEY"]


@pytest.fixture
def env_key(monkeypatch, key_hex):
    monkeypatch.setenv("PRIVDL_KEY", key_hex)
    return key_hex


@pytest.fixture
def stdin_from(monkeypatch):
    """Replace standard input with the bytes of a file (a pipe, not a terminal)."""

    def feed(data: bytes) -> None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))

    return feed


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    env.pop("PRIVDL_DEBUG", None)
    return env


# -- bare groups, errors, version, completion -------------------------------------------
@pytest.mark.parametrize("group", [[], ["budget"], ["he"], ["audit"]], ids=["privdl", "budget", "he", "audit"])
def test_bare_group_prints_its_help_on_stdout_and_succeeds(run_cli, group):
    code, out, err = run_cli(*group)
    assert code == 0, err
    assert err == ""
    assert out.startswith("Usage: " + " ".join(["privdl", *group]))
    assert "\nCommands:\n" in out and "\nOptions:\n" in out  # formatted, several lines
    assert out == run_cli(*group, "--help")[1]  # the same help as --help


def test_bad_usage_is_still_one_line_exit_2(run_cli):
    code, out, err = run_cli("budget", "show")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "ledger" in err.lower() and "Traceback" not in err
    code, _, err = run_cli("budget", "nosuch")
    assert code == 2 and err.count("\n") == 1


def test_version(run_cli):
    from privdl._version import __version__

    code, out, _ = run_cli("--version")
    assert code == 0 and out == f"privdl {__version__}\n"


def test_shell_completion_is_typers():
    show = subprocess.run(
        [sys.executable, "-m", "privdl", "--show-completion", "bash"],
        capture_output=True, text=True, env=_env(), check=False,
    )  # fmt: skip
    assert show.returncode == 0, show.stderr
    assert "_PRIVDL_COMPLETE=complete_bash" in show.stdout and "complete " in show.stdout
    done = subprocess.run(
        [sys.executable, "-m", "privdl"],
        capture_output=True, text=True, check=False,
        env=_env(_PRIVDL_COMPLETE="complete_bash", COMP_WORDS="privdl he ke", COMP_CWORD="2"),
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.split() == ["keygen"]


def _commands():
    import typer

    from privdl.cli import _register_all, app

    _register_all()
    root = typer.main.get_command(app)
    found = []

    def walk(command, path):
        found.append((path, command))
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    return found


def test_every_help_has_an_example(run_cli):
    commands = _commands()
    assert len(commands) >= 20
    for path, command in commands:
        code, out, err = run_cli(*path, "--help")
        assert code == 0, (path, err)
        example = out.split("Examples:", 1)
        assert len(example) == 2, f"privdl {' '.join(path)} --help has no example"
        assert " ".join(["privdl", *path]) in example[1], path  # it runs this very command


# -- one vocabulary ---------------------------------------------------------------------
def test_out_dir_for_folders_and_old_spellings_hidden_but_working(run_cli, tmp_path):
    code, _, err = run_cli("audit", "keygen", "--out-dir", tmp_path / "new")
    assert code == 0 and err == "", err
    assert (tmp_path / "new" / "audit-signing.key").exists()
    code, _, err = run_cli("audit", "keygen", "--out", tmp_path / "old")  # DESIGN.md's old call
    assert code == 0 and (tmp_path / "old" / "audit-signing.key").exists() and err == ""
    code, _, err = run_cli("audit", "keygen", "--out", tmp_path / "x", "--out-dir", tmp_path / "y")
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "x").exists()
    code, _, err = run_cli("audit", "keygen")
    assert code == 2 and "--out-dir" in err
    for path in (["audit", "keygen"], ["he", "keygen"]):
        shown = run_cli(*path, "--help")[1]
        assert "--out-dir" in shown
        assert not re.search(r"--out\b(?!-)", shown.split("Examples:")[0]), path  # old name hidden
    he_help = run_cli("he", "keygen", "--help")[1].split("Examples:")[0]
    assert "--output-kind" in he_help and not re.search(r"--output\b(?!-)", he_help)


def test_no_option_means_two_things():
    """``-o/--output`` is a file everywhere; a folder is ``--out-dir``; ``--out`` is hidden."""
    for path, command in _commands():
        for param in getattr(command, "params", []):
            names = set(param.opts) | set(getattr(param, "secondary_opts", []))
            if "--output" in names and not getattr(param, "hidden", False):
                assert "-o" in names, (path, param.name)
            if "--out" in names:
                assert getattr(param, "hidden", False), (path, param.name)


def test_he_keygen_out_dir_output_kind_and_old_spellings(run_cli, tmp_path):
    pytest.importorskip("tenseal")
    code, out, err = run_cli(
        "he", "keygen", "--out-dir", tmp_path / "a", "--output-kind", "probability", "--json"
    )
    assert code == 0, err
    new = json.loads(out)
    assert Path(new["secret_file"]) == tmp_path / "a" / "secret.he" and new["key_id"]
    code, out, err = run_cli("he", "keygen", "--out", tmp_path / "b", "--output", "probability", "--json")
    assert code == 0, err
    old = json.loads(out)
    assert old["coeff_mod_bit_sizes"] == new["coeff_mod_bit_sizes"]  # the same request
    code, _, err = run_cli("he", "keygen", "--out", tmp_path / "c", "--output", "bogus")
    assert code == 2 and "bogus" in err and not (tmp_path / "c" / "secret.he").exists()  # passed on


# -- `-` for standard input and output --------------------------------------------------
def test_anonymize_stdin_to_stdout_csv(run_cli, users_csv, users, stdin_from, env_key, tmp_path, monkeypatch):
    import tempfile

    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    stdin_from(users_csv.read_bytes())
    code, out, err = run_cli("anonymize", "-", "-o", "-", *IDS)
    assert code == 0, err
    released = pd.read_csv(io.StringIO(out))
    assert len(released) == len(users) and "ip" not in released.columns
    assert set(released["email"]).isdisjoint(users["email"])
    # the summary goes to stderr when stdout is the table
    assert "released 300 of 300 rows to standard output" in err
    # the same table as a file release of the same input with the same key
    code, _, _ = run_cli("anonymize", users_csv, "-o", tmp_path / "file.csv", *IDS)
    assert code == 0
    assert out == (tmp_path / "file.csv").read_text()
    assert list(spool.iterdir()) == []  # the spooled input and the staged output are gone


@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "parquet"])
def test_anonymize_formats_through_pipes(run_cli, users_csv, users, stdin_from, env_key, tmp_path, fmt):
    source = tmp_path / f"in.{fmt}"
    from privdl.io import write_table

    write_table(users, source)
    stdin_from(source.read_bytes())
    out_file = tmp_path / f"out.{fmt}"
    code, _, err = run_cli("anonymize", "-", "--format", fmt, "-o", out_file, *IDS)
    assert code == 0, err
    released = read_table(out_file)
    assert len(released) == len(users) and set(released["email"]).isdisjoint(users["email"])


def test_stdout_gets_nothing_when_the_audit_entry_cannot_be_written(
    run_cli, users_csv, stdin_from, env_key, tmp_path, monkeypatch
):
    log = AuditLog(tmp_path / "audit.jsonl", key=Secret.generate())
    log.append("risk")
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", "hex:" + Secret.generate().reveal().hex())  # another key
    stdin_from(users_csv.read_bytes())
    code, out, err = run_cli("anonymize", "-", "-o", "-", *IDS, "--audit-log", log.path)
    assert code == 2 and out == "" and err.count("\n") == 1


def test_stdout_table_follows_its_audit_entry(run_cli, users_csv, stdin_from, env_key, tmp_path, monkeypatch):
    audit_key = Secret.generate()
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", "hex:" + audit_key.reveal().hex())
    stdin_from(users_csv.read_bytes())
    log = tmp_path / "audit.jsonl"
    code, out, err = run_cli("anonymize", "-", "-o", "-", *IDS, "--audit-log", log)
    assert code == 0, err
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    done = [e for e in entries if e["entry"]["event"] == "anonymize" and e["entry"]["outcome"] == "ok"]
    assert done, entries
    text = json.dumps(done[-1])
    assert "stdin.csv" in text and "stdout.csv" in text  # the streams, fingerprinted
    import hashlib

    assert hashlib.sha256(out.encode()).hexdigest() in text  # exactly what went out


def test_failed_stream_release_writes_nothing_and_names_standard_input(run_cli, stdin_from, env_key):
    stdin_from(b"")
    code, out, err = run_cli("anonymize", "-", "-o", "-", *IDS)
    assert (code, out) == (2, "") and err == "privdl: error: standard input is empty\n"
    stdin_from(b"email,b\nx@example.org,2\ny@example.org,3,4\n")  # a ragged row
    code, out, err = run_cli("anonymize", "-", "-o", "-", "--id", "email", "--key-env", "PRIVDL_KEY")
    assert code == 2 and out == "" and "standard input" in err and "privdl-stream" not in err


def test_format_is_only_for_streams(run_cli, users_csv, tmp_path, env_key):
    code, _, err = run_cli("anonymize", users_csv, "-o", tmp_path / "o.csv", "--format", "csv", *IDS)
    assert code == 2 and "--format" in err and not (tmp_path / "o.csv").exists()
    code, _, err = run_cli("risk", "-", "--qi", "age", "--format", "xlsx")
    assert code == 2 and "--format" in err


def test_stdin_terminal_refused(run_cli, monkeypatch, env_key):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty())
    code, out, err = run_cli("risk", "-", "--qi", "age")
    assert code == 2 and out == "" and "terminal" in err


def test_risk_from_stdin_matches_the_file(run_cli, users_csv, stdin_from):
    code, from_file, _ = run_cli("risk", users_csv, "--qi", "age", "--qi", "zip", "--json")
    assert code == 0
    stdin_from(users_csv.read_bytes())
    code, piped, err = run_cli("risk", "-", "--qi", "age", "--qi", "zip", "--json")
    assert code == 0, err
    a, b = json.loads(from_file), json.loads(piped)
    a.pop("source", None), b.pop("source", None)
    assert a == b and a["k"] >= 1


def test_real_pipe_between_two_commands(users, key_hex):
    """`export | privdl anonymize - -o - | privdl risk - --json`: real pipes, JSON Lines."""
    env = _env(PRIVDL_KEY=key_hex)
    export = users.to_json(orient="records", lines=True).encode()
    first = subprocess.run(
        [sys.executable, "-m", "privdl", "anonymize", "-", "-o", "-", "--format", "jsonl",
         *IDS, "--qi", "age", "-k", "5"],
        input=export, capture_output=True, env=env, check=False,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr.decode()
    rows = [json.loads(line) for line in first.stdout.decode().splitlines()]
    assert len(rows) <= 300 and all("ip" not in r for r in rows)
    second = subprocess.run(
        [sys.executable, "-m", "privdl", "risk", "-", "--format", "jsonl", "--qi", "age", "--json"],
        input=first.stdout, capture_output=True, env=env, check=False,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr.decode()
    assert json.loads(second.stdout)["k"] >= 5


# -- --json: one document ---------------------------------------------------------------
def test_json_on_result_commands(run_cli, users_csv, tmp_path, env_key):
    code, out, err = run_cli("anonymize", users_csv, "-o", tmp_path / "o.csv", *IDS, "--qi", "age", "-k", "5", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["rows_in"] == 300 and doc["k_target"] == 5 and doc["key_id"].startswith("kid_")
    assert doc["output"] == str(tmp_path / "o.csv")
    code, out, _ = run_cli("budget", "set", tmp_path / "b.db", "--dataset", "cli-habits", "--epsilon", "3",
                           "--delta", "1e-5", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["epsilon"] == 3
    code, out, _ = run_cli("budget", "report", tmp_path / "b.db", "--dataset", "cli-habits", "-o",
                           tmp_path / "r.json", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["report"] == str(tmp_path / "r.json")
    code, out, _ = run_cli("keygen", "-o", tmp_path / "k", "--json")
    assert code == 0 and json.loads(out)["key_id"] == Secret.from_file(tmp_path / "k").key_id
    code, out, _ = run_cli("audit", "keygen", "--out-dir", tmp_path / "ak", "--json")
    assert code == 0 and json.loads(out)["verifier_key"].startswith("privdl-audit")
    code, _, err = run_cli("anonymize", users_csv, "-o", "-", *IDS, "--json")
    assert code == 2 and "--json" in err  # stdout is the table: one or the other


# -- privdl keygen and passphrase keys --------------------------------------------------
def test_keygen_writes_a_random_private_key_and_never_overwrites(run_cli, tmp_path, users_csv):
    path = tmp_path / "pseudonym.key"
    code, out, err = run_cli("keygen", "-o", path)
    assert code == 0, err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert re.fullmatch(r"hex:[0-9a-f]{64}\n", text)
    key = Secret.from_file(path)
    assert key.key_id in out and text[4:20] not in out  # the id, never the key
    code, _, err = run_cli("keygen", "-o", path)
    assert code == 2 and "refusing to overwrite" in err and path.read_text() == text
    other = tmp_path / "other.key"
    run_cli("keygen", "-o", other)
    assert Secret.from_file(other) != key
    code, _, err = run_cli("anonymize", users_csv, "-o", tmp_path / "o.csv", "--id", "email", "--key-file", path)
    assert code == 0, err
    code, _, err = run_cli("keygen", "-o", tmp_path / "missing" / "k")
    assert code == 2 and "missing" in err


def test_passphrase_in_a_variable_is_refused_with_how_to_make_a_key(run_cli, users_csv, tmp_path, monkeypatch):
    phrase = "correct horse battery staple, long enough to pass a length check"
    monkeypatch.setenv("PRIVDL_KEY", phrase)
    code, out, err = run_cli("anonymize", users_csv, "-o", tmp_path / "o.csv", "--id", "email", "--key-env", "PRIVDL_KEY")
    assert code == 2 and out == "" and not (tmp_path / "o.csv").exists()
    assert err.count("\n") == 1 and "PRIVDL_KEY" in err and "privdl keygen -o KEYFILE" in err
    assert "horse" not in err


def test_closed_pipe_is_one_line_not_an_internal_error(run_cli, users_csv, stdin_from, env_key, monkeypatch):
    from privdl.cli import streams

    def closed(path):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(streams, "copy_to_stdout", closed)
    stdin_from(users_csv.read_bytes())
    code, _, err = run_cli("anonymize", "-", "-o", "-", *IDS)  # returned, not raised
    assert code == 1 and "internal error" not in err and "Traceback" not in err


def test_a_file_named_stdin_is_still_a_file(run_cli, tmp_path, env_key):
    path = tmp_path / "stdin.csv"
    path.write_text("email,b\nx@example.org,2\ny@example.org,3,4\n")  # a ragged row
    code, _, err = run_cli("anonymize", path, "-o", tmp_path / "o.csv", "--id", "email", "--key-env", "PRIVDL_KEY")
    assert code == 2 and str(path) in err and "standard input" not in err
