"""Global recoding: one level per column, suppression budget, minimal lattice node."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privdl.anonymize.generalize import generalize
from privdl.anonymize.global_recoding import global_recoding
from privdl.anonymize.hierarchy import encode_qis
from privdl.anonymize.metrics import encode_sensitive, measure
from privdl.errors import PolicyError, PolicyNotMetError

DATA = Path(__file__).resolve().parents[1] / "data"
QIS = ["sex", "age", "race", "marital-status", "education", "workclass"]
HIER = {c: str(DATA / f"adult_hierarchy_{c}.csv") for c in QIS}


def _frame() -> pd.DataFrame:
    return pd.read_csv(DATA / "adult_2000.csv", sep=";")


def _policy(**kw: object) -> SimpleNamespace:
    base = dict(
        quasi_identifiers=tuple(QIS),
        sensitive=("salary-class",),
        k=5,
        l=None,
        l_kind="distinct",
        t=None,
        max_suppression=0.02,
        hierarchies=HIER,
        algorithm="global",
        base_dir=None,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def _suppressed_at(encoded, levels, k: int) -> int:
    """Rows in classes smaller than k when each column is cut at ``levels`` (brute force)."""
    cols = {q.column: q.tree().node_of[lv][q.codes] for q, lv in zip(encoded, levels, strict=True)}
    sizes = pd.DataFrame(cols).value_counts()
    return int(sizes[sizes < k].sum())


def test_one_level_per_column_and_budget_respected() -> None:
    frame = _frame()
    result = generalize(frame, _policy())
    released = result.released
    assert result.algorithm == "global"
    assert result.suppressed <= 0.02 * len(frame)
    assert len(released) + result.suppressed == len(frame)
    assert measure(released, quasi_identifiers=QIS).k >= 5
    encoded = encode_qis(frame, QIS, HIER, numeric_ranges=False)
    for qi in encoded:
        level = result.info["levels"][qi.column]
        allowed = set(qi.tree().labels[level])
        assert set(released[qi.column].astype(str)) <= allowed


def test_chosen_node_is_minimal() -> None:
    frame = _frame()
    encoded = encode_qis(frame, QIS, HIER, numeric_ranges=False)
    rec = global_recoding(encoded, k=5, max_suppression=0.02)
    budget = int(0.02 * len(frame))
    assert _suppressed_at(encoded, rec.levels, 5) == rec.suppressed <= budget
    for d, level in enumerate(rec.levels):
        if level == 0:
            continue
        lower = list(rec.levels)
        lower[d] -= 1
        assert _suppressed_at(encoded, lower, 5) > budget
    assert rec.evaluated <= rec.lattice_size


def test_l_and_t_hold_after_suppression() -> None:
    frame = _frame()
    result = generalize(frame, _policy(l=2, t=0.3, max_suppression=0.1))
    got = measure(result.released, quasi_identifiers=QIS, sensitive=["salary-class"])
    assert got.k >= 5 and got.l_distinct["salary-class"] >= 2
    assert got.t["salary-class"] <= 0.3 + 1e-9


def test_more_suppression_never_costs_more_generalization() -> None:
    frame = _frame()
    encoded = encode_qis(frame, QIS, HIER, numeric_ranges=False)
    none = global_recoding(encoded, k=5, max_suppression=0.0)
    some = global_recoding(encoded, k=5, max_suppression=0.05)
    assert none.suppressed == 0
    assert some.loss <= none.loss + 1e-12


def test_lattice_guard_and_unmeetable_policy() -> None:
    frame = _frame()
    encoded = encode_qis(frame, QIS, HIER, numeric_ranges=False)
    with pytest.raises(PolicyError, match="lattice"):
        global_recoding(encoded, k=5, max_nodes=10)
    with pytest.raises(PolicyNotMetError):
        global_recoding(encoded, k=len(frame) + 1)
    sens = [encode_sensitive(frame["salary-class"], column="salary-class")]
    with pytest.raises(PolicyNotMetError):
        global_recoding(encoded, k=2, sensitive=sens, l=3)


def test_numeric_column_without_hierarchy_uses_interval_bins() -> None:
    frame = pd.DataFrame({"age": np.arange(100) % 50 + 20, "sex": ["M", "F"] * 50})
    result = generalize(
        frame,
        _policy(quasi_identifiers=("age", "sex"), sensitive=(), hierarchies={}, k=10, max_suppression=0.0),
    )
    assert measure(result.released, quasi_identifiers=["age", "sex"]).k >= 10
    assert result.info["levels"]["age"] > 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ages=st.lists(st.integers(18, 80), min_size=1, max_size=80),
    k=st.integers(1, 10),
    budget=st.sampled_from([0.0, 0.1, 0.3]),
    use_l=st.booleans(),
)
def test_property_every_released_class_meets_k_and_rows_add_up(
    ages: list[int], k: int, budget: float, use_l: bool
) -> None:
    n = len(ages)
    frame = pd.DataFrame(
        {
            "age": ages,
            "zip": [f"{10000 + 37 * a + i % 3:05d}" for i, a in enumerate(ages)],
            "sick": [("flu", "cold", "none")[(a * 7 + i) % 3] for i, a in enumerate(ages)],
        }
    )
    pol = _policy(
        quasi_identifiers=("age", "zip"),
        sensitive=("sick",),
        k=k,
        l=2 if use_l else None,
        max_suppression=budget,
        hierarchies={"age": "interval:5", "zip": "prefix"},
    )
    try:
        result = generalize(frame, pol)
    except PolicyNotMetError:
        return
    released = result.released
    assert len(released) + result.suppressed == n
    assert result.suppressed <= budget * n + 1e-9
    if len(released):
        got = measure(released, quasi_identifiers=["age", "zip"], sensitive=["sick"])
        assert got.k >= k
        if use_l:
            assert got.l_distinct["sick"] >= 2
    kept = frame.loc[released.index]
    for value, label in zip(kept["zip"], released["zip"].astype(str), strict=True):
        assert label == "*" or value.startswith(label.rstrip("*"))
