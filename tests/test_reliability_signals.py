"""Issue 12, item 5: crashes and signals (stale temporaries, Ctrl-C, orphaned workers)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

import privdl
from privdl import io

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(io.TEMP_SUFFIX))


def test_temp_names_carry_the_writer_pid(tmp_path):
    with io.atomic_path(tmp_path / "out.csv") as tmp:
        assert io._temp_pid(tmp.name) == os.getpid()


def test_write_table_sweeps_temps_of_dead_writers_only(tmp_path, caplog):
    dead = tmp_path / f".out.csv.{_dead_pid()}-abc123{io.TEMP_SUFFIX}"
    live = tmp_path / f".out.csv.{os.getpid()}-def456{io.TEMP_SUFFIX}"
    dead_folder = tmp_path / f".model.{_dead_pid()}-xyz{io.TEMP_SUFFIX}"
    untagged = tmp_path / f".out.csv.old{io.TEMP_SUFFIX}"  # no PID: left to sweep_temps' age rule
    for p in (dead, live, untagged):
        p.write_text("x", encoding="utf-8")
    dead_folder.mkdir()
    (dead_folder / "w.bin").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="privdl.io"):
        privdl.write_table(pd.DataFrame({"a": [1, 2]}), tmp_path / "other.csv")
    assert _temps(tmp_path) == sorted([live.name, untagged.name])
    assert (tmp_path / "other.csv").exists()
    assert any("removed 2 temporary file(s)" in r.getMessage() for r in caplog.records)


def test_sweep_temps_uses_the_pid_not_the_age(tmp_path):
    dead = tmp_path / f".a.csv.{_dead_pid()}-aa{io.TEMP_SUFFIX}"  # young, but its writer is dead
    live = tmp_path / f".a.csv.{os.getpid()}-bb{io.TEMP_SUFFIX}"  # old, but its writer runs
    for p in (dead, live):
        p.write_text("x", encoding="utf-8")
    old = time.time() - 7200
    os.utime(live, (old, old))
    assert [p.name for p in io.sweep_temps(tmp_path)] == [dead.name]
    assert _temps(tmp_path) == [live.name]


_SLOW_CLI = """
import sys, time
import privdl.io as io
from privdl.cli import main
real = io.read_table
def slow(*args, **kwargs):
    frame = real(*args, **kwargs)
    print("ready", flush=True)
    time.sleep(60)
    return frame
io.read_table = slow
sys.exit(main(sys.argv[1:]))
"""


@linux_only
def test_ctrl_c_says_what_was_interrupted_and_writes_nothing(tmp_path):
    source = tmp_path / "in.csv"
    pd.DataFrame({"name": [f"n{i}" for i in range(50)], "age": range(50)}).to_csv(source, index=False)
    before = source.read_bytes()
    out = tmp_path / "out.csv"
    args = ["anonymize", str(source), "-o", str(out), "--qi", "age", "--drop", "name", "-k", "2"]
    env = {**os.environ, "PRIVDL_DEBUG": "0"}
    # a shell's background job inherits SIGINT ignored (and Python then keeps it ignored):
    # the child gets the default disposition, as a command run from a terminal has
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = err.decode().splitlines()
    assert proc.returncode == 130
    assert len(lines) == 1, lines
    assert "interrupted" in lines[0] and "privdl anonymize" in lines[0] and "no output" in lines[0]
    assert "Traceback" not in err.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    assert source.read_bytes() == before


_HELPER = """
import os, time
def init(tag):
    pass
def task(x):
    os.write(1, f"{os.getpid()}\\n".encode())  # one write: two workers never interleave
    time.sleep(120)
    return x
"""

_PARENT = """
import sys
from privdl.encrypted.pool import map_ordered
import poolhelper
secret = sys.argv[1] == "fork"
for _ in map_ordered(poolhelper.task, range(2), initializer=poolhelper.init, initargs=("t",),
                     workers=2, secret=secret, preload=()):
    pass
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            state = next((line for line in fh if line.startswith("State:")), "")
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "Z" in state.split(":", 1)[1][:3]


@linux_only
@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_workers_exit_when_their_parent_is_killed(tmp_path, start):
    (tmp_path / "poolhelper.py").write_text(textwrap.dedent(_HELPER), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, start], stdout=subprocess.PIPE, env=env, cwd=tmp_path
    )
    assert parent.stdout is not None
    workers = [int(parent.stdout.readline()) for _ in range(2)]
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and not all(_gone(pid) for pid in workers):
        time.sleep(0.1)
    alive = [pid for pid in workers if not _gone(pid)]
    for pid in alive:  # do not leave them behind on failure
        os.kill(pid, signal.SIGKILL)
    assert not alive
