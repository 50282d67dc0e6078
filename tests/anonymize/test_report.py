"""AnonymizationReport: recomputed figures, round trip, rendering, identifier-only runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import privdl
from privdl.anonymize.report import RECITAL_26, AnonymizationReport

DATA = Path(__file__).resolve().parents[1] / "data"
ADULT = DATA / "adult_2000.csv"
QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]
HIER = {c: f"adult_hierarchy_{c}.csv" for c in QIS if c != "age"}


def _frame() -> pd.DataFrame:
    frame = pd.read_csv(ADULT, sep=";")
    frame.insert(0, "email", [f"person{i}@example.org" for i in range(len(frame))])
    return frame


@pytest.fixture
def report(key: privdl.Secret) -> AnonymizationReport:
    policy = privdl.Policy(
        identifiers=["email"],
        quasi_identifiers=QIS,
        sensitive=["salary-class"],
        k=5,
        l=2,
        hierarchies=HIER,
        base_dir=DATA,
    )
    anonymizer = privdl.Anonymizer(policy, key=key)
    anonymizer.fit_transform(_frame())
    return anonymizer.report_


def test_figures_are_recomputed_from_the_released_table(
    report: AnonymizationReport, key: privdl.Secret
) -> None:
    assert report.algorithm == "mondrian" and report.key_id == key.key_id
    assert report.before is not None and report.after is not None
    assert report.before["k"] == 1 and report.after["k"] >= 5
    assert report.after["l_distinct"]["salary-class"] >= 2
    assert report.policy_met == {"k": True, "l": True}
    assert report.after["unique_share"] == 0.0 < report.before["unique_share"]
    loss = report.information_loss
    assert loss is not None and 0 < loss["ncp"] < 1
    assert set(loss["per_column"]) == set(QIS)
    assert report.identifier_columns == {"email": "pseudonymize"}
    assert report.summary()["k"] == report.after["k"]


def test_json_round_trip_and_renderings(
    report: AnonymizationReport, tmp_path: Path, key: privdl.Secret
) -> None:
    assert isinstance(report.to_dict(), dict) and isinstance(report.to_json(), str)
    again = AnonymizationReport.from_json(report.to_json())
    assert again == report
    assert AnonymizationReport.from_json(json.loads(report.to_json())) == report  # a saved file
    assert AnonymizationReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    for ext in ("json", "md", "html"):
        path = report.save(tmp_path / f"r.{ext}")
        text = path.read_text()
        assert "person1@example.org" not in text
        assert key.reveal().hex() not in text
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "Recital 26" in html and "Recital 26" in (tmp_path / "r.md").read_text()
    assert json.loads((tmp_path / "r.json").read_text())["notice"] == RECITAL_26


def test_identifier_only_run_has_no_metrics_but_lists_passthrough(key: privdl.Secret, tmp_path: Path) -> None:
    frame = _frame()[["email", "age", "salary-class"]]
    anonymizer = privdl.Anonymizer(privdl.Policy(identifiers=["email"]), key=key)
    anonymizer.fit_transform(frame)
    report = anonymizer.report_
    assert report.algorithm == "none" and report.after is None
    assert report.information_loss is None
    assert report.passthrough == ["age", "salary-class"]
    assert report.notice == RECITAL_26
    text = report.save(tmp_path / "r.md").read_text()
    assert "passed through unchanged" in text and "Information loss" not in text


def test_cli_anonymize_end_to_end(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    report_path = tmp_path / "report.json"
    args = [
        "anonymize",
        str(ADULT),
        "-o",
        str(out),
        "-k",
        "5",
        "--sensitive",
        "salary-class",
        "--report",
        str(report_path),
    ]
    args += [a for q in QIS for a in ("--qi", q)]
    args += [a for c, f in HIER.items() for a in ("--hierarchy", f"{c}={DATA / f}")]
    code, _, err = run_cli(*args)
    assert code == 0, err
    released = privdl.read_table(out)
    assert len(released) == 2000
    assert released.groupby(QIS).size().min() >= 5
    assert json.loads(report_path.read_text())["after"]["k"] >= 5
    too_big = tmp_path / "never.csv"
    code, _, err = run_cli("anonymize", str(ADULT), "-o", str(too_big), "--qi", "age", "-k", "5000")
    assert code == 1 and "5000" in err and not too_big.exists()


def test_columns_table_lists_every_released_and_dropped_column(users, key):
    """Each input column has one row saying whether it is in the release (dropped ones too)."""
    import privdl

    policy = privdl.Policy(
        identifiers=["user_id", "email", "phone:drop"],
        drop=["ip", "full_name"],
        quasi_identifiers=["age", "zip"],
        hierarchies={"zip": "prefix"},
        k=3,
    )
    anonymizer = privdl.Anonymizer(policy, key=key)
    released = anonymizer.fit_transform(users)
    report = anonymizer.report_
    assert report.released_columns == list(released.columns)
    assert set(report.dropped_columns) == {"ip", "full_name", "phone"}
    rows = {row[0]: row for row in report._column_rows()}
    assert set(rows) == set(users.columns)  # every column, once
    assert all(rows[c][-1] == "released" for c in released.columns)
    assert all(rows[c][-1] == "dropped" for c in ("ip", "full_name", "phone"))
    text = report.to_document(figures=False)
    md = __import__("privdl.render", fromlist=["to_markdown"]).to_markdown(text)
    assert "Dropped, not in the release (3 columns)" in md and "| ip | drop | removed | dropped |" in md
    again = type(report).from_json(report.to_json())
    assert again.released_columns == report.released_columns
