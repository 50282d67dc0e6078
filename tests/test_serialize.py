"""The serialization contract, implemented once in privdl.serialize.

Every report and value: ``to_dict()`` -> dict, ``to_json()`` -> str (sorted keys, its
layout pinned: saved files are diffed and hashed), ``from_dict()``, ``from_json()`` of
the string, its bytes or the parsed dict; bad input is an InputError naming the kind.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from privdl.anonymize.metrics import TableMetrics, measure
from privdl.anonymize.report import AnonymizationReport
from privdl.anonymize.risk import RiskReport, assess_risk
from privdl.audit.verify import VerifyResult
from privdl.budget.ledger import BudgetLedger, BudgetStatus, RunRecord
from privdl.budget.report import PrivacyReport
from privdl.encrypted.approximation import ActivationRange, ApproximationReport
from privdl.errors import FormatError, InputError
from privdl.manifest import RunManifest
from privdl.serialize import JSONSerializable, json_mapping, json_text

FRAME = pd.DataFrame({"age": [30, 30, 41, 41, 52], "zip": ["1", "1", "2", "2", "3"], "dx": list("abaab")})


@dataclass(frozen=True)
class Point(JSONSerializable):
    _json_kind = "point"

    x: int
    tags: list[str] = field(default_factory=list)


def _values(tmp_path: Any) -> list[tuple[Any, dict[str, Any]]]:
    """One of each serializable value, with the json.dumps options its format pins."""
    metrics = measure(FRAME, quasi_identifiers=["age", "zip"], sensitive=["dx"])
    risk = assess_risk(FRAME, quasi_identifiers=["age", "zip"], sensitive=["dx"])
    anon = AnonymizationReport(
        policy={"k": 2}, key_id=None, algorithm="none", rows_in=5, rows_out=5, suppressed=0,
        quasi_identifiers=["age"], sensitive=[], identifier_columns={}, passthrough=["dx"],
        before=metrics.to_dict(), after=None, information_loss=None,
    )  # fmt: skip
    with BudgetLedger(tmp_path / "b.db") as ledger:
        ledger.set_budget("d", epsilon=6.0, delta=1e-5)
        ledger.reserve("d", history=[(1.1, 0.01, 1000)], delta=1e-5, model_name="lr")
        status, (record,) = ledger.status("d"), ledger.runs("d")
        privacy = PrivacyReport.from_ledger(ledger, "d")
    verify = VerifyResult(path="a.jsonl", entries=2, head="0" * 64, log_id="x", size=10, unfinished=(1,))
    act = ActivationRange("hidden 1", "relu", 2, False, (-4.0, 4.0), 0.1, (-5.0, 5.0), 0.25)
    approx = ApproximationReport("measured", "probability", (act,), 0.01, "calibration", 400, 0.2, 0.01)
    strict = {"sort_keys": True, "indent": 2, "allow_nan": False}
    indented = {"sort_keys": True, "indent": 2}
    compact = {"sort_keys": True}
    return [
        (metrics, compact),
        (risk, strict),
        (anon, strict),
        (status, compact),
        (record, compact),
        (privacy, strict),
        (verify, indented),
        (RunManifest.collect(config={"epsilon": 3.0}), indented),
        (act, indented),
        (approx, indented),
    ]


def test_every_value_keeps_its_json_layout_and_round_trips(tmp_path):
    for value, options in _values(tmp_path):
        cls = type(value)
        text = value.to_json()
        assert isinstance(value.to_dict(), dict) and isinstance(text, str)
        assert text == json.dumps(value.to_dict(), **options), cls.__name__  # byte for byte
        assert cls.from_dict(value.to_dict()) == value
        assert cls.from_json(text) == cls.from_json(text.encode()) == value
        assert cls.from_json(json.loads(text)) == value  # a saved file, parsed


@pytest.mark.parametrize("bad", ["not json", "[1, 2]", "{}", '{"x": "y"}', b"\xff"])
def test_bad_input_is_an_input_error_naming_the_kind(bad):
    for cls, kind in [
        (TableMetrics, "table metrics"),
        (RiskReport, "risk report"),
        (AnonymizationReport, "anonymization report"),
        (BudgetStatus, "budget status"),
        (RunRecord, "ledger run record"),
        (PrivacyReport, "privacy report"),
        (VerifyResult, "audit verification result"),
        (RunManifest, "run manifest"),
    ]:
        with pytest.raises(InputError, match=f"not a privdl {kind}"):
            cls.from_json(bad)
    for cls in (ApproximationReport, ActivationRange):
        with pytest.raises(FormatError):
            cls.from_json(bad)


def test_strict_reports_refuse_nan_and_nothing_else_does():
    report = AnonymizationReport(
        policy={}, key_id=None, algorithm="none", rows_in=0, rows_out=0, suppressed=0,
        quasi_identifiers=[], sensitive=[], identifier_columns={}, passthrough=[],
        before=None, after=None, information_loss={"ncp": math.nan},
    )  # fmt: skip
    with pytest.raises(ValueError):
        report.to_json()
    assert json_text({"a": math.nan}) == '{"a": NaN}'


def test_defaults_copy_dataclass_fields_and_ignore_unknown_keys():
    p = Point(1, ["a"])
    assert p.to_dict() == {"x": 1, "tags": ["a"]}
    assert p.to_dict()["tags"] is not p.tags  # a copy: the frozen value cannot change
    assert Point.from_dict({"x": 1, "tags": ["a"], "newer_field": 2}) == p
    with pytest.raises(InputError, match="not a privdl point"):
        Point.from_dict({"tags": []})  # x has no default
    with pytest.raises(InputError, match="not a privdl point: not a JSON object"):
        Point.from_dict([1])  # type: ignore[arg-type]


def test_json_mapping_takes_a_mapping_as_it_is_and_the_error_class_given():
    data = {"a": 1}
    assert json_mapping(data, kind="x") is data
    assert json_mapping('{"a": 1}', kind="x") == data
    with pytest.raises(FormatError, match="not a privdl scorer: not JSON"):
        json_mapping("{", kind="scorer", error=FormatError)
    with pytest.raises(InputError, match="not a privdl x: not a JSON object"):
        json_mapping("3", kind="x")


def test_the_message_never_holds_the_input():
    secret = '{"x": "alice@example.org"'
    with pytest.raises(InputError) as info:
        Point.from_json(secret)
    assert "alice" not in str(info.value)


@given(st.integers(), st.lists(st.text()))
def test_round_trip_and_stable_text(x, tags):
    p = Point(x, tags)
    assert Point.from_json(p.to_json()) == p
    assert Point.from_json(p.to_json()).to_json() == p.to_json()
    assert list(json.loads(p.to_json())) == sorted(p.to_dict())
