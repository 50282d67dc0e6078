"""Released columns an attacker can link on: detected, measured, and in the headline figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import privdl
from privdl.anonymize.detect import linkable_columns
from privdl.anonymize.policy import Policy
from privdl.errors import PolicyError

EXAMPLE_USERS = Path(__file__).resolve().parents[2] / "examples" / "data" / "users.csv"
# the README's step-1 policy before issue 10: exact birth and sign-up dates pass through
IDS = ["user_id", "email:pseudonymize:normalize=email", "full_name", "phone:mask"]
DECLARED = {"identifiers": IDS, "drop": ["ip"], "quasi_identifiers": ["age", "zip", "sex"], "k": 5}


def _run(frame: pd.DataFrame, key: privdl.Secret, **policy: object) -> privdl.Anonymizer:
    hierarchies = {"zip": "prefix"} if "zip" in policy.get("quasi_identifiers", ()) else {}  # type: ignore[operator]
    anonymizer = privdl.Anonymizer(Policy(hierarchies=hierarchies, **policy), key=key)  # type: ignore[arg-type]
    anonymizer.fit_transform(frame)
    return anonymizer


def test_detector_flags_dates_timestamps_text_and_high_cardinality() -> None:
    n = 60
    frame = pd.DataFrame(
        {
            "iso_day": [f"2024-01-{i % 28 + 1:02d}" for i in range(n)],
            "eu_day": [f"{i % 28 + 1:02d}.03.1990" for i in range(n)],
            "stamp": [f"2024-05-01T10:{i % 60:02d}:00Z" for i in range(n)],
            "typed": pd.date_range("2024-01-01", periods=n, freq="D"),
            "note": ["called twice about the bill"] * n,
            "amount": np.arange(n) * 1.37,
            "phone_like": [f"+49 30 {1000 + i}" for i in range(n)],
            "plan": ["basic", "pro", "family"] * (n // 3),
            "plays": np.arange(n) % 12,
            "flag": [True, False] * (n // 2),
        }
    )
    found = linkable_columns(frame, frame.columns)
    assert found["iso_day"] == found["eu_day"] == found["typed"] == "dates"
    assert found["stamp"] == "timestamps"
    assert found["note"] == "free text"
    assert found["amount"].startswith("high-cardinality") and "60 distinct" in found["amount"]
    assert found["phone_like"].startswith("high-cardinality")  # numbers in groups are not text
    assert set(found).isdisjoint({"plan", "plays", "flag"})
    assert "2024" not in " ".join(found.values())  # kinds and counts, never values


def test_exact_birth_date_beside_generalized_qis_makes_the_headline_k_1(users, key):
    anonymizer = privdl.Anonymizer(Policy(hierarchies={"zip": "prefix"}, **DECLARED), key=key)
    released = anonymizer.fit_transform(users)
    report = anonymizer.report_
    assert report.after["k"] >= 5  # the declared set alone is 5-anonymous ...
    assert {"birth_date", "signup_date", "phone"} <= set(report.linkable)
    assert "zip" not in report.linkable and "age" not in report.linkable  # generalized QIs
    # ... but the headline is measured with the linkable columns, from the released table
    honest = privdl.assess_risk(released, quasi_identifiers=["age", "zip", "sex", *report.linkable])
    summary = report.summary()
    assert summary["k"] == honest.k == 1 and summary["k_declared"] == report.after["k"]
    assert summary["prosecutor_max"] == 1.0 and summary["unique_share"] == honest.unique_share > 0.9
    assert summary["linkable"] == list(report.linkable)
    assert report.linkable_risk["k"] == 1 and report.policy_met["k"] is False
    assert any("'birth_date'" in w and "link on it" in w for w in anonymizer.warnings_)
    assert any("k=1" in w and "'birth_date'" in w for w in anonymizer.warnings_)
    assert anonymizer.warnings_ == report.warnings[-len(anonymizer.warnings_) :]


def test_report_document_states_both_measures(users, key, tmp_path):
    report = _run(users, key, **DECLARED, keep=["plays_week1"]).report_
    text = report.save(tmp_path / "r.md").read_text()
    assert "| k (target / achieved, linkable columns counted) | 5 / 1 |" in text
    assert f"| k on the declared quasi-identifiers alone | {report.after['k']} |" in text
    assert "## Risk with linkable columns" in text
    assert "| k (smallest class) | " + f"{report.after['k']} | 1 |" in text
    assert "birth_date" in text.split("## Risk with linkable columns")[1]
    assert "user's assertion" in text and "plays_week1" in text  # keep: asserted, listed
    assert "join key" in text  # pseudonyms: not counted, and the report says why
    assert "city" in text.split("not found linkable")[1]  # low-cardinality passthrough, named


def test_shifted_and_masked_identifiers_stay_linkable(users, key):
    policy = {
        "identifiers": ["user_id", "birth_date:shift_dates:by=user_id", "phone:mask"],
        "drop": ["ip", "email", "full_name", "signup_date"],
        "quasi_identifiers": ["age", "sex", "zip"],
        "k": 5,
    }
    report = _run(users, key, **policy).report_
    assert "shift_dates is not generalization" in report.linkable["birth_date"]
    assert report.linkable["phone"].startswith("masked values")
    assert "user_id" not in report.linkable  # a pseudonym is a join key, not counted
    assert report.summary()["k"] == 1
    # a fully masked phone keeps only its layout: not linkable
    policy["identifiers"] = ["user_id", "birth_date:shift_dates:by=user_id", "phone:mask:keep_last=0"]
    assert "phone" not in _run(users, key, **policy).report_.linkable


def test_keep_is_the_users_assertion(users, key):
    report = _run(
        users, key, **DECLARED, keep=["birth_date", "signup_date", "city", "plays_week1", "plays_week2"]
    ).report_
    assert set(report.linkable) == {"phone"}  # only the masked phone is left


def test_identifier_only_run_measures_the_linkable_columns(users, key, tmp_path):
    anonymizer = _run(users, key, identifiers=["user_id", "email"], drop=["ip", "phone", "full_name"])
    report = anonymizer.report_
    assert report.after is None and report.linkable_risk is not None
    assert report.summary()["k"] == 1 and "k_declared" not in report.summary()
    assert "## Risk with linkable columns" in report.save(tmp_path / "r.md").read_text()


def test_no_linkable_column_keeps_the_declared_figures(users, key):
    report = _run(
        users,
        key,
        identifiers=["user_id", "email", "full_name"],
        drop=["ip", "phone", "birth_date", "signup_date"],
        keep=["plays_week1", "plays_week2", "retained"],
        quasi_identifiers=["age", "zip", "sex", "city"],
        k=5,
        strict=True,
    ).report_
    assert report.linkable == {} and report.linkable_risk is None
    assert report.summary()["k"] == report.after["k"] >= 5 and report.policy_met == {"k": True}
    assert "linkable" not in report.summary()


def test_shifted_dates_can_be_generalized(users, key):
    policy = Policy(
        identifiers=["user_id", "birth_date:shift_dates:by=user_id"],
        quasi_identifiers=["birth_date", "sex"],
        hierarchies={"birth_date": "date"},
        drop=["email", "full_name", "phone", "ip", "signup_date", "age", "zip", "city"],
        k=5,
    )
    anonymizer = privdl.Anonymizer(policy, key=key)
    released = anonymizer.fit_transform(users)
    shifted = privdl.Anonymizer(
        Policy(identifiers=["user_id", "birth_date:shift_dates:by=user_id"]), key=key
    ).fit_transform(users)["birth_date"]
    # shift first, then generalize: every label is an ancestor of the *shifted* day
    for label, day in zip(released["birth_date"], shifted, strict=True):
        quarter = f"{day[:4]}-Q{(int(day[5:7]) - 1) // 3 + 1}"
        assert label in ("*", day[:4], quarter, day[:7], day)
    assert released.groupby(["birth_date", "sex"]).size().min() >= 5
    report = anonymizer.report_
    assert report.linkable == {} and report.summary()["k"] >= 5
    assert report._column_rows()[1][:2] == ["birth_date", "identifier, quasi-identifier"]
    assert report.information_loss["per_column"]["birth_date"] < 1


def test_only_shifted_dates_may_also_be_quasi_identifiers():
    with pytest.raises(PolicyError, match="column 'email' has two roles"):
        Policy(identifiers=["email"], quasi_identifiers=["email"], k=2)
    with pytest.raises(PolicyError, match="column 'phone' has two roles"):
        Policy(identifiers=["phone:mask"], quasi_identifiers=["phone"], k=2)
    p = Policy(identifiers=["d:shift_dates:by=u"], quasi_identifiers=["d"], k=2)
    assert p.named_columns == ("d",) and p.passthrough(["d", "u"]) == ["u"]


def test_strict_policy_names_every_column_without_a_role(users, key, tmp_path):
    policy = Policy(identifiers=["user_id", "email"], drop=["ip"], strict=True)
    with pytest.raises(PolicyError) as err:
        privdl.Anonymizer(policy, key=key).fit_transform(users)
    message = str(err.value)
    for column in ("full_name", "birth_date", "signup_date", "plays_week1"):
        assert f"'{column}'" in message
    assert "'email'" not in message and "@" not in message
    path = tmp_path / "policy.toml"
    path.write_text('strict = true\nidentifiers = ["email"]\n')
    loaded = Policy.from_toml(path)
    assert loaded.strict and loaded.get_params()["strict"] is True
    assert loaded.merge(strict=None).strict and loaded.merge(strict=False).strict  # a flag never loosens
    assert Policy(identifiers=["email"]).merge(strict=True).strict
    with pytest.raises(PolicyError, match="strict must be"):
        Policy(strict="yes")  # type: ignore[arg-type]


def test_shifted_dates_still_single_out_people(key):
    """The claim in the report: a 30-day shift does not hide a birth date.

    An attacker knows a person's true birth date, sex and city and searches the released
    table for records of that sex and city whose shifted date lies within 30 days.
    """
    raw = privdl.read_table(EXAMPLE_USERS)
    released = privdl.Anonymizer(
        Policy(identifiers=["user_id", "birth_date:shift_dates:by=user_id"]), key=key
    ).fit_transform(raw)
    true = pd.to_datetime(raw["birth_date"]).to_numpy().astype("datetime64[D]").astype(np.int64)
    shifted = pd.to_datetime(released["birth_date"]).to_numpy().astype("datetime64[D]").astype(np.int64)
    group = pd.factorize(raw["sex"] + "|" + raw["city"])[0]
    same = group[:, None] == group[None, :]
    near = np.abs(shifted[None, :] - true[:, None]) <= 30
    singled_out = float(((same & near).sum(axis=1) == 1).mean())
    assert singled_out > 0.5


def test_unhashable_values_from_jsonl_are_measured_not_a_crash(key):
    frame = pd.DataFrame(
        {"email": [f"p{i}@x.org" for i in range(40)], "tags": [[str(i), "x"] for i in range(40)]}
    )
    anonymizer = privdl.Anonymizer(Policy(identifiers=["email"]), key=key)
    anonymizer.fit_transform(frame)
    report = anonymizer.report_
    assert report.linkable["tags"].startswith("high-cardinality") and report.summary()["k"] == 1
