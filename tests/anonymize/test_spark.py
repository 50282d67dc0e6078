"""The Spark engine releases the same guarantees as the pandas engine (slow: starts a JVM)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from privdl.anonymize.metrics import measure
from privdl.errors import PolicyNotMetError

pytest.importorskip("pyspark")

DATA = Path(__file__).resolve().parents[1] / "data"
QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]
HIER = {c: str(DATA / f"adult_hierarchy_{c}.csv") for c in QIS if c != "age"}


def _policy(**kw: object) -> SimpleNamespace:
    base = dict(
        quasi_identifiers=tuple(QIS),
        sensitive=("salary-class",),
        k=5,
        l=2,
        l_kind="distinct",
        t=0.4,
        max_suppression=0.0,
        hierarchies=HIER,
        algorithm="mondrian",
        base_dir=None,
    )
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.slow
def test_spark_chunks_meet_k_l_t_against_the_whole_table(spark) -> None:
    from privdl.anonymize.spark import generalize_spark

    frame = pd.read_csv(DATA / "adult_2000.csv", sep=";")
    result = generalize_spark(frame, _policy(), spark=spark, chunk_rows=400)
    assert result.info["chunks"] >= 2
    released = result.released
    assert released.index.equals(frame.index)
    assert list(released.columns) == list(frame.columns)
    assert (released["salary-class"] == frame["salary-class"]).all()
    got = measure(released, quasi_identifiers=QIS, sensitive=["salary-class"])
    assert got.k >= 5 and got.l_distinct["salary-class"] >= 2
    assert got.t["salary-class"] <= 0.4 + 1e-9
    with pytest.raises(PolicyNotMetError):
        generalize_spark(frame, _policy(k=5000), spark=spark)
