"""assess_risk and the `privdl risk` command."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from privdl.anonymize.risk import RiskReport, assess_risk
from privdl.errors import InputError, RiskExceededError

DATA = Path(__file__).resolve().parents[1] / "data"
ADULT = DATA / "adult_2000.csv"
QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]


def _frame() -> pd.DataFrame:
    return pd.read_csv(ADULT, sep=";")


def test_assess_risk_on_adult_matches_a_plain_groupby() -> None:
    frame = _frame()
    report = assess_risk(frame, quasi_identifiers=QIS, sensitive=["salary-class"])
    sizes = frame.groupby(QIS).size()
    assert report.classes == len(sizes) and report.k == sizes.min()
    assert report.unique_share == pytest.approx((sizes == 1).sum() / len(frame))
    assert report.prosecutor_avg == pytest.approx(len(sizes) / len(frame))
    assert report.l_distinct["salary-class"] == 1
    # to_dict -> dict, to_json -> str; from_json reads the string or a saved file's parsed dict
    assert isinstance(report.to_dict(), dict) and isinstance(report.to_json(), str)
    assert RiskReport.from_json(report.to_json()) == report
    assert RiskReport.from_json(json.loads(report.to_json())) == report
    assert RiskReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_check_raises_over_the_limit_without_values() -> None:
    report = assess_risk(_frame(), quasi_identifiers=QIS, source="adult.csv")
    report.check(max_risk=1.0)
    with pytest.raises(RiskExceededError) as info:
        report.check(max_risk=0.2)
    assert "adult.csv" in str(info.value) and "Bachelors" not in str(info.value)
    assert info.value.exit_code == 1


def test_hierarchies_make_text_numbers_ordered() -> None:
    frame = pd.DataFrame({"g": ["a"] * 3 + ["b"] * 3, "v": ["9", "10", "11", "9", "9", "9"]})
    ordered = assess_risk(frame, quasi_identifiers=["g"], sensitive=["v"], hierarchies={"v": "interval"})
    plain = assess_risk(frame, quasi_identifiers=["g"], sensitive=["v"])
    # ordered EMD over 9 < 10 < 11 differs from the equal-distance one
    assert ordered.t["v"] != pytest.approx(plain.t["v"])


def test_bad_columns_are_input_errors() -> None:
    with pytest.raises(InputError):
        assess_risk(_frame(), quasi_identifiers=[])
    with pytest.raises(InputError, match="nope"):
        assess_risk(_frame(), quasi_identifiers=["nope"])


def test_cli_prints_table_json_and_gates(run_cli, tmp_path: Path) -> None:
    args = ["risk", str(ADULT)] + [a for q in QIS for a in ("--qi", q)]
    code, out, err = run_cli(*args, "--sensitive", "salary-class")
    assert code == 0 and "prosecutor risk, max" in out
    code, out, _ = run_cli(*args, "--json")
    assert code == 0 and json.loads(out)["k"] == 1
    code, _, err = run_cli(*args, "--max-risk", "0.5")
    assert code == 1 and "exceeds the limit" in err
    code, _, _ = run_cli("risk", str(ADULT), "--qi", "salary-class", "--max-risk", "0.5")
    assert code == 0
    code, _, err = run_cli("risk", str(ADULT), "--qi", "nope")
    assert code == 2 and "nope" in err
    target = tmp_path / "risk.html"
    code, _, _ = run_cli(*args, "--report", str(target))
    assert code == 0 and "Re-identification risk" in target.read_text()
