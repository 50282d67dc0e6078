"""Issue 12 item 6: a full disk ends in one line, exit 2, and leaves nothing partial.

Each test writes into a 2 MB tmpfs (skipped where mounting is not permitted), filled
up so that the write in question cannot complete.
"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from privdl.audit.log import AuditLog
from privdl.audit.verify import verify_audit_log
from privdl.cli import app, main
from privdl.errors import InputError
from privdl.io import DiskFullError, StagedOutputs, write_bytes, write_table
from privdl.keys import Secret


@pytest.fixture
def full_dir(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted afterwards."""
    mount = tmp_path / "fs"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot mount a tmpfs here")
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill ``folder``'s file system up to ``leave`` free bytes."""
    filler = folder / "filler"
    st = os.statvfs(folder)
    size = max(0, st.f_bavail * st.f_frsize - leave)
    try:
        with open(filler, "wb") as fh:
            fh.write(b"\0" * size)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "filler")


def _frame(rows: int = 200_000) -> pd.DataFrame:
    return pd.DataFrame({"id": range(rows), "text": ["some text of a row"] * rows})


def test_write_bytes_on_a_full_disk_names_the_file_and_leaves_no_temp(full_dir: Path) -> None:
    _fill(full_dir)
    target = full_dir / "out.bin"
    with pytest.raises(DiskFullError) as info:
        write_bytes(target, b"x" * 1_000_000)
    assert isinstance(info.value, InputError)
    assert str(info.value) == f"no space left on device while writing {target}"
    assert _left(full_dir) == []


def test_write_table_overflowing_the_disk_leaves_nothing(full_dir: Path) -> None:
    target = full_dir / "out.csv"
    with pytest.raises(DiskFullError, match=r"no space left on device while writing .*out\.csv$"):
        write_table(_frame(), target)  # about 5 MB into 2 MB
    assert _left(full_dir) == []


def test_a_staged_output_is_named_by_its_target(full_dir: Path) -> None:
    staging = StagedOutputs()
    target = full_dir / "released.csv"
    with pytest.raises(DiskFullError) as info:
        write_table(_frame(), staging.file(target))
    staging.discard()
    assert str(info.value) == f"no space left on device while writing {target}"
    assert _left(full_dir) == []


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def test_cli_he_keygen_on_a_full_disk(full_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tenseal")
    _fill(full_dir)
    keys = full_dir / "keys"
    code, err = _run(["he", "keygen", "--out", str(keys), "--security", "insecure-100"], capsys)
    assert code == 2
    assert err.splitlines() == [f"privdl: error: no space left on device while writing {keys / 'secret.he'}"]
    assert _left(full_dir) == []


def test_cli_budget_set_leaves_no_ledger_file(full_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(full_dir)
    ledger = full_dir / "ledger.db"
    code, err = _run(["budget", "set", str(ledger), "--dataset", "d", "--epsilon", "1", "--delta", "1e-6"], capsys)
    assert code == 2
    assert err.splitlines() == [f"privdl: error: no space left on device while writing {ledger}"]
    assert _left(full_dir) == []


def test_cli_never_calls_a_raw_enospc_an_internal_error(capsys: pytest.CaptureFixture[str]) -> None:
    name = f"diskfull-{uuid.uuid4().hex[:6]}"

    def boom() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/some/out.csv")

    app.command(name)(boom)
    try:
        code, err = _run([name], capsys)
    finally:
        app.registered_commands.pop()
    assert code == 2
    assert err.splitlines() == ["privdl: error: no space left on device while writing /some/out.csv"]


def _log_with_entries(folder: Path) -> tuple[AuditLog, Secret, bytes]:
    key = Secret.generate()
    log = AuditLog(folder / "audit.jsonl", key=key, actor="t")
    for i in range(3):
        log.append("score", params={"i": i})
    return log, key, log.path.read_bytes()


def test_audit_append_on_a_full_disk_leaves_the_log_as_it_was(full_dir: Path) -> None:
    log, key, before = _log_with_entries(full_dir)
    state = log.state_path.read_bytes()
    _fill(full_dir)
    with pytest.raises(DiskFullError) as info:
        log.append("score", params={"blob": "x" * 100_000})
    assert str(info.value) == f"no space left on device while writing {log.path}"
    assert log.path.read_bytes() == before
    assert log.state_path.read_bytes() == state
    (full_dir / "filler").unlink()
    verify_audit_log(log.path, key=key)
    log.append("score", params={"i": 3})  # the chain goes on where it was
    verify_audit_log(log.path, key=key)


def test_audit_append_truncates_a_partial_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log, key, before = _log_with_entries(tmp_path)
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if len(data) > 200:
            real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(DiskFullError, match=r"while writing .*audit\.jsonl$"):
        log.append("score", params={"blob": "x" * 1000})
    monkeypatch.setattr(os, "write", real_write)
    assert log.path.read_bytes() == before
    verify_audit_log(log.path, key=key)
    log.append("score", params={"i": 3})
    verify_audit_log(log.path, key=key)


def test_trainer_save_on_a_full_disk_is_one_line_and_leaves_no_folder(full_dir: Path) -> None:
    """A model bigger than the disk: DiskFullError naming the folder's file, no folder, no temp."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("opacus")
    from privdl.train.trainer import PrivateTrainer

    rng = torch.Generator().manual_seed(0)
    X = torch.randn(64, 800, generator=rng)
    y = (X[:, 0] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(800, 800), torch.nn.ReLU(), torch.nn.Linear(800, 2))
    trainer = PrivateTrainer(model, epsilon=8.0, epochs=1, batch_size=32, seed=0, progress=False).fit((X, y))
    with pytest.raises(DiskFullError, match=r"^no space left on device while writing .*model"):
        trainer.save(full_dir / "model")
    assert _left(full_dir) == []


# --------------------------------------------------------------------------------------
# every command that writes, on a full disk (inputs elsewhere, outputs on the tmpfs)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> object:
    pytest.importorskip("tenseal")
    pytest.importorskip("sklearn")
    from tests.conftest import SESSION_KEYS
    from tests.test_corpus import build_workspace

    ws = build_workspace(tmp_path_factory.mktemp("diskfull"))
    SESSION_KEYS.extend(bytes.fromhex(k) for k in (ws.key_hex, ws.audit_key_hex))
    return ws


def _commands(i: Path, full: Path) -> dict[str, list[object]]:
    users = i / "users.csv"
    return {
        "anonymize": ["anonymize", users, "-o", full / "released.csv", "--id", "email", "--qi", "age",
                      "--qi", "sex", "-k", "3", "--key-file", i / "key.hex", "--report", full / "report.html"],
        "he encrypt": ["he", "encrypt", users, "--keys", i / "keys", "--columns", "age,plays_week1",
                       "-o", full / "users.he"],
        "he score": ["he", "score", i / "users.he", "--model", i / "model.json", "--public", i / "keys",
                     "-o", full / "scores.he"],
        "he decrypt": ["he", "decrypt", i / "scores.he", "--keys", i / "keys", "-o", full / "scores.csv"],
        "audit keygen": ["audit", "keygen", "--out", full / "akeys"],
        "audit checkpoint": ["audit", "checkpoint", i / "audit.jsonl", "--signing-key", i / "akeys" / "audit-signing.key",
                             "-o", full / "checkpoint.txt"],
        "audit records": ["audit", "records", i / "audit.jsonl", "-o", full / "records.csv"],
        "budget report": ["budget", "report", i / "budget.db", "--dataset", "ds", "-o", full / "budget.html"],
    }  # fmt: skip


@pytest.mark.parametrize(
    "command",
    ["anonymize", "he encrypt", "he score", "he decrypt", "audit keygen", "audit checkpoint", "audit records",
     "budget report"],
)  # fmt: skip
def test_cli_command_on_a_full_disk_is_one_line_exit_2_nothing_left(
    workspace: object, full_dir: Path, command: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    ws = workspace
    for name, value in ws.env().items():  # type: ignore[attr-defined]
        monkeypatch.setenv(name, value)
    args = [str(a) for a in _commands(ws.inp, full_dir)[command]]  # type: ignore[attr-defined]
    _fill(full_dir)
    code, err = _run(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("privdl: error: no space left on device while writing "), err
    assert str(full_dir) in lines[0]
    assert _left(full_dir) == []


def test_cli_risk_audit_log_on_a_full_disk_leaves_the_log_as_it_was(
    workspace: object, full_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    ws = workspace
    for name, value in ws.env().items():  # type: ignore[attr-defined]
        monkeypatch.setenv(name, value)
    log = full_dir / "audit.jsonl"
    users = str(ws.inp / "users.csv")  # type: ignore[attr-defined]
    assert _run(["risk", users, "--qi", "age", "--audit-log", str(log)], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in full_dir.iterdir()}
    _fill(full_dir)
    code, err = _run(["risk", users, "--qi", "age", "--qi", "zip", "--qi", "city", "--audit-log", str(log)], capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    # the log or its state file, whichever write ran out of space
    assert len(lines) == 1 and lines[0].startswith(f"privdl: error: no space left on device while writing {log}"), err
    (full_dir / "filler").unlink()
    assert {p.name: p.read_bytes() for p in full_dir.iterdir()} == before
    verify_audit_log(log, key=Secret(bytes.fromhex(ws.audit_key_hex), source="test"))  # type: ignore[attr-defined]
