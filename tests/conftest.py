"""Shared fixtures: keys, the small user export, and a CLI runner."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from privdl.keys import Secret

DATA = Path(__file__).parent / "data"
ADULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "adult"


# Every key a test makes through these fixtures; tests/zz/test_leaks.py greps the
# session's files for them at the end.
SESSION_KEYS: list[bytes] = []


@pytest.fixture
def key_hex() -> str:
    value = secrets.token_hex(32)
    SESSION_KEYS.append(bytes.fromhex(value))
    return value


@pytest.fixture
def key(key_hex: str) -> Secret:
    return Secret(bytes.fromhex(key_hex), source="test")


@pytest.fixture
def users_csv() -> Path:
    return DATA / "users_small.csv"


@pytest.fixture
def users(users_csv: Path) -> pd.DataFrame:
    from privdl.io import read_table

    return read_table(users_csv)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run the privdl CLI in-process: returns (exit code, stdout, stderr)."""
    from privdl.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
