"""Issue 12 item 7 (concurrent key generation) and item 1's key-folder output paths.

Concurrent ``privdl he keygen`` / ``privdl audit keygen`` into one folder: exactly one
winner, the others exit 1 with one line "keys already exist", and the files left are
one key set. A key folder that is a file, in a missing folder or in a read-only one:
exit 2 with one line naming the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import privdl
from privdl.errors import InputError, SecurityError, UsageError

pytest.importorskip("tenseal")

_ROOT = str(Path(privdl.__file__).resolve().parent.parent)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    env.pop("PRIVDL_DEBUG", None)
    return env


def _start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "privdl", *args],
        cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _run_all(cwd: Path, args: list[str], n: int = 4) -> list[tuple[int, str]]:
    procs = [_start(cwd, *args) for _ in range(n)]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=240)
        out.append((p.returncode, err))
    return out


def _check_one_winner(results: list[tuple[int, str]], *, waited: bool = False) -> None:
    """One exit 0; the others one line "keys already exist": exit 1 for a run that
    waited for the winner (``waited``), 1 or 2 (keys there before it started) else."""
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0 and all(c in ((1,) if waited else (1, 2)) for c in codes[1:]), results
    for rc, err in results:
        if rc != 0:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "keys already exist" in lines[0], err
            assert "Traceback" not in err and "internal error" not in err


def _no_leftovers(parent: Path) -> None:
    hidden = [p.name for p in parent.iterdir() if p.name.startswith(".")]
    assert hidden == [], hidden


@pytest.mark.parametrize("pre_existing", [False, True], ids=["new-folder", "empty-folder"])
def test_concurrent_he_keygen_has_one_winner_and_one_key_set(tmp_path: Path, pre_existing: bool) -> None:
    from privdl.encrypted.keys import PUBLIC_FILE, SECRET_FILE, HEKeys, PublicKeys

    if pre_existing:
        (tmp_path / "same").mkdir()
    for _ in range(2):  # twice: a race lost once must not pass by luck
        for f in (tmp_path / "same").glob("*"):
            f.unlink()
        if not pre_existing and (tmp_path / "same").exists():
            (tmp_path / "same").rmdir()
        results = _run_all(tmp_path, ["he", "keygen", "--out", "same"])
        _check_one_winner(results)
        folder = tmp_path / "same"
        assert sorted(p.name for p in folder.iterdir()) == sorted([PUBLIC_FILE, SECRET_FILE])
        secret = HEKeys.load(folder)
        assert PublicKeys.load(folder).key_id == secret.key_id
        _no_leftovers(tmp_path)


def _blocked_on(lock: Path) -> int:
    """How many processes wait for the flock on ``lock`` (from /proc/locks)."""
    ino = f":{os.stat(lock).st_ino} "
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line and ino in line)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs /proc/locks")
@pytest.mark.parametrize("command", ["he", "audit"])
def test_keygens_that_wait_for_the_winner_exit_1(tmp_path: Path, command: str) -> None:
    """Deterministic: all four wait on the lock, then race; three lose with exit 1."""
    import fcntl

    lock = tmp_path / ".same.privdl-keygen.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    procs = [_start(tmp_path, command, "keygen", "--out", "same") for _ in range(4)]
    try:
        for _ in range(1200):
            if _blocked_on(lock) == 4 or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        assert _blocked_on(lock) == 4
    finally:
        os.close(fd)
    results = []
    for p in procs:
        _, err = p.communicate(timeout=240)
        results.append((p.returncode, err))
    _check_one_winner(results, waited=True)
    _no_leftovers(tmp_path)


def test_concurrent_audit_keygen_has_one_winner(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from privdl.audit.checkpoint import load_public_key, load_signing_key

    for _ in range(2):
        for f in (tmp_path / "ak").glob("*"):
            f.unlink()
        results = _run_all(tmp_path, ["audit", "keygen", "--out", "ak"])
        _check_one_winner(results)
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        sk = load_signing_key(tmp_path / "ak" / "audit-signing.key")
        pk = load_public_key(tmp_path / "ak" / "audit-signing.pub")
        assert sk.public_key().public_bytes(*raw) == pk.public_bytes(*raw)
        _no_leftovers(tmp_path)


def test_api_keys_there_before_the_call_are_bad_usage(tmp_path: Path) -> None:
    """Keys in the folder before the call: exit 2 (a race lost while waiting: exit 1)."""
    from privdl.audit.checkpoint import generate_signing_key
    from privdl.encrypted.keys import HEKeys

    HEKeys.generate_into(tmp_path / "k")
    with pytest.raises(UsageError, match="keys already exist") as info:
        HEKeys.generate_into(tmp_path / "k")
    assert info.value.exit_code == 2
    generate_signing_key(tmp_path / "a")
    with pytest.raises(SecurityError, match="keys already exist") as sinfo:
        generate_signing_key(tmp_path / "a")
    assert sinfo.value.exit_code == 2


def _cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "a-file").write_text("not a folder\n")
    cases = {
        "existing-file": (tmp_path / "a-file", "a-file"),
        "missing-parent": (tmp_path / "missing" / "keys", "missing"),
    }
    return cases


@pytest.mark.parametrize("command", ["he", "audit"])
@pytest.mark.parametrize("case", ["existing-file", "missing-parent", "read-only-parent", "read-only-folder"])
def test_bad_key_folder_exits_2_with_one_line_naming_it(tmp_path: Path, command: str, case: str) -> None:
    if case.startswith("read-only"):
        if os.geteuid() == 0:
            pytest.skip("root writes to read-only folders")
        ro = tmp_path / "ro"
        ro.mkdir()
        if case == "read-only-folder":
            (ro / "keys").mkdir()
            target, named = ro / "keys", "keys"
            os.chmod(ro / "keys", 0o555)
        else:
            target, named = ro / "keys", "ro"
            os.chmod(ro, 0o555)
    else:
        target, named = _cases(tmp_path)[case]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    try:
        proc = _start(tmp_path, command, "keygen", "--out", str(target))
        _, err = proc.communicate(timeout=120)
    finally:
        for p in (tmp_path / "ro" / "keys", tmp_path / "ro"):
            if p.exists():
                os.chmod(p, 0o755)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in err, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing created


@pytest.mark.parametrize("case", ["existing-file", "missing-parent"])
def test_api_bad_key_folder_raises_input_error(tmp_path: Path, case: str) -> None:
    from privdl.audit.checkpoint import generate_signing_key
    from privdl.encrypted.keys import HEKeys

    target, named = _cases(tmp_path)[case]
    with pytest.raises(InputError, match=named):
        HEKeys.generate_into(target)
    with pytest.raises(InputError, match=named):
        generate_signing_key(target)


@pytest.mark.parametrize("which", ["parent", "folder"])
def test_api_read_only_key_folder_raises_input_error(tmp_path: Path, monkeypatch, which: str) -> None:
    """A read-only folder (simulated for root, who may write anyway): InputError naming it."""
    from privdl.audit.checkpoint import generate_signing_key
    from privdl.encrypted.keys import HEKeys

    ro = tmp_path / "ro"
    (ro / "keys").mkdir(parents=True)
    blocked = ro if which == "parent" else ro / "keys"
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == blocked else real_access(p, mode, **kw)
    )
    with pytest.raises(InputError, match=f"cannot write to {blocked}"):
        HEKeys.generate_into(ro / "keys")
    with pytest.raises(InputError, match=f"cannot write to {blocked}"):
        generate_signing_key(ro / "keys")
    assert sorted(p.name for p in ro.rglob("*")) == ["keys"]
