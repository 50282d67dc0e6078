"""Issue 12, items 2 and 3: bad input is refused (never accepted silently), and the
message names the thing that is wrong (column and spec kind, line, key, ledger)."""

from __future__ import annotations

import base64
import gzip
import os
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from privdl.anonymize.hierarchy import encode_qi
from privdl.anonymize.policy import Policy
from privdl.budget.ledger import BudgetLedger
from privdl.errors import InputError, PolicyError, PrivdlError
from privdl.io import read_table
from privdl.keys import Secret

# -- hierarchy specs ---------------------------------------------------------------------
BAD_SPECS = [
    ("age", "interval:abc", "interval"),
    ("age", "interval:0", "interval"),
    ("age", "interval:-5", "interval"),
    ("age", "interval:nan", "interval"),
    ("age", "interval:inf", "interval"),
    ("zip", "prefix:x", "prefix"),
    ("zip", "date:month", "date"),
    ("zip", "flat:1", "flat"),
]


def _policy(column: str, spec: str) -> Policy:
    return Policy(quasi_identifiers=["zip", "age"], sensitive=["disease"], k=2, hierarchies={column: spec})


@pytest.mark.parametrize(("column", "spec", "kind"), BAD_SPECS)
def test_malformed_hierarchy_spec_is_refused_by_the_policy(column: str, spec: str, kind: str) -> None:
    with pytest.raises(PolicyError) as info:
        _policy(column, spec)
    message = str(info.value)
    assert f"column {column!r}" in message and kind in message
    assert "\n" not in message


@pytest.mark.parametrize("numeric_ranges", [True, False])
@pytest.mark.parametrize("spec", ["interval:abc", "interval:0", "interval:-5"])
def test_malformed_interval_spec_is_refused_when_encoding(spec: str, numeric_ranges: bool) -> None:
    # Mondrian (numeric_ranges=True) used to ignore the width altogether.
    with pytest.raises(PolicyError, match=r"column 'age'.*interval"):
        encode_qi(pd.Series([30, 31, 32]), spec, column="age", numeric_ranges=numeric_ranges)


@pytest.mark.parametrize("spec", ["interval", "interval:auto", "interval:10", "interval: 2.5", " prefix "])
def test_wellformed_hierarchy_specs_are_accepted(spec: str) -> None:
    column = "zip" if "prefix" in spec else "age"
    assert _policy(column, spec).hierarchies[column] == spec


def test_a_hierarchy_file_whose_name_starts_with_interval_is_read_as_a_file(tmp_path: Path) -> None:
    (tmp_path / "intervals.csv").write_text("a;ab;*\nb;ab;*\nc;c*;*\n", encoding="utf-8")
    enc = encode_qi(pd.Series(["a", "b", "c"]), "intervals.csv", column="grade", base_dir=tmp_path)
    assert enc.kind == "taxonomy" and enc.taxonomy is not None and enc.taxonomy.height == 2


@pytest.mark.parametrize("spec", ["interval:abc", "interval:0", "prefix:x"])
def test_cli_malformed_hierarchy_exits_2_with_one_line(run_cli, tmp_path: Path, spec: str) -> None:
    src = tmp_path / "t.csv"
    src.write_text("zip,age,disease\n12345,30,flu\n12346,31,cold\n12347,32,flu\n", encoding="utf-8")
    before = src.read_bytes()
    out = tmp_path / "o.csv"
    column = "zip" if spec.startswith("prefix") else "age"
    code, _, stderr = run_cli(
        "anonymize", src, "-o", out, "--qi", "zip", "--qi", "age", "--sensitive", "disease", "-k", "2",
        "--hierarchy", f"{column}={spec}",
    )  # fmt: skip
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"column {column!r}" in lines[0] and spec.partition(":")[0] in lines[0]
    assert "Traceback" not in stderr and "12345" not in stderr
    assert not out.exists() and src.read_bytes() == before


# -- base64 keys ----------------------------------------------------------------------------
KEY = bytes(range(1, 33))


def _key_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "key.txt"
    path.write_text(text + "\n", encoding="ascii")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "body",
    [
        base64.urlsafe_b64encode(KEY).decode()[:20] + "*!" + base64.urlsafe_b64encode(KEY).decode()[20:],
        base64.b64encode(KEY).decode()[:10] + "-@#" + base64.b64encode(KEY).decode()[10:],
        "abc-def!!!!",  # used to decode (junk skipped) to a few bytes: "7 bytes"
        base64.b64encode(KEY).decode() + " junk",
    ],
)
def test_base64_key_with_junk_is_refused_as_not_valid_base64(tmp_path: Path, body: str) -> None:
    with pytest.raises(InputError) as info:
        Secret.from_file(_key_file(tmp_path, "base64:" + body))
    message = str(info.value)
    assert "not valid base64" in message and "key.txt" in message
    assert body not in message and "bytes" not in message


def test_base64_key_with_junk_in_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    body = base64.urlsafe_b64encode(KEY).decode().rstrip("=")
    monkeypatch.setenv("PRIVDL_TEST_KEY", "base64:" + body[:5] + "$" + body[5:])
    with pytest.raises(InputError, match="env:PRIVDL_TEST_KEY is not valid base64"):
        Secret.from_env("PRIVDL_TEST_KEY")


@pytest.mark.parametrize(
    "text",
    [
        "base64:" + base64.b64encode(KEY).decode(),
        "base64:" + base64.b64encode(KEY).decode().rstrip("="),
        "base64:" + base64.urlsafe_b64encode(KEY).decode(),
        "base64:" + base64.urlsafe_b64encode(KEY).decode().rstrip("="),
    ],
)
def test_valid_base64_keys_still_decode_to_the_same_key(tmp_path: Path, text: str) -> None:
    assert Secret.from_file(_key_file(tmp_path, text)).reveal() == KEY


# -- Latin-1 CSV ----------------------------------------------------------------------------
def _latin1(path: Path, rows: list[str]) -> Path:
    data = ("\n".join(rows) + "\n").encode("latin-1")
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_latin1_csv_names_the_first_bad_data_line(tmp_path: Path, name: str) -> None:
    path = _latin1(tmp_path / name, ["name,city", "A,Berlin", "B,M\u00fcnchen", "C,K\u00f6ln"])
    with pytest.raises(InputError) as info:
        read_table(path)
    message = str(info.value)
    assert "line 3 " in message and "UTF-8" in message and "header" not in message
    assert "nchen" not in message and "\n" not in message


def test_latin1_bytes_past_the_first_block_name_their_line(tmp_path: Path) -> None:
    rows = ["name,city"] + [f"A{i},Berlin" for i in range(20000)] + ["B,M\u00fcnchen"]
    with pytest.raises(InputError, match=r"line 20002 is not valid UTF-8"):
        read_table(_latin1(tmp_path / "big.csv", rows))


def test_latin1_header_is_named_as_line_1(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"line 1 \(the header row\) is not valid UTF-8"):
        read_table(_latin1(tmp_path / "h.csv", ["n\u00e4me,city", "A,Berlin"]))


def test_cli_latin1_csv_exits_2_naming_the_line(run_cli, tmp_path: Path) -> None:
    src = _latin1(tmp_path / "t.csv", ["zip,age", "12345,30", "12346,31", "M\u00fcnchen,32"])
    code, _, stderr = run_cli("anonymize", src, "-o", tmp_path / "o.csv", "--qi", "zip", "-k", "2")
    assert code == 2 and "line 4 is not valid UTF-8" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "o.csv").exists()


# -- read-only SQLite ledger ------------------------------------------------------------------
def _make_ledger(path: Path) -> None:
    with BudgetLedger(path) as led:
        led.set_budget("adult", epsilon=3.0, delta=1e-5)


def test_readonly_database_error_says_read_only(tmp_path: Path) -> None:
    # The real sqlite error for a read-only ledger, through the real transaction path:
    # the connection is swapped for a read-only one (file modes do not stop root).
    path = tmp_path / "budget.db"
    _make_ledger(path)
    led = BudgetLedger(path)
    store = led._store
    store._conn.close()
    store._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        with pytest.raises(InputError) as info:
            led.set_budget("adult", epsilon=5.0, delta=1e-5)
        assert str(info.value) == f"ledger {path} is read-only"
        assert led.budget("adult") == (3.0, 1e-5)
    finally:
        led.close()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file modes")
def test_ledger_on_readonly_location_says_read_only(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "budget.db"
    _make_ledger(path)
    path.chmod(0o444)
    folder.chmod(0o555)
    try:
        with pytest.raises(PrivdlError) as info, BudgetLedger(path) as led:
            led.set_budget("adult", epsilon=5.0, delta=1e-5)
        assert str(info.value) == f"ledger {path} is read-only"
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
