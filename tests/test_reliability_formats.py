"""Issue 12 item 1 (input side): malformed inputs end in one exit-2 line, never an internal error.

Each case runs through the CLI (`privdl anonymize`, `privdl risk`) and the API
(`read_table`, `Anonymizer.fit_transform`, `Policy.from_toml`): a binary or gzip file
named `.jsonl`, a truncated `.csv.gz`, list/struct/object quasi-identifiers, and policy
files whose roles or hierarchies are the wrong type.
"""

from __future__ import annotations

import gzip
import json
import os

import pandas as pd
import pytest

from privdl.anonymize.anonymizer import Anonymizer
from privdl.anonymize.policy import Policy
from privdl.anonymize.risk import assess_risk
from privdl.errors import InputError, PolicyError
from privdl.io import read_table


@pytest.fixture
def env_key(monkeypatch, key_hex):
    monkeypatch.setenv("PRIVDL_KEY", key_hex)
    return key_hex


def _one_line_error(code, stdout, stderr, *needles):
    assert code == 2, (code, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _anonymize(run_cli, src, tmp_path, *extra):
    out = tmp_path / "out.csv"
    result = run_cli("anonymize", src, "-o", out, "--key-env", "PRIVDL_KEY", *extra)
    assert not out.exists()
    return result


# ----------------------------------------------------------------------------- files
def _binary_jsonl(tmp_path):
    path = tmp_path / "random.jsonl"
    path.write_bytes(b"\xff\xfe\x00\x81" + os.urandom(400))
    return path


def _gzip_jsonl(tmp_path):
    path = tmp_path / "renamed.jsonl"
    path.write_bytes(gzip.compress(b'{"zip": "1", "age": 3}\n' * 40))
    return path


def _truncated_csv_gz(tmp_path):
    path = tmp_path / "cut.csv.gz"
    rows = "".join(f"{i % 7},{i % 5}\n" for i in range(5000))
    data = gzip.compress(("zip,age\n" + rows).encode())
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_jsonl_gz(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(b'{"zip": "1", "age": 3}\n' * 5000)
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_FILES = {
    "binary-jsonl": (_binary_jsonl, "line 1"),
    "gzip-named-jsonl": (_gzip_jsonl, "line 1"),
    "truncated-csv-gz": (_truncated_csv_gz, "truncated or corrupt"),
    "truncated-jsonl-gz": (_truncated_jsonl_gz, "truncated or corrupt"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_api(case, tmp_path):
    make, needle = BAD_FILES[case]
    path = make(tmp_path)
    before = path.read_bytes()
    with pytest.raises(InputError, match=needle) as info:
        read_table(path)
    assert path.name in str(info.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_cli(case, tmp_path, run_cli, env_key):
    make, needle = BAD_FILES[case]
    path = make(tmp_path)
    before = path.read_bytes()
    _one_line_error(*_anonymize(run_cli, path, tmp_path, "--qi", "zip", "-k", "2"), path.name, needle)
    _one_line_error(*run_cli("risk", path, "--qi", "zip"), path.name, needle)
    assert path.read_bytes() == before


# ----------------------------------------------------------------------------- non-scalar QIs
def _parquet_lists(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "nested.parquet"
    table = pa.table(
        {
            "zip": [[1, 2], [3]] * 10,
            "st": [{"a": 1}, {"a": 2}] * 10,
            "age": list(range(20)),
        }
    )
    pq.write_table(table, path)
    return path


def _jsonl_with(tmp_path, value):
    path = tmp_path / "rows.jsonl"
    rows = [{"zip": value if i == 3 else str(i % 2), "age": i} for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


NESTED = {
    "parquet-list": (_parquet_lists, "zip"),
    "parquet-struct": (_parquet_lists, "st"),
    "jsonl-object": (lambda p: _jsonl_with(p, {"secret": "v"}), "zip"),
    "jsonl-list": (lambda p: _jsonl_with(p, ["secret"]), "zip"),
}


@pytest.mark.parametrize("case", sorted(NESTED))
def test_nested_qi_cli_refused_by_anonymize_measured_by_risk(case, tmp_path, run_cli, env_key):
    make, column = NESTED[case]
    path = make(tmp_path)
    code, out, err = _anonymize(run_cli, path, tmp_path, "--qi", column, "-k", "2")
    _one_line_error(code, out, err, f"column {column!r} holds lists/objects", "scalar values")
    assert "secret" not in err
    # risk groups such values on their text (metrics.class_ids): measured, not refused
    code, out, err = run_cli("risk", path, "--qi", column)
    assert code == 0, err


@pytest.mark.parametrize("value", [[1], {"a": 1}, (1, 2)])
def test_nested_qi_api(value, key):
    frame = pd.DataFrame({"zip": [value, value, "x", "x"], "age": [1, 2, 3, 4]})
    before = frame.copy()
    anonymizer = Anonymizer(Policy(quasi_identifiers=["zip"], k=2), key=key)
    with pytest.raises(InputError, match="column 'zip' holds lists/objects"):
        anonymizer.fit_transform(frame)
    assert frame.equals(before)
    report = assess_risk(frame, quasi_identifiers=["zip"])  # measured, as the CLI does
    assert report is not None


def test_scalar_object_qi_still_anonymized(key):
    frame = pd.DataFrame({"zip": ["a", "a", "b", "b", None, None], "age": range(6)})
    released = Anonymizer(Policy(quasi_identifiers=["zip"], k=2), key=key).fit_transform(frame)
    assert len(released) == 6


# ----------------------------------------------------------------------------- policy files
BAD_POLICIES = {
    "qi-integer": ("quasi_identifiers = 5\n", "quasi_identifiers"),
    "qi-string": ('quasi_identifiers = "zip"\nk = 2\n', "quasi_identifiers"),
    "identifiers-integer": ("identifiers = 5\n", "identifiers"),
    "identifiers-string": ('identifiers = "email"\n', "identifiers"),
    "sensitive-table": ("sensitive = {a = 1}\n", "sensitive"),
    "drop-float": ("drop = 3.5\n", "drop"),
    "hierarchies-number": ('quasi_identifiers = ["zip"]\nk = 2\nhierarchies = 5\n', "hierarchies"),
    "hierarchies-string": ('quasi_identifiers = ["zip"]\nk = 2\nhierarchies = "prefix"\n', "hierarchies"),
    "hierarchy-entry-number": ('quasi_identifiers = ["zip"]\nk = 2\n[hierarchies]\nzip = 7\n', "'zip'"),
    "hierarchy-entry-table": ('quasi_identifiers = ["zip"]\nk = 2\n[hierarchies.zip]\na = 1\n', "'zip'"),
}


@pytest.mark.parametrize("case", sorted(BAD_POLICIES))
def test_bad_policy_api(case, tmp_path):
    body, key_name = BAD_POLICIES[case]
    path = tmp_path / "policy.toml"
    path.write_text(body)
    with pytest.raises(PolicyError) as info:
        Policy.from_toml(path)
    assert str(path) in str(info.value) and key_name in str(info.value)


@pytest.mark.parametrize("case", sorted(BAD_POLICIES))
def test_bad_policy_cli(case, tmp_path, run_cli, env_key, users_csv):
    body, key_name = BAD_POLICIES[case]
    path = tmp_path / "policy.toml"
    path.write_text(body)
    code, out, err = _anonymize(run_cli, users_csv, tmp_path, "--policy", path)
    _one_line_error(code, out, err, "policy.toml", key_name)


@pytest.mark.parametrize("value", [5, 2.5, object()])
def test_policy_api_roles_of_the_wrong_type(value):
    with pytest.raises(PolicyError, match="quasi_identifiers must be a list"):
        Policy(quasi_identifiers=value, k=2)
    with pytest.raises(PolicyError, match="identifiers must be a list"):
        Policy(identifiers=value)
    with pytest.raises(PolicyError, match="hierarchies must be a table"):
        Policy(quasi_identifiers=["zip"], k=2, hierarchies=value)


def test_api_string_role_still_means_one_column():
    assert Policy(quasi_identifiers="zip", k=2).quasi_identifiers == ("zip",)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage\x81", os.urandom(300) + b"\xff"])
def test_garbage_hierarchy_file(content, tmp_path, run_cli, env_key, users_csv, key):
    (tmp_path / "h.csv").write_bytes(content)
    path = tmp_path / "policy.toml"
    path.write_text('quasi_identifiers = ["age"]\nk = 2\n[hierarchies]\nage = "h.csv"\n')
    frame = pd.DataFrame({"age": ["1", "1", "2", "2"]})
    with pytest.raises(PolicyError, match="hierarchy file for column 'age' is not valid UTF-8"):
        Anonymizer(Policy.from_toml(path), key=key).fit_transform(frame)
    frame.to_csv(tmp_path / "in.csv", index=False)
    code, out, err = _anonymize(run_cli, tmp_path / "in.csv", tmp_path, "--policy", path)
    _one_line_error(code, out, err, "h.csv", "'age'")
