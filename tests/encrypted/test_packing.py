from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from privdl.encrypted.packing import (
    Standardizer,
    as_matrix,
    chunk_bounds,
    feature_matrix,
    parse_feature,
    source_columns,
)
from privdl.errors import InputError, UsageError


def test_feature_specs():
    assert parse_feature("age") == ("age", None)
    assert parse_feature("city=New=York") == ("city", "New=York")
    assert source_columns(["city=A", "age", "city=B"]) == ["city", "age"]


def test_indicators_and_numbers():
    frame = pd.DataFrame({"age": [30, 41], "sex": ["F", "M"], "city": ["Rome", "Oslo"]})
    m = feature_matrix(frame, ["age", "sex=F", "city=Oslo"])
    assert m.tolist() == [[30.0, 1.0, 0.0], [41.0, 0.0, 1.0]]


def test_missing_and_non_numeric_columns_are_named_without_values():
    frame = pd.DataFrame({"age": [30, np.nan], "name": ["Alice", "Bob"]})
    with pytest.raises(InputError, match="'zip' is missing"):
        feature_matrix(frame, ["zip"])
    with pytest.raises(InputError, match="row 2"):
        feature_matrix(frame, ["age"])
    with pytest.raises(InputError) as err:
        feature_matrix(frame, ["name"], source="users.csv")
    assert "Alice" not in str(err.value) and "users.csv" in str(err.value)
    with pytest.raises(UsageError):
        feature_matrix(frame, [])


def test_arrays_need_names_per_column():
    _, names = as_matrix(np.zeros((2, 3)), None)
    assert names == ["x0", "x1", "x2"]
    with pytest.raises(UsageError):
        as_matrix(np.zeros((2, 3)), ["a"])
    with pytest.raises(InputError, match="row 2"):
        as_matrix(np.array([[1.0], [np.inf]]), ["a"])


@given(st.integers(0, 20_000), st.sampled_from([4096, 8192]))
def test_chunks_cover_rows_in_order(rows, slots):
    bounds = chunk_bounds(rows, slots)
    assert sum(b - a for a, b in bounds) == rows
    assert all(0 < b - a <= slots for a, b in bounds)
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(len(bounds) - 1))


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, (5, 3), elements=st.floats(-1e3, 1e3)),
    arrays(np.float64, (2, 3), elements=st.floats(-10, 10)),
    arrays(np.float64, 3, elements=st.floats(-50, 50)),
    arrays(np.float64, 3, elements=st.floats(0.1, 100)),
)
def test_folding_the_scaler_equals_standardizing_first(x, w, mean, scale):
    s = Standardizer(tuple(mean), tuple(scale))
    bias = np.array([0.5, -1.0])
    folded_w, folded_b = s.fold(w, bias)
    expected = s.transform(x) @ w.T + bias
    assert np.allclose(x @ folded_w.T + folded_b, expected, rtol=1e-9, atol=1e-6)


def test_scaler_validation():
    with pytest.raises(InputError):
        Standardizer((0.0,), (0.0,))
    with pytest.raises(InputError):
        Standardizer.from_dict({"mean": [1]})
