"""Cross-check: k, l and t that privdl reports equal pycanon's on the released table."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from privdl.anonymize.generalize import generalize
from privdl.anonymize.metrics import measure

pycanon = pytest.importorskip("pycanon.anonymity")

DATA = Path(__file__).resolve().parents[1] / "data"
QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]
HIER = {c: str(DATA / f"adult_hierarchy_{c}.csv") for c in QIS if c != "age"}


def _released(algorithm: str, **targets: object) -> pd.DataFrame:
    frame = pd.read_csv(DATA / "adult_2000.csv", sep=";")
    hierarchies = dict(HIER)
    if algorithm == "global":
        hierarchies["age"] = str(DATA / "adult_hierarchy_age.csv")
    policy = SimpleNamespace(
        quasi_identifiers=tuple(QIS),
        sensitive=("salary-class",),
        l_kind="distinct",
        max_suppression=0.05,
        hierarchies=hierarchies,
        algorithm=algorithm,
        base_dir=None,
        **targets,
    )
    released = generalize(frame, policy).released
    # pycanon groups with pandas and wants plain text columns
    return released.astype({c: str for c in QIS}).reset_index(drop=True)


@pytest.mark.parametrize(
    ("algorithm", "targets"),
    [
        ("mondrian", {"k": 5, "l": None, "t": None}),
        ("mondrian", {"k": 4, "l": 2, "t": 0.35}),
        ("global", {"k": 5, "l": 2, "t": None}),
    ],
)
def test_k_l_t_equal_pycanon(algorithm: str, targets: dict[str, object]) -> None:
    released = _released(algorithm, **targets)
    ours = measure(released, quasi_identifiers=QIS, sensitive=["salary-class"])
    sa = ["salary-class"]
    assert ours.k == pycanon.k_anonymity(released, QIS)
    assert ours.l_distinct["salary-class"] == pycanon.l_diversity(released, QIS, sa)
    assert int(ours.l_entropy["salary-class"] + 1e-9) == pycanon.entropy_l_diversity(released, QIS, sa)
    assert ours.t["salary-class"] == pytest.approx(pycanon.t_closeness(released, QIS, sa))
    if targets["k"]:
        assert ours.k >= targets["k"]


def test_numeric_sensitive_t_equals_pycanon() -> None:
    frame = pd.read_csv(DATA / "adult_2000.csv", sep=";")
    qis = ["sex", "race", "workclass"]
    ours = measure(frame, quasi_identifiers=qis, sensitive=["age"])
    assert ours.t["age"] == pytest.approx(pycanon.t_closeness(frame, qis, ["age"]))
