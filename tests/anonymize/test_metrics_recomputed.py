"""k, l and t recomputed independently with plain pandas, so the cross-check does not
depend on pycanon being installed (its exact pins keep it out of the dev extra; CI
installs it without them, and test_pycanon_crosscheck.py skips where it is absent)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from privdl.anonymize.generalize import generalize
from privdl.anonymize.metrics import measure

DATA = Path(__file__).resolve().parents[1] / "data"
SA = "salary-class"
QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]


def _released(algorithm: str, **targets: object) -> pd.DataFrame:
    """The adult sample released under the targets (as test_pycanon_crosscheck.py does)."""
    frame = pd.read_csv(DATA / "adult_2000.csv", sep=";")
    hierarchies = {c: str(DATA / f"adult_hierarchy_{c}.csv") for c in QIS if c != "age"}
    if algorithm == "global":
        hierarchies["age"] = str(DATA / "adult_hierarchy_age.csv")
    policy = SimpleNamespace(
        quasi_identifiers=tuple(QIS), sensitive=(SA,), l_kind="distinct", max_suppression=0.05,
        hierarchies=hierarchies, algorithm=algorithm, base_dir=None, **targets,
    )  # fmt: skip
    released = generalize(frame, policy).released
    return released.astype({c: str for c in QIS}).reset_index(drop=True)


def _by_hand(frame: pd.DataFrame, qis: list[str], sa: str) -> dict[str, float]:
    groups = frame.groupby(qis, dropna=False, sort=False)[sa]
    whole = frame[sa].value_counts(normalize=True)
    entropies, distances = [], []
    for _, values in groups:
        share = values.value_counts(normalize=True)
        entropies.append(-sum(p * math.log(p) for p in share))
        # categorical t-closeness: EMD with equal ground distance = total variation
        distances.append(0.5 * sum(abs(share.get(v, 0.0) - whole[v]) for v in whole.index))
    return {
        "k": int(groups.size().min()),
        "l_distinct": int(groups.nunique().min()),
        "l_entropy": math.exp(min(entropies)),
        "t": max(distances),
    }


@pytest.mark.parametrize(
    ("algorithm", "targets"),
    [("mondrian", {"k": 5, "l": None, "t": None}), ("global", {"k": 5, "l": 2, "t": None})],
)
def test_k_l_t_equal_a_recomputation_by_hand(algorithm: str, targets: dict[str, object]) -> None:
    released = _released(algorithm, **targets)
    ours = measure(released, quasi_identifiers=QIS, sensitive=[SA])
    hand = _by_hand(released, QIS, SA)
    assert ours.k == hand["k"] >= 5
    assert ours.l_distinct[SA] == hand["l_distinct"]
    assert ours.l_entropy[SA] == pytest.approx(hand["l_entropy"])
    assert ours.t[SA] == pytest.approx(hand["t"])
