"""`privdl anonymize --engine spark`: Spark reads part files, writes a folder atomically."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("pyspark")

DATA = Path(__file__).resolve().parents[1] / "data"
QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]


def _args(k: int = 5) -> list[str]:
    args = ["--engine", "spark", "--sensitive", "salary-class", "-k", str(k)]
    for c in QIS:
        args += ["--qi", c]
        if c != "age":
            args += ["--hierarchy", f"{c}={DATA / f'adult_hierarchy_{c}.csv'}"]
    return args


def test_cli_reads_a_folder_of_parts_and_writes_a_parquet_folder_atomically(
    spark, run_cli, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", secrets.token_hex(32))
    frame = pd.read_csv(DATA / "adult_2000.csv", sep=";")
    parts = tmp_path / "export"
    parts.mkdir()
    frame.iloc[:1000].to_csv(parts / "part-0.csv", sep=";", index=False)
    frame.iloc[1000:].to_csv(parts / "part-1.csv", sep=";", index=False)
    before = sorted((p.name, p.read_bytes()) for p in parts.iterdir())
    out = tmp_path / "released.parquet"
    log = tmp_path / "audit.jsonl"
    report = tmp_path / "report.json"
    code, stdout, err = run_cli("anonymize", parts, "-o", out, *_args(), "--report", report, "--audit-log", log)
    assert code == 0, err
    assert "released 2000 of 2000 rows" in stdout and "achieved k=" in stdout
    released = pd.read_parquet(out)  # a folder of Spark part files
    assert len(released) == 2000 and list(released.columns) == list(frame.columns)
    assert any(p.name.startswith("part-") for p in out.iterdir())
    facts = json.loads(report.read_text())
    assert facts["after"]["k"] >= 5 and facts["algorithm_info"]["engine"] == "spark"
    # the manifest names the written release by its digest (the folder's, as the entry does)
    assert facts["manifest"] is not None and facts["released_columns"] == list(frame.columns)
    from privdl.anonymize.metrics import measure

    assert measure(released, quasi_identifiers=QIS).k == facts["after"]["k"]
    entries = [json.loads(line)["entry"] for line in log.read_text().splitlines()]
    assert [e["event"] for e in entries] == ["anonymize"] and entries[0]["outcome"] == "ok"
    assert entries[0]["outputs"][0]["kind"] == "dir" and entries[0]["outputs"][0]["name"] == "released.parquet"
    assert entries[0]["params"]["manifest_sha256"]
    assert run_cli("audit", "verify", log)[0] == 0
    assert sorted((p.name, p.read_bytes()) for p in parts.iterdir()) == before  # input unchanged
    # an existing output folder is never mixed with a new release
    code, _, err = run_cli("anonymize", parts, "-o", out, *_args())
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1
    # a policy that cannot be met: exit 1, no output, no staged folder, one refused entry
    out2 = tmp_path / "refused.csv"
    code, _, err = run_cli("anonymize", str(parts / "*.csv"), "-o", out2, *_args(5000), "--audit-log", log)
    assert code == 1 and "k=5000" in err, err
    assert not out2.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".privdl-stage")]
    assert json.loads(log.read_text().splitlines()[-1])["entry"]["outcome"] == "refused"
    # a ragged CSV part: one line, exit 2, no traceback and no record in the message
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "part-0.csv").write_text("sex;age\nMale;39\nFemale;50;SECRETVALUE\n")
    code, _, err = run_cli("anonymize", bad, "-o", tmp_path / "bad-out.parquet", "--engine", "spark",
                           "--qi", "age", "-k", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "SECRETVALUE" not in err and "Traceback" not in err
    assert not (tmp_path / "bad-out.parquet").exists()
