"""Long steps show a rich bar on a terminal, and nothing on a pipe (issue 12, item 8)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from rich.console import Console

from privdl import progress


def _terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=120), buffer


def test_a_step_inside_reporting_is_drawn_on_a_terminal() -> None:
    console, buffer = _terminal()
    with progress.reporting(console=console, delay=0), progress.step("encrypting 3 columns", total=10) as bar:
        for _ in range(10):
            bar.advance()
    assert "encrypting 3 columns" in buffer.getvalue()


def test_a_step_shorter_than_the_delay_shows_nothing() -> None:
    console, buffer = _terminal()
    with progress.reporting(console=console, delay=30), progress.step("writing out.csv", total=1) as bar:
        bar.advance()
    assert buffer.getvalue() == ""


def test_nothing_is_drawn_outside_reporting_or_on_a_pipe() -> None:
    with progress.step("scoring", total=2) as bar:  # no reporter: a no-op handle
        bar.advance(2)
    buffer = io.StringIO()
    pipe = Console(file=buffer)  # not a terminal
    with progress.reporting(console=pipe, delay=0), progress.step("scoring", total=2) as bar:
        bar.advance(2)
    assert buffer.getvalue() == ""


def test_anonymizing_shows_its_steps_by_name(users, key) -> None:
    from privdl import Anonymizer, Policy

    console, buffer = _terminal()
    policy = Policy(identifiers=["email"], quasi_identifiers=["age", "sex"], drop=["full_name", "phone"], k=3)
    with progress.reporting(console=console, delay=0):
        Anonymizer(policy, key=key).fit_transform(users)
    text = buffer.getvalue()
    assert "pseudonymizing identifiers" in text
    assert "partitioning on 2 quasi-identifiers" in text
    assert "measuring the released table's risk" in text
    for value in users["email"].head(20):
        assert value not in text  # step names, never values


def test_writing_a_table_advances_by_rows(users, tmp_path) -> None:
    from privdl.io import read_table, write_table

    console, buffer = _terminal()
    with progress.reporting(console=console, delay=0):
        write_table(users, tmp_path / "out.csv")
    assert "writing out.csv" in buffer.getvalue()
    assert read_table(tmp_path / "out.csv").shape == users.shape  # chunked writing keeps one header


def test_encrypting_and_decrypting_show_their_steps() -> None:
    pytest.importorskip("tenseal")
    import numpy as np

    from privdl import HEKeys

    keys = HEKeys.generate()
    console, buffer = _terminal()
    matrix = np.arange(40, dtype=float).reshape(20, 2)
    with progress.reporting(console=console, delay=0):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            header = keys.encrypt_to_file(matrix, Path(tmp) / "x.he", columns=["a", "b"])
    assert header.rows == 20
    assert "encrypting 2 columns" in buffer.getvalue()


def test_the_cli_on_a_pipe_prints_no_bar(users_csv, tmp_path, key_hex) -> None:
    env = {**os.environ, "K": "hex:" + key_hex}
    proc = subprocess.run(
        [sys.executable, "-m", "privdl", "anonymize", str(users_csv), "-o", str(tmp_path / "o.csv"),
         "--id", "email", "--qi", "age", "--qi", "sex", "-k", "3", "--key-env", "K"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stderr  # no terminal control codes in a log
    assert "pseudonymizing" not in proc.stderr
