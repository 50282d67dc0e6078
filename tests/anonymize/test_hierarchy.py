"""Hierarchies: ARX files, prefix, date and interval trees, and the integer encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privdl.anonymize.hierarchy import (
    MISSING_LABEL,
    Taxonomy,
    encode_qi,
    encode_qis,
    format_number,
    load_arx_csv,
)
from privdl.errors import PolicyError

DATA = Path(__file__).resolve().parents[1] / "data"
ADULT_QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]


def _adult() -> pd.DataFrame:
    return pd.read_csv(DATA / "adult_2000.csv", sep=";")


def _assert_tree(tax: Taxonomy) -> None:
    """Every node covers one contiguous run of leaf codes, and parents are functions."""
    for lv in range(tax.height + 1):
        nodes = tax.node_of[lv]
        assert np.all(np.diff(nodes) >= 0), "node ids must increase with leaf codes"
        assert nodes[0] == 0 and len(np.unique(nodes)) == nodes[-1] + 1
        if lv < tax.height:
            parent = tax.node_of[lv + 1]
            for node in np.unique(nodes):
                assert len(np.unique(parent[nodes == node])) == 1
    assert len(tax.labels[-1]) == 1


@pytest.mark.parametrize("column", [c for c in ADULT_QIS])
def test_adult_arx_hierarchies_are_trees_in_dfs_order(column: str) -> None:
    qi = encode_qi(_adult()[column], str(DATA / f"adult_hierarchy_{column}.csv"), column=column)
    assert qi.kind == "taxonomy"
    _assert_tree(qi.tree())


def test_common_ancestor_and_loss_from_an_arx_file() -> None:
    qi = encode_qi(_adult()["education"], str(DATA / "adult_hierarchy_education.csv"), column="education")
    tax = qi.tree()
    code = {leaf: i for i, leaf in enumerate(tax.leaves)}
    lo = np.array([code["Bachelors"], code["Bachelors"], code["Masters"]])
    hi = np.array([code["Some-college"], code["Doctorate"], code["Masters"]])
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    assert qi.range_labels(lo, hi).tolist() == ["Undergraduate", "Higher education", "Masters"]
    # 16 leaves: Undergraduate has 2 of them, Higher education 7
    np.testing.assert_allclose(qi.range_loss(lo, hi), [1 / 15, 6 / 15, 0.0])


def test_unknown_values_name_column_and_count_but_not_values(tmp_path: Path) -> None:
    frame = pd.DataFrame({"sex": ["Male", "Secretvalue", "Secretvalue", "Other"]})
    with pytest.raises(PolicyError) as info:
        encode_qi(frame["sex"], str(DATA / "adult_hierarchy_sex.csv"), column="sex")
    message = str(info.value)
    assert "'sex'" in message and "3 value(s)" in message and "2 distinct" in message
    assert "Secretvalue" not in message and "Other" not in message


def test_missing_values_are_one_category_under_the_root() -> None:
    series = pd.Series(["Male", None, "", "?", np.nan, "Female"], dtype=object)
    qi = encode_qi(series, str(DATA / "adult_hierarchy_sex.csv"), column="sex")
    tax = qi.tree()
    assert MISSING_LABEL in tax.leaves
    missing_code = tax.leaves.index(MISSING_LABEL)
    assert (qi.codes == missing_code).sum() == 4
    assert len(set(qi.codes.tolist())) == 3
    # numeric columns: NaN is a code of its own after the values
    num = encode_qi(pd.Series([3.0, np.nan, 1.0]), None, column="x")
    assert num.kind == "numeric" and num.has_missing
    assert num.codes.tolist() == [1, 2, 0]
    assert num.range_labels(np.array([2, 0]), np.array([2, 2])).tolist() == [MISSING_LABEL, "*"]


def test_prefix_hierarchy_generalizes_from_the_right() -> None:
    qi = encode_qi(pd.Series(["12345", "12399", "13000"]), "prefix", column="zip")
    tax = qi.tree()
    _assert_tree(tax)
    first = tax.leaves.index("12345")
    path = [tax.labels[lv][tax.node_of[lv, first]] for lv in range(tax.height + 1)]
    assert path == ["12345", "1234*", "123**", "12***", "1****", "*"]
    lo, hi = np.array([0]), np.array([1])  # 12345 and 12399
    assert qi.range_labels(lo, hi).tolist() == ["123**"]


def test_date_hierarchy_day_month_quarter_year() -> None:
    qi = encode_qi(pd.Series(["2024-02-03", "2024-02-20", "2024-05-01", "2023-12-31"]), "date", column="d")
    tax = qi.tree()
    _assert_tree(tax)
    code = {leaf: i for i, leaf in enumerate(tax.leaves)}
    a, b, c = code["2024-02-03"], code["2024-02-20"], code["2024-05-01"]
    labels = qi.range_labels(
        np.array([a, a, min(a, code["2023-12-31"])]), np.array([b, c, max(c, code["2023-12-31"])])
    )
    assert labels.tolist() == ["2024-02", "2024", "*"]
    with pytest.raises(PolicyError, match="not dates"):
        encode_qi(pd.Series(["2024-01-01", "soon"]), "date", column="d")


@pytest.mark.parametrize("spec", ["interval:10", "interval:auto", "interval:2.5"])
def test_interval_hierarchies_are_nested(spec: str) -> None:
    values = pd.Series(np.arange(17, 91))
    qi = encode_qi(values, spec, column="age", numeric_ranges=False)
    tax = qi.tree()
    _assert_tree(tax)
    assert tax.height >= 2
    level1 = set(tax.labels[1])
    if spec == "interval:10":
        assert {"10-19", "20-29", "90-99"} <= level1


def test_numeric_ranges_are_lo_hi_of_the_values() -> None:
    qi = encode_qi(pd.Series([30, 35, 39, 50]), None, column="age")
    assert qi.kind == "numeric"
    labels = qi.range_labels(np.array([0, 0, 1]), np.array([2, 3, 1]))
    assert labels.tolist() == ["30-39", "30-50", "35"]
    np.testing.assert_allclose(qi.range_loss(np.array([0, 0]), np.array([2, 3])), [0.45, 1.0])
    assert format_number(39.0) == "39" and format_number(0.1) == "0.1"


def test_relative_hierarchy_paths_resolve_against_base_dir() -> None:
    frame = _adult()
    encoded = encode_qis(frame, ["race"], {"race": "adult_hierarchy_race.csv"}, base_dir=DATA)
    assert encoded[0].tree().n_leaves == frame["race"].nunique()


def test_bad_files_and_specs_are_policy_errors(tmp_path: Path) -> None:
    ragged = tmp_path / "h.csv"
    ragged.write_text("a;x;*\nb;*\n")
    with pytest.raises(PolicyError, match="row 2"):
        load_arx_csv(ragged, column="c")
    with pytest.raises(PolicyError, match="cannot be read"):
        encode_qi(pd.Series(["a"]), str(tmp_path / "missing.csv"), column="c")
    with pytest.raises(PolicyError, match="unknown hierarchy spec"):
        encode_qi(pd.Series(["a"]), "bogus", column="c")
    with pytest.raises(PolicyError, match="interval width"):
        encode_qi(pd.Series([1, 2]), "interval:-3", column="c", numeric_ranges=False)
