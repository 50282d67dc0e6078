"""Evidence first at the CLI: with an audit log that cannot take an entry, `privdl
anonymize`, `privdl he encrypt` and `privdl budget set` exit before any work, print one
line naming the log, and leave no output (and the ledger as it was)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from privdl.audit import AuditLog
from privdl.io import STAGE_PREFIX
from privdl.keys import Secret
from tests.audit.test_audit_evidence import needs_non_root

DATA = Path(__file__).resolve().parents[1] / "data"


def _last_entry_torn(log: Path) -> None:
    data = log.read_bytes()
    log.write_bytes(data[: len(data) - 60])


def _half_line_appended(log: Path) -> None:
    line = log.read_bytes().splitlines()[-1]
    with log.open("ab") as fh:
        fh.write(line[len(line) // 2 :])


def _state_is_a_folder(log: Path) -> None:
    state = log.with_name(log.name + ".state")
    state.unlink()
    state.mkdir()


def _read_only_file(log: Path) -> None:
    log.chmod(0o444)


def _read_only_folder(log: Path) -> None:
    log.parent.chmod(0o555)


# (breakage, exit code); "other-key" is done with the environment, see _broken_log
BROKEN = [
    pytest.param(None, 2, id="other-key"),
    pytest.param(_last_entry_torn, 1, id="last-entry-torn"),
    pytest.param(_half_line_appended, 1, id="half-line-appended"),
    pytest.param(_state_is_a_folder, 2, id="state-is-a-folder"),
    pytest.param(_read_only_file, 2, id="read-only-file", marks=needs_non_root),
    pytest.param(_read_only_folder, 2, id="read-only-folder", marks=needs_non_root),
]


@pytest.fixture
def broken_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, audit_key: Secret, request) -> Path:
    """A log with two entries, broken as the test's parameter says; the audit key of
    the environment is the log's own, except for the other-key case."""
    breakage = request.node.callspec.params["breakage"]
    folder = tmp_path / "logs"
    folder.mkdir()
    log = AuditLog(folder / "audit.jsonl", key=audit_key)
    log.append("risk")
    log.append("risk")
    env_key = Secret.generate() if breakage is None else audit_key
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", "hex:" + env_key.reveal().hex())
    if breakage is not None:
        breakage(log.path)
    yield log.path
    folder.chmod(0o755)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _budgets(shown: str) -> list[dict]:
    return [{k: v for k, v in d.items() if k != "taken_at"} for d in json.loads(shown)["datasets"]]


def _check_refused(code: int, err: str, expected: int, log: Path, out: Path) -> None:
    assert code == expected, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(log) in lines[0] and "Traceback" not in err, err
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(STAGE_PREFIX)]


@pytest.mark.parametrize(("breakage", "code"), BROKEN)
def test_anonymize_writes_nothing(
    run_cli: Callable[..., tuple[int, str, str]], tmp_path: Path, broken_log: Path, breakage, code: int
) -> None:
    users = tmp_path / "users.csv"
    users.write_bytes((DATA / "users_small.csv").read_bytes())
    before = _digest(users)
    log_before = broken_log.read_bytes()
    out, report = tmp_path / "released.csv", tmp_path / "report.json"
    got, _, err = run_cli(
        "anonymize", users, "-o", out, "--drop", "email", "--report", report, "--audit-log", broken_log
    )
    _check_refused(got, err, code, broken_log, out)
    assert not report.exists()
    assert _digest(users) == before and broken_log.read_bytes() == log_before


@pytest.mark.parametrize(("breakage", "code"), BROKEN)
def test_budget_set_leaves_the_ledger_unchanged(
    run_cli: Callable[..., tuple[int, str, str]], tmp_path: Path, broken_log: Path, breakage, code: int
) -> None:
    ledger, fresh = tmp_path / "budget.db", tmp_path / "fresh.db"
    args = ("--epsilon", "1", "--delta", "1e-5")
    assert run_cli("budget", "set", ledger, "--dataset", "d", *args)[0] == 0
    shown = run_cli("budget", "show", ledger, "--dataset", "d", "--json")[1]
    got, _, err = run_cli(
        "budget",
        "set",
        ledger,
        "--dataset",
        "d",
        "--epsilon",
        "5",
        "--delta",
        "1e-5",
        "--audit-log",
        broken_log,
    )
    _check_refused(got, err, code, broken_log, tmp_path / "nothing")
    after = run_cli("budget", "show", ledger, "--dataset", "d", "--json")[1]
    assert _budgets(after) == _budgets(shown) and _budgets(after)[0]["epsilon"] == 1.0
    # a ledger that did not exist is not created
    got, _, err = run_cli("budget", "set", fresh, "--dataset", "d", *args, "--audit-log", broken_log)
    _check_refused(got, err, code, broken_log, fresh)


@pytest.fixture(scope="module")
def he_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tenseal")
    from privdl.encrypted.keys import HEKeys

    folder = tmp_path_factory.mktemp("he") / "keys"
    HEKeys.generate(depth=1).save(folder)
    return folder


@pytest.mark.parametrize(("breakage", "code"), BROKEN)
def test_he_encrypt_writes_nothing(
    run_cli: Callable[..., tuple[int, str, str]],
    tmp_path: Path,
    he_keys: Path,
    broken_log: Path,
    breakage,
    code: int,
) -> None:
    table = tmp_path / "t.csv"
    table.write_text("age,plays\n31,2\n45,7\n", encoding="utf-8")
    for packing in ("feature-major", "row"):
        out = tmp_path / f"{packing}.he"
        got, _, err = run_cli(
            "he", "encrypt", table, "--keys", he_keys, "--columns", "age,plays", "--packing", packing,
            "-o", out, "--audit-log", broken_log,
        )  # fmt: skip
        _check_refused(got, err, code, broken_log, out)


def test_he_keygen_writes_no_keys_without_its_entry(
    run_cli: Callable[..., tuple[int, str, str]],
    tmp_path: Path,
    audit_key: Secret,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("tenseal")
    log = AuditLog(tmp_path / "audit.jsonl", key=audit_key)
    log.append("risk")
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", "hex:" + Secret.generate().reveal().hex())
    code, _, err = run_cli("he", "keygen", "--out", tmp_path / "keys", "--audit-log", log.path)
    assert code == 2 and str(log.path) in err
    assert not (tmp_path / "keys").exists()


def test_anonymize_output_is_fingerprinted_under_its_name(
    run_cli: Callable[..., tuple[int, str, str]],
    tmp_path: Path,
    audit_key: Secret,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from privdl.audit import iter_entries

    monkeypatch.setenv("PRIVDL_AUDIT_KEY", "hex:" + audit_key.reveal().hex())
    log, out = tmp_path / "audit.jsonl", tmp_path / "released.csv"
    code, _, err = run_cli(
        "anonymize", DATA / "users_small.csv", "-o", out, "--drop", "email", "--audit-log", log
    )
    assert code == 0, err
    [entry] = list(iter_entries(log))
    assert entry["outputs"] == [{"name": "released.csv", "sha256": _digest(out), "bytes": out.stat().st_size}]
