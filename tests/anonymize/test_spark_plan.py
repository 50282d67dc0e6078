"""The driver side of the distributed Mondrian, without a JVM: cuts and merges."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from privdl.anonymize.hierarchy import encode_qi
from privdl.anonymize.metrics import SensitiveCodes
from privdl.anonymize.requirements import ClassRequirements
from privdl.anonymize.spark_codes import encode_qi_codes, encode_sensitive_codes
from privdl.anonymize.spark_mondrian import _leaves, _merge_failing, _Node, _plan
from privdl.errors import PolicyNotMetError


def _meta(values: np.ndarray, column: str):
    import dataclasses

    enc = encode_qi(pd.Series(values), None, column=column)
    return dataclasses.replace(enc, codes=np.zeros(0, dtype=np.int64)), enc.codes


def test_plan_cuts_only_where_both_halves_hold_a_part() -> None:
    rng = np.random.default_rng(0)
    age = rng.integers(18, 90, 4000)
    zip_ = rng.integers(0, 50, 4000)
    m1, c1 = _meta(age, "age")
    m2, c2 = _meta(zip_, "zip")
    codes = np.stack([c1, c2], axis=1)
    nodes = _plan(codes, [m1, m2], ClassRequirements(5), scale=10.0, part_rows=2000)
    leaves = _leaves(nodes)
    assert len(leaves) >= 4  # 40,000 estimated rows, parts of >= 2,000
    # every record falls in exactly one leaf, and each leaf's share of the sample is a part
    counts = np.zeros(len(leaves))
    for r in range(len(codes)):
        i = 0
        while not nodes[i].leaf:
            i = nodes[i].left if codes[r, nodes[i].dim] < nodes[i].threshold else nodes[i].right
        counts[leaves[i]] += 1
    assert counts.sum() == len(codes)
    assert counts.min() * 10.0 >= 2000


def test_failing_parts_merge_into_their_parent_never_below_k() -> None:
    # root cut into two leaves; the right one has 3 records < k=5: merged back
    nodes = [_Node(np.zeros(0), dim=0, threshold=10, left=1, right=2), _Node(np.zeros(0)), _Node(np.zeros(0))]
    leaves = _leaves(nodes)
    counts = np.array([40.0, 3.0])
    sens = SensitiveCodes("s", np.zeros(0, dtype=np.int64), 2, False, np.array([0.5, 0.5]))
    hists = [np.array([[20.0, 20.0], [1.0, 2.0]])]
    _merge_failing(nodes, leaves, counts, hists, ClassRequirements(5, (sens,), 2), [sens])
    assert len(_leaves(nodes)) == 1
    # l=2 fails in the left part only (one sensitive value): merged too
    nodes = [_Node(np.zeros(0), dim=0, threshold=10, left=1, right=2), _Node(np.zeros(0)), _Node(np.zeros(0))]
    hists = [np.array([[40.0, 0.0], [10.0, 10.0]])]
    _merge_failing(nodes, leaves, np.array([40.0, 20.0]), hists, ClassRequirements(5, (sens,), 2), [sens])
    assert len(_leaves(nodes)) == 1
    # both good: the cut stays
    nodes = [_Node(np.zeros(0), dim=0, threshold=10, left=1, right=2), _Node(np.zeros(0)), _Node(np.zeros(0))]
    hists = [np.array([[20.0, 20.0], [10.0, 10.0]])]
    _merge_failing(nodes, leaves, np.array([40.0, 20.0]), hists, ClassRequirements(5, (sens,), 2), [sens])
    assert len(_leaves(nodes)) == 2
    # the whole table fails: the pandas engine's error
    one = [_Node(np.zeros(0))]
    with pytest.raises(PolicyNotMetError, match="k=5 cannot be met"):
        _merge_failing(one, _leaves(one), np.array([4.0]), [np.array([[2.0, 2.0]])],
                       ClassRequirements(5, (sens,), 2), [sens])


def test_codes_from_distinct_values_equal_the_whole_column_encoding() -> None:
    rng = np.random.default_rng(1)
    column = pd.Series(rng.choice(["a", "b", "?", None, "c"], 500), name="x")
    whole = encode_qi(column, None, column="x")
    distinct = column.value_counts(dropna=False).rename_axis("x").reset_index(name="__n")
    meta, codes = encode_qi_codes(distinct, "x", None)
    assert (codes.encode(column) == whole.codes).all()
    assert meta.taxonomy is not None and meta.taxonomy.leaves == whole.taxonomy.leaves
    numbers = pd.Series(rng.integers(0, 9, 300).astype(float), name="n")
    numbers[::7] = np.nan
    whole_n = encode_qi(numbers, None, column="n")
    dist_n = numbers.value_counts(dropna=False).rename_axis("n").reset_index(name="__n")
    _, codes_n = encode_qi_codes(dist_n, "n", None)
    assert (codes_n.encode(numbers) == whole_n.codes).all()
    # sensitive: same value order and distribution as encode_sensitive
    from privdl.anonymize.metrics import encode_sensitive

    ref = encode_sensitive(numbers, column="n")
    sens, sc = encode_sensitive_codes(dist_n, "n")
    assert (sc.encode(numbers) == ref.codes).all()
    assert np.allclose(sens.overall, ref.overall) and sens.ordered == ref.ordered
