"""`privdl anonymize` as a user runs it: the issue's end-to-end check and every bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
from pathlib import Path

import pandas as pd
import pytest

from privdl.io import read_table

ARGS = ["--id", "email", "--id", "full_name", "--id", "phone:mask", "--drop", "ip", "--key-env", "PRIVDL_KEY"]


@pytest.fixture
def env_key(monkeypatch, key_hex):
    monkeypatch.setenv("PRIVDL_KEY", key_hex)
    return key_hex


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_release_pseudonymizes_masks_and_drops(run_cli, users_csv, users, tmp_path, env_key):
    before = _digest(users_csv)
    out1, out2 = tmp_path / "a.parquet", tmp_path / "b.parquet"
    code, stdout, stderr = run_cli("anonymize", users_csv, "-o", out1, *ARGS)
    assert code == 0, stderr
    assert "released 300 of 300 rows" in stdout
    code, _, _ = run_cli("anonymize", users_csv, "-o", out2, *ARGS)
    assert code == 0
    assert _digest(users_csv) == before  # the input is never modified
    a, b = read_table(out1), read_table(out2)
    assert "ip" not in a.columns
    assert set(a["email"]).isdisjoint(users["email"]) and set(a["full_name"]).isdisjoint(users["full_name"])
    joined = " ".join(a.astype(str).to_numpy().ravel())
    assert not any(e in joined for e in users["email"].head(50))
    assert a["email"].tolist() == b["email"].tolist()  # same key, same tokens
    assert a["email"].str.len().eq(32).all()
    for raw, masked in zip(users["phone"], a["phone"], strict=True):
        digits = [c for c in raw if c.isdigit()]
        assert masked.endswith("".join(digits[-4:]))
        assert sum(c.isdigit() for c in masked) == 4
    # passthrough columns unchanged
    pd.testing.assert_series_equal(a["plays_week1"], users["plays_week1"], check_dtype=False)


def test_another_key_gives_other_tokens(run_cli, users_csv, tmp_path, monkeypatch, env_key):
    run_cli("anonymize", users_csv, "-o", tmp_path / "a.csv", *ARGS)
    monkeypatch.setenv("PRIVDL_KEY", secrets.token_hex(32))
    run_cli("anonymize", users_csv, "-o", tmp_path / "b.csv", *ARGS)
    a, b = read_table(tmp_path / "a.csv"), read_table(tmp_path / "b.csv")
    assert set(a["email"]).isdisjoint(b["email"])


def test_key_file(run_cli, users_csv, tmp_path, key):
    path = tmp_path / "key"
    key.to_file(path)
    code, _, err = run_cli(
        "anonymize", users_csv, "-o", tmp_path / "o.csv", "--id", "email", "--key-file", path
    )
    assert code == 0, err


def test_report_lists_passthrough_and_never_the_key(run_cli, users_csv, tmp_path, env_key):
    for name in ("r.json", "r.md", "r.html"):
        code, _, err = run_cli(
            "anonymize", users_csv, "-o", tmp_path / "o.csv", *ARGS, "--report", tmp_path / name
        )
        assert code == 0, err
        text = (tmp_path / name).read_text()
        assert env_key not in text and bytes.fromhex(env_key).hex()[:16] not in text
        assert "plays_week1" in text  # passed through, listed
        assert "anonymous" not in text.lower().replace("not anonymous", "").replace("anonymous data", "")


def test_warns_about_unroled_identifier_columns(run_cli, users_csv, tmp_path, env_key):
    code, _, err = run_cli(
        "anonymize", users_csv, "-o", tmp_path / "o.csv", "--id", "email", "--key-env", "PRIVDL_KEY"
    )
    assert code == 0
    assert "column 'ip' looks like IP addresses" in err
    assert "column 'phone' looks like phone numbers" in err
    assert "column 'full_name'" in err
    assert "column 'birth_date' looks like" not in err  # dates are not phone numbers


def test_policy_file(run_cli, users_csv, tmp_path, env_key):
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'drop = ["ip"]\n[identifiers]\nemail = { transform = "encrypt", normalize = "email" }\n'
    )
    code, _, err = run_cli(
        "anonymize", users_csv, "-o", tmp_path / "o.jsonl", "--policy", policy, "--key-env", "PRIVDL_KEY"
    )
    assert code == 0, err
    assert read_table(tmp_path / "o.jsonl")["email"].str.startswith("enc1.").all()


def _ragged(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("email,age\nalice@example.org,31\nbob@example.org,44,extra\n")
    return path


def _empty(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    return path


def _binary(tmp_path):
    path = tmp_path / "garbage.csv"
    path.write_bytes(b"\xff\xfe\x00" + os.urandom(2000))
    return path


def _unknown(tmp_path):
    path = tmp_path / "users.xlsx"
    path.write_bytes(b"PK")
    return path


@pytest.mark.parametrize(
    ("case", "extra", "match"),
    [
        ("missing input", lambda t, u: [t / "absent.csv"], "does not exist"),
        ("empty file", lambda t, u: [_empty(t)], "is empty"),
        ("unreadable file", lambda t, u: [_binary(t)], "garbage.csv"),
        ("unknown extension", lambda t, u: [_unknown(t)], "unknown table format"),
        ("ragged rows", lambda t, u: [_ragged(t)], "line 3 has 3 fields, expected 2"),
    ],
)
def test_bad_input_files(run_cli, tmp_path, users_csv, env_key, case, extra, match):
    out = tmp_path / "out.csv"
    code, _, err = run_cli(
        "anonymize", *extra(tmp_path, users_csv), "-o", out, "--id", "email", "--key-env", "PRIVDL_KEY"
    )
    assert code == 2, case
    assert match in err and err.count("\n") == 1 and "Traceback" not in err
    assert "alice" not in err and "bob@" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--id", "no_such_column"], "column 'no_such_column' is named in the policy but not found"),
        (["--id", "email", "--drop", "email"], "column 'email' has two roles"),
        (["--id", "email", "--qi", "email", "-k", "2"], "column 'email' has two roles"),
    ],
)
def test_bad_columns(run_cli, users_csv, tmp_path, env_key, args, match):
    out = tmp_path / "out.csv"
    code, _, err = run_cli("anonymize", users_csv, "-o", out, *args, "--key-env", "PRIVDL_KEY")
    assert code == 2 and match in err and not out.exists()


def test_no_key_and_short_key(run_cli, users_csv, tmp_path, monkeypatch):
    out = tmp_path / "out.csv"
    code, _, err = run_cli("anonymize", users_csv, "-o", out, "--id", "email")
    assert code == 2 and "key" in err and not out.exists()
    monkeypatch.delenv("PRIVDL_KEY", raising=False)
    code, _, err = run_cli("anonymize", users_csv, "-o", out, "--id", "email", "--key-env", "PRIVDL_KEY")
    assert code == 2 and "PRIVDL_KEY is not set" in err
    short = secrets.token_hex(16)
    monkeypatch.setenv("PRIVDL_KEY", short)
    code, _, err = run_cli("anonymize", users_csv, "-o", out, "--id", "email", "--key-env", "PRIVDL_KEY")
    assert code == 2 and "at least 32" in err and short not in err and not out.exists()


def test_output_equal_to_input_and_missing_folder(run_cli, users_csv, tmp_path, env_key):
    copy = tmp_path / "users.csv"
    copy.write_bytes(users_csv.read_bytes())
    before = _digest(copy)
    code, _, err = run_cli("anonymize", copy, "-o", copy, "--id", "email", "--key-env", "PRIVDL_KEY")
    assert code == 2 and "is the input file" in err and _digest(copy) == before
    code, _, err = run_cli(
        "anonymize", copy, "-o", tmp_path / "nope" / "o.csv", "--id", "email", "--key-env", "PRIVDL_KEY"
    )
    assert code == 2 and "output folder" in err


def test_usage_errors_are_one_line(run_cli, users_csv):
    code, _, err = run_cli("anonymize", users_csv)
    assert code == 2 and err.count("\n") == 1 and "-o" in err
    code, _, err = run_cli("anonymize", users_csv, "-o", "x.csv")
    assert code == 2 and "nothing to do" in err


def test_console_script_subprocess(users_csv, tmp_path, key_hex):
    import subprocess
    import sys

    env = {**os.environ, "PRIVDL_KEY": key_hex}
    out = tmp_path / "o.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "privdl",
            "anonymize",
            str(users_csv),
            "-o",
            str(out),
            "--id",
            "nope",
            "--key-env",
            "PRIVDL_KEY",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert not out.exists()


def test_sqlite_query_input_and_jsonl_output(run_cli, users, tmp_path, env_key):
    from privdl.io import write_table

    db = tmp_path / "export.db"
    write_table(users, f"sqlite:///{db}?table=users")
    out = tmp_path / "o.jsonl"
    code, _, err = run_cli(
        "anonymize",
        f"sqlite:///{db}",
        "--query",
        "SELECT user_id, email, age FROM users WHERE age > 40",
        "-o",
        out,
        "--id",
        "user_id",
        "--id",
        "email",
        "--key-env",
        "PRIVDL_KEY",
    )
    assert code == 0, err
    released = read_table(out)
    assert len(released) == int((users["age"] > 40).sum()) and list(released.columns) == [
        "user_id",
        "email",
        "age",
    ]


def test_semicolon_export_stays_semicolon(run_cli, tmp_path, env_key):
    src = tmp_path / "eu.csv"
    src.write_text("email;age\nana@x.org;31\nbo@y.org;45\n")
    out = tmp_path / "out.csv"
    code, _, err = run_cli("anonymize", src, "-o", out, "--id", "email", "--key-env", "PRIVDL_KEY")
    assert code == 0, err
    assert out.read_text().splitlines()[0] == "email;age"


def _events(log):
    import json

    return [(json.loads(line)["entry"]["event"], json.loads(line)["entry"]["outcome"]) for line in log.open()]


def test_audit_log_gets_one_entry_per_command(run_cli, users_csv, tmp_path, env_key, monkeypatch):
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", secrets.token_hex(32))
    log = tmp_path / "audit.jsonl"
    out = tmp_path / "o.csv"
    assert run_cli("anonymize", users_csv, "-o", out, *ARGS, "--audit-log", log)[0] == 0
    assert (
        run_cli(
            "anonymize", users_csv, "-o", out, "--id", "nope", "--key-env", "PRIVDL_KEY", "--audit-log", log
        )[0]
        == 2
    )
    assert run_cli("risk", out, "--qi", "age", "--qi", "zip", "--audit-log", log, "--json")[0] == 0
    assert (
        run_cli("risk", out, "--qi", "age", "--qi", "zip", "--max-risk", "0.01", "--audit-log", log)[0] == 1
    )
    assert run_cli("he", "keygen", "--out", tmp_path / "keys", "--audit-log", log)[0] == 0
    # the unknown column is found once the data is read: a failed run, logged as such
    assert _events(log) == [
        ("anonymize", "ok"),
        ("anonymize", "failed"),
        ("risk", "ok"),
        ("risk", "refused"),
        ("he.keygen", "ok"),
    ]
    assert run_cli("audit", "verify", log)[0] == 0


def test_audit_log_default_from_privdl_toml(run_cli, users_csv, tmp_path, env_key, monkeypatch):
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", secrets.token_hex(32))
    config = tmp_path / "privdl.toml"
    config.write_text(f'[audit]\nlog = "{tmp_path / "default.jsonl"}"\n')
    monkeypatch.setenv("PRIVDL_CONFIG", str(config))
    assert run_cli("anonymize", users_csv, "-o", tmp_path / "o.csv", *ARGS)[0] == 0
    assert _events(tmp_path / "default.jsonl") == [("anonymize", "ok")]


def test_missing_audit_key_is_exit_2_before_any_work(run_cli, users_csv, tmp_path, env_key, monkeypatch):
    monkeypatch.delenv("PRIVDL_AUDIT_KEY", raising=False)
    out = tmp_path / "o.csv"
    code, _, err = run_cli("anonymize", users_csv, "-o", out, *ARGS, "--audit-log", tmp_path / "a.jsonl")
    assert code == 2 and "PRIVDL_AUDIT_KEY" in err and not out.exists()


def test_anonymize_never_imports_heavy_extras(users_csv, tmp_path, key_hex):
    import subprocess
    import sys

    code = (
        "import sys; from privdl.cli import main; "
        f"rc = main(['anonymize', {str(users_csv)!r}, '-o', {str(tmp_path / 'o.csv')!r}, '--id', 'email', "
        "'--qi', 'age', '-k', '5', '--key-env', 'PRIVDL_KEY']); "
        "heavy = [m for m in ('torch', 'opacus', 'tenseal', 'pyspark', 'sqlalchemy') if m in sys.modules]; "
        "print(rc, heavy)"
    )
    env = {**os.environ, "PRIVDL_KEY": key_hex}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().endswith("0 []"), out.stdout + out.stderr


# -- issue 10: every released column an attacker can link on is in the risk figures -------
README = Path(__file__).resolve().parents[2] / "README.md"
OLD_README = [
    *("--id", "user_id", "--id", "email:pseudonymize:normalize=email", "--id", "full_name"),
    *("--id", "phone:mask", "--drop", "ip", "--qi", "age", "--qi", "zip", "--qi", "sex"),
    *("--hierarchy", "zip=prefix", "-k", "5", "--key-env", "PRIVDL_KEY"),
]


def test_linkable_columns_are_named_on_stderr_and_the_k_is_honest(run_cli, users_csv, tmp_path, env_key):
    code, out, err = run_cli("anonymize", users_csv, "-o", tmp_path / "o.csv", *OLD_README)
    assert code == 0, err
    for column in ("birth_date", "signup_date", "phone"):
        assert f"privdl: warning: column '{column}' is released with" in err
    assert "linkable column(s) 'phone', 'birth_date', 'signup_date'" in err and "k=1" in err
    assert "achieved k=1 with 3 linkable column(s) counted" in out and "(k=5)" not in out
    assert "1988-12-23" not in err + out  # names and figures, never values


def test_risk_command_agrees_with_the_reports_linkable_section(run_cli, users_csv, tmp_path, env_key):
    out, report = tmp_path / "o.csv", tmp_path / "r.json"
    assert run_cli("anonymize", users_csv, "-o", out, *OLD_README, "--report", report)[0] == 0
    payload = json.loads(report.read_text())
    qis = [*payload["quasi_identifiers"], *payload["linkable"]]
    code, stdout, err = run_cli("risk", out, *[a for q in qis for a in ("--qi", q)], "--json")
    assert code == 0, err
    figures = json.loads(stdout)
    for name in ("k", "classes", "unique_share", "prosecutor_max", "prosecutor_avg"):
        assert figures[name] == payload["linkable_risk"][name], name
    assert payload["linkable_risk"]["k"] == 1 < payload["after"]["k"]


@pytest.mark.parametrize("where", ["flag", "policy file"])
def test_strict_needs_a_role_for_every_column(run_cli, users_csv, tmp_path, env_key, where):
    out = tmp_path / "o.csv"
    args = ["--id", "user_id", "--id", "email", "--drop", "ip", "--key-env", "PRIVDL_KEY"]
    if where == "flag":
        args.append("--strict")
    else:
        policy = tmp_path / "policy.toml"
        policy.write_text("strict = true\n")
        args += ["--policy", policy]
    code, _, err = run_cli("anonymize", users_csv, "-o", out, *args)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and not out.exists()
    assert "strict policy" in err and "'birth_date'" in err and "'plays_week1'" in err
    assert "'email'" not in err and "@" not in err


def test_shifted_dates_generalized_on_the_cli(run_cli, users_csv, tmp_path, env_key):
    out, report = tmp_path / "o.csv", tmp_path / "r.json"
    code, _, err = run_cli(
        *("anonymize", users_csv, "-o", out, "--id", "user_id", "--id", "birth_date:shift_dates:by=user_id"),
        *("--qi", "birth_date", "--hierarchy", "birth_date=date", "--qi", "sex", "-k", "5"),
        *("--drop", "email", "--drop", "full_name", "--drop", "phone", "--drop", "ip", "--drop", "zip"),
        *("--drop", "signup_date", "--drop", "age", "--keep", "city", "--keep", "plays_week1"),
        *("--keep", "plays_week2", "--keep", "retained", "--strict", "--key-env", "PRIVDL_KEY"),
        *("--report", report),
    )
    assert code == 0, err
    assert "linkable" not in err
    released = read_table(out)
    assert not released["birth_date"].astype(str).isin(set(read_table(users_csv)["birth_date"])).any()
    assert released.groupby(["birth_date", "sex"]).size().min() >= 5
    assert json.loads(report.read_text())["identifier_columns"]["birth_date"] == "shift_dates"


def _readme_step_1() -> list[list[str]]:
    """The `privdl ...` commands of the README's "### 1. Anonymize" shell block."""
    section = README.read_text().split("### 1. Anonymize", 1)[1].split("\n### ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line.startswith("privdl "):
            commands.append(shlex.split(line)[1:])
    return commands


def test_readme_step_1_release_holds_up(run_cli, tmp_path, monkeypatch):
    """README step 1 runs as written on the main job's export (made here, seeded)."""
    import importlib.util

    from privdl.keys import Secret

    root = README.parent
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(root / "examples")
    spec = importlib.util.spec_from_file_location("make_export", root / "examples/retention/make_export.py")
    make_export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_export)
    users_csv, _ = make_export.write(3000, 2026, tmp_path / "retention-run" / "export")
    Secret.generate().to_file(tmp_path / "retention-run" / "pseudonym.key")
    anonymize, risk = _readme_step_1()
    assert anonymize[0] == "anonymize" and risk[0] == "risk"
    report = tmp_path / "report.json"
    anonymize = [str(report) if a.startswith("report.") else a for a in anonymize]
    code, _, err = run_cli(*anonymize)
    assert code == 0, err
    assert "warning" not in err  # no forgotten identifier, no linkable column
    payload = json.loads(report.read_text())
    assert payload["linkable"] == {} and payload["passthrough"] == [] and payload["policy"]["strict"]
    released = read_table(tmp_path / "released.parquet")
    raw = read_table(users_csv)
    for column in ("birth_date", "signup_date"):  # no exact or shifted date beside the k claim
        assert column not in released.columns or column in payload["quasi_identifiers"]
        if column in released.columns:
            assert not released[column].astype(str).isin(set(raw[column])).any()
    assert not {"full_name", "phone"} & set(released.columns)
    assert payload["after"]["k"] >= 5 and payload["policy_met"]["k"] and payload["policy_met"]["l"]
    code, _, err = run_cli(*risk)
    assert code == 0, err
