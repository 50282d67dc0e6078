"""TableEncoder: generalized ranges, hierarchies, missing values, data-independent domains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from privdl.errors import InputError, UsageError
from privdl.train.encoding import TableEncoder

DATA = Path(__file__).resolve().parents[1] / "data"
EDUCATION = DATA / "encoding_hierarchy_education.csv"


def _policy(**kw):
    from privdl.anonymize.policy import Policy

    return Policy(**kw)


def _row(enc: TableEncoder, X: np.ndarray, i: int, prefix: str) -> dict[str, float]:
    return {n: float(X[i, j]) for j, n in enumerate(enc.feature_names_) if n.startswith(prefix)}


def test_numeric_ranges_become_midpoint_and_width() -> None:
    frame = pd.DataFrame(
        {"age": ["30-39", "45", "[40, 50)", "*", None, ">=90", "<10", "(missing)", "60 - 70"]}
    )
    enc = TableEncoder(numeric_bounds={"age": (0, 100)})
    X = enc.fit_transform(frame)
    assert enc.feature_names_ == ["age:mid", "age:width", "age:missing"]
    assert X.dtype == np.float32
    expected = [
        (0.345, 0.09, 0),
        (0.45, 0.0, 0),
        (0.45, 0.10, 0),
        (0.5, 1.0, 0),  # '*' is the whole domain
        (0.0, 0.0, 1),
        (0.95, 0.10, 0),  # open-ended: ends at the bound
        (0.05, 0.10, 0),
        (0.0, 0.0, 1),
        (0.65, 0.10, 0),
    ]
    np.testing.assert_allclose(X, np.array(expected, dtype=np.float32), atol=1e-6)
    assert enc.data_dependent_ == []


def test_raw_numbers_and_released_ranges_share_one_feature_space() -> None:
    raw = pd.DataFrame({"age": [34, 37, 52]})
    released = pd.DataFrame({"age": ["30-39", "30-39", "50-59"]})
    enc = TableEncoder(numeric_bounds={"age": (17, 90)}).fit(released)
    Xr, Xg = enc.transform(raw), enc.transform(released)
    assert Xr.shape == Xg.shape
    # each raw value lies inside its released interval
    lo = Xg[:, 0] - Xg[:, 1] / 2
    hi = Xg[:, 0] + Xg[:, 1] / 2
    assert np.all((lo <= Xr[:, 0] + 1e-6) & (Xr[:, 0] <= hi + 1e-6))
    assert np.all(Xr[:, 1] == 0)


def test_hierarchy_values_switch_on_their_ancestors() -> None:
    policy = _policy(k=2, quasi_identifiers=("education",), hierarchies={"education": str(EDUCATION)})
    frame = pd.DataFrame(
        {"education": ["Bachelors", "Higher education", "*", None, "Kindergarten", "HS-grad"]}
    )
    enc = TableEncoder(policy).fit(frame)
    assert enc.columns_[0]["source"] == "hierarchy"
    assert enc.data_dependent_ == []  # the domain came from the hierarchy file
    X = enc.transform(frame)
    bachelors = _row(enc, X, 0, "education=")
    assert bachelors["education=Bachelors"] == 1.0
    assert bachelors["education=Undergraduate"] == 1.0
    assert bachelors["education=Higher education"] == 1.0
    assert sum(bachelors.values()) == 3.0
    higher = _row(enc, X, 1, "education=")
    assert higher["education=Higher education"] == 1.0 and sum(higher.values()) == 1.0
    assert sum(_row(enc, X, 2, "education=").values()) == 0.0  # '*' says nothing
    assert _row(enc, X, 3, "education=")["education=(missing)"] == 1.0
    other = _row(enc, X, 4, "education=")
    assert other["education=(other)"] == 1.0 and sum(other.values()) == 1.0
    hs = _row(enc, X, 5, "education=")
    assert hs["education=High School"] == 1.0 and hs["education=Secondary education"] == 1.0
    # every hierarchy label is a column, even those absent from the data
    assert "education=Doctorate" in enc.feature_names_


def test_numeric_hierarchy_gives_data_independent_bounds() -> None:
    policy = _policy(
        k=2,
        quasi_identifiers=("age",),
        hierarchies={"age": str(DATA / "adult_hierarchy_age.csv")},
    )
    frame = pd.DataFrame({"age": [25, 40, 61]})
    enc = TableEncoder(policy).fit(frame)
    spec = enc.columns_[0]
    assert spec["kind"] == "numeric" and spec["source"] == "hierarchy"
    assert spec["low"] <= 0 and spec["high"] >= 90  # the hierarchy's range, not the data's
    assert enc.data_dependent_ == []


def test_sets_average_their_members() -> None:
    enc = TableEncoder(categories={"c": ["a", "b", "c"]})
    X = enc.fit_transform(pd.DataFrame({"c": ["{a, b}", "a|c", "{a, zz}"]}))
    row = dict(zip(enc.feature_names_, X[0], strict=True))
    assert row["c=a"] == pytest.approx(0.5) and row["c=b"] == pytest.approx(0.5)
    row = dict(zip(enc.feature_names_, X[1], strict=True))
    assert row["c=a"] == pytest.approx(0.5) and row["c=c"] == pytest.approx(0.5)
    row = dict(zip(enc.feature_names_, X[2], strict=True))
    assert row["c=(other)"] == 1.0  # a set with an unknown member is not guessed


def test_data_dependent_domains_are_listed() -> None:
    frame = pd.DataFrame(
        {"income": [10.0, 55.5, 31.0], "city": ["x", "y", "x"], "label": ["no", "yes", "no"]}
    )
    with pytest.warns(UserWarning, match="without differential privacy"):
        enc = TableEncoder(target="label", domains="learned-unprotected").fit(frame)
    assert enc.domain_source_ == "learned-unprotected"
    learned = " | ".join(enc.data_dependent_)
    assert "income: numeric range" in learned
    assert "city: category vocabulary (2 values)" in learned
    assert "label: class labels (2)" in learned
    # giving the domains removes them from the list
    enc2 = TableEncoder(
        numeric_bounds={"income": (0, 100)},
        categories={"city": ["x", "y", "z"], "label": ["no", "yes"]},
        target="label",
    ).fit(frame)
    assert enc2.data_dependent_ == []
    np.testing.assert_array_equal(enc2.encode_target(frame["label"]), [0, 1, 0])


def test_policy_identifiers_and_drops_are_not_features() -> None:
    policy = _policy(identifiers=("email",), drop=("notes",), keep=("city",))
    frame = pd.DataFrame({"email": ["a@x.org", "b@y.org"], "notes": ["n1", "n2"], "city": ["x", "y"]})
    enc = TableEncoder(policy).fit(frame)
    assert [s["name"] for s in enc.columns_] == ["city"]
    assert sorted(enc.dropped_) == ["email", "notes"]
    assert "a@x.org" not in enc.to_json()


def test_target_encoding_and_errors() -> None:
    frame = pd.DataFrame({"f": [1, 2, 3, 4], "y": [">50K", "<=50K", "<=50K", ">50K"]})
    enc = TableEncoder(numeric_bounds={"f": (0, 10)}, domains="learned-unprotected").fit(frame, target="y")
    assert enc.classes_ == ["<=50K", ">50K"]
    np.testing.assert_array_equal(enc.encode_target(frame["y"]), [1, 0, 0, 1])
    assert enc.decode_target([1, 0]) == [">50K", "<=50K"]
    with pytest.raises(InputError) as info:
        enc.encode_target(pd.Series(["<=50K", "secret-label"]))
    assert "secret-label" not in str(info.value) and "1 rows" in str(info.value)
    reg = TableEncoder(numeric_bounds={"f": (0, 10)}, domains="policy").fit(
        pd.DataFrame({"f": [1, 2], "y": [0.5, 1.25]}), target="y"
    )
    assert reg.classes_ is None
    np.testing.assert_allclose(reg.encode_target(pd.Series([0.5, 2.0])), [0.5, 2.0])


def test_bad_cells_are_counted_not_quoted() -> None:
    enc = TableEncoder(numeric_bounds={"age": (0, 100)}).fit(pd.DataFrame({"age": [1, 2]}))
    with pytest.raises(InputError) as info:
        enc.transform(pd.DataFrame({"age": ["41", "Jane Doe", "Jane Doe", "x7"]}))
    message = str(info.value)
    assert "Jane" not in message and "2 distinct cells" in message and "'age'" in message
    with pytest.raises(InputError, match="columns missing"):
        enc.transform(pd.DataFrame({"other": [1]}))
    with pytest.raises(UsageError, match="not fitted"):
        TableEncoder().transform(pd.DataFrame({"a": [1]}))


def test_json_round_trip_transforms_identically() -> None:
    policy = _policy(k=2, quasi_identifiers=("education",), hierarchies={"education": str(EDUCATION)})
    frame = pd.DataFrame(
        {
            "education": ["Bachelors", "Undergraduate", None],
            "age": ["20-29", "31", "*"],
            "city": ["x", "y", "x"],
            "y": ["a", "b", "a"],
        }
    )
    enc = TableEncoder(
        policy, numeric_bounds={"age": (0, 100)}, categories={"y": ["a", "b"]}, target="y"
    ).fit(frame)
    assert enc.columns_[-1].get("hashed")  # city: a DP vocabulary of hash buckets
    text = enc.to_json()
    loaded = TableEncoder.from_json(text)
    np.testing.assert_array_equal(loaded.transform(frame), enc.transform(frame))
    np.testing.assert_array_equal(loaded.encode_target(frame["y"]), enc.encode_target(frame["y"]))
    assert loaded.feature_names_ == enc.feature_names_
    assert loaded.data_dependent_ == enc.data_dependent_
    assert loaded.domain_history_ == enc.domain_history_ and loaded.domain_source_ == "dp"
    bad = json.loads(text)
    bad["version"] = 99
    with pytest.raises(InputError, match="version 99"):
        TableEncoder.from_json(json.dumps(bad))
    with pytest.raises(InputError):
        TableEncoder.from_json('{"format": "something-else"}')


def test_encodes_the_anonymizer_output_and_the_raw_table_alike() -> None:
    from privdl.anonymize.anonymizer import Anonymizer

    raw = pd.read_csv(DATA / "adult_2000.csv", sep=";").head(600)
    policy = _policy(
        k=10,
        quasi_identifiers=("age", "education", "sex"),
        keep=("race", "marital-status", "native-country", "workclass", "occupation", "salary-class"),
        hierarchies={"education": str(EDUCATION)},
    )
    released = Anonymizer(policy).fit_transform(raw)
    enc = TableEncoder(
        policy,
        numeric_bounds={"age": (17, 90)},
        categories={"sex": ["Female", "Male"], "salary-class": ["<=50K", ">50K"]},
        target="salary-class",
        domains="learned-unprotected",
    ).fit(released)
    Xg, Xr = enc.transform(released), enc.transform(raw)
    assert Xg.shape == Xr.shape == (600, len(enc.feature_names_))
    assert np.isfinite(Xg).all() and np.isfinite(Xr).all()
    # generalized cells switch on a subset of what the raw cell switches on
    edu = [j for j, n in enumerate(enc.feature_names_) if n.startswith("education=")]
    same = released.index.intersection(raw.index)
    g, r = Xg[np.ix_(same, edu)], Xr[np.ix_(same, edu)]
    assert np.all(g <= r + 1e-6)
    # only the non-policy columns were learned from the data
    learned = {s.split(":")[0] for s in enc.data_dependent_}
    assert learned == {"race", "marital-status", "native-country", "workclass", "occupation"}
    assert "race" in enc.screened_ and "age" not in enc.screened_  # QIs are not screened


@given(
    a=st.floats(min_value=-50, max_value=150, allow_nan=False),
    b=st.floats(min_value=-50, max_value=150, allow_nan=False),
)
def test_scaled_intervals_stay_inside_the_unit_box(a: float, b: float) -> None:
    enc = TableEncoder(numeric_bounds={"v": (0, 100)})
    enc.fit(pd.DataFrame({"v": [0.0]}))
    lo, hi = min(a, b), max(a, b)
    X = enc.transform(pd.DataFrame({"v": [f"[{lo!r}, {hi!r}]"]}))
    mid, width = float(X[0, 0]), float(X[0, 1])
    assert 0.0 <= mid <= 1.0 and 0.0 <= width <= 1.0
    assert mid - width / 2 >= -1e-6 and mid + width / 2 <= 1 + 1e-6


def test_importing_the_encoder_does_not_load_torch() -> None:
    code = (
        "import sys, pandas as pd; from privdl.train.encoding import TableEncoder; "
        "TableEncoder().fit_transform(pd.DataFrame({'a': [1, 2]})); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
