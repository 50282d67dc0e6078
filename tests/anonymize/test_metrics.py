"""Metrics: EMD, diversity, risk and information loss against brute-force definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from privdl.anonymize.hierarchy import encode_qis
from privdl.anonymize.metrics import (
    class_ids,
    column_loss,
    diversity,
    emd,
    encode_sensitive,
    information_loss,
    measure,
)


@settings(max_examples=80, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6)), min_size=1, max_size=80),
    ordered=st.booleans(),
)
def test_emd_and_diversity_match_their_definitions(data: list[tuple[int, int]], ordered: bool) -> None:
    groups = np.array([g for g, _ in data])
    values = [v * 1.5 for _, v in data]
    _, ids = np.unique(groups, return_inverse=True)
    n_classes = int(ids.max()) + 1
    series = pd.Series(values) if ordered else pd.Series([f"v{v}" for v in values])
    sens = encode_sensitive(series, column="s")
    got_emd = emd(ids, n_classes, sens)
    got_distinct, got_entropy = diversity(ids, n_classes, sens)
    m, q = sens.n_values, sens.overall
    for c in range(n_classes):
        member = sens.codes[ids == c]
        p = np.bincount(member, minlength=m) / len(member)
        if ordered:
            expected = np.abs(np.cumsum(p - q)).sum() / (m - 1) if m > 1 else 0.0
        else:
            expected = 0.5 * np.abs(p - q).sum()
        assert abs(got_emd[c] - expected) < 1e-9
        share = p[p > 0]
        assert got_distinct[c] == len(share)
        assert abs(got_entropy[c] + np.sum(share * np.log(share))) < 1e-9


def test_measure_small_table_by_hand() -> None:
    frame = pd.DataFrame(
        {
            "zip": ["a", "a", "a", "b", "b", "c"],
            "sex": ["F", "F", "F", "M", "M", "M"],
            "sick": ["x", "y", "y", "x", "x", "z"],
        }
    )
    got = measure(frame, quasi_identifiers=["zip", "sex"], sensitive=["sick"], k_target=2)
    assert (got.rows, got.classes, got.k) == (6, 3, 1)
    assert got.prosecutor_max == 1.0 == got.journalist_max
    assert abs(got.prosecutor_avg - 0.5) < 1e-12 and got.marketer == got.prosecutor_avg
    assert abs(got.unique_share - 1 / 6) < 1e-12
    assert abs(got.high_risk_share - 1.0) < 1e-12
    assert got.l_distinct == {"sick": 1}
    assert abs(got.l_entropy["sick"] - 1.0) < 1e-12
    assert got.discernibility == 9 + 4 + 1
    assert abs(got.avg_class_size - 1.0) < 1e-12
    buckets = {name: (classes, records) for name, classes, records in got.class_sizes}
    assert buckets["1"] == (1, 1) and buckets["2"] == (1, 2) and buckets["3-4"] == (1, 3)


def test_missing_values_form_one_class() -> None:
    frame = pd.DataFrame({"a": [np.nan, np.nan, 1.0, 1.0]})
    ids, n = class_ids(frame, ["a"])
    assert n == 2 and ids[0] == ids[1] and ids[2] == ids[3]
    assert measure(frame, quasi_identifiers=["a"]).k == 2


def test_information_loss_zero_for_raw_and_one_for_stars() -> None:
    frame = pd.DataFrame({"age": [20, 30, 40, 60], "sex": ["F", "M", "F", "M"]})
    encoded = encode_qis(frame, ["age", "sex"], {})
    assert information_loss(frame, encoded)["ncp"] == 0.0
    stars = pd.DataFrame({"age": ["*"] * 4, "sex": ["*"] * 4})
    assert information_loss(stars, encoded)["ncp"] == 1.0
    ranges = pd.DataFrame({"age": ["20-30", "20-30", "40-60", "40-60"], "sex": list("FMFM")})
    loss = information_loss(ranges, encoded, suppressed=4)
    assert abs(loss["per_column"]["age"] - 0.375) < 1e-12  # (10/40 + 20/40) / 2
    assert loss["per_column"]["sex"] == 0.0
    assert abs(loss["ncp_with_suppressed"] - (0.1875 * 4 + 4) / 8) < 1e-12
    # an unknown label is never cheaper than the root
    assert column_loss(pd.Series(["??"]), encoded[1]).tolist() == [1.0]
