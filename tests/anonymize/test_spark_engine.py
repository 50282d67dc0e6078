"""The Spark engine on Adult: Spark in, lazy Spark out, the pandas engine's guarantees.

One session for the folder (conftest.py); each test runs few Spark jobs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privdl.anonymize.anonymizer import Anonymizer
from privdl.anonymize.metrics import measure
from privdl.anonymize.policy import Policy

pytest.importorskip("pyspark")

DATA = Path(__file__).resolve().parents[1] / "data"
QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]
HIER = {c: str(DATA / f"adult_hierarchy_{c}.csv") for c in QIS if c != "age"}


@pytest.fixture(scope="module")
def adult() -> pd.DataFrame:
    """Adult's 2,000-row sample three times (6,000 records), with an e-mail and a row id."""
    base = pd.read_csv(DATA / "adult_2000.csv", sep=";")
    frame = pd.concat([base] * 3, ignore_index=True)
    frame.insert(0, "email", [f"Person{i % 4500}@Example.org " for i in range(len(frame))])
    frame.insert(0, "rid", np.arange(len(frame), dtype=np.int64))
    return frame


def test_local_session_runs_workers_on_this_interpreter(spark) -> None:
    from pyspark.sql.functions import pandas_udf

    assert spark.conf.get("spark.pyspark.python") == sys.executable

    @pandas_udf("string")
    def worker_python(x: pd.Series) -> pd.Series:
        import sys as worker_sys

        return pd.Series([worker_sys.executable] * len(x))

    row = spark.range(1).select(worker_python("id").alias("py")).first()
    assert row is not None and row["py"] == sys.executable


def test_spark_in_spark_out_same_guarantees_as_pandas(spark, adult, key, monkeypatch) -> None:
    from pyspark.sql import DataFrame

    policy = Policy(
        identifiers=["email:pseudonymize:normalize=email"],
        quasi_identifiers=QIS,
        sensitive=["salary-class"],
        k=5,
        l=2,
        t=0.45,
        hierarchies=HIER,
    )
    pandas_run = Anonymizer(policy, key=key)
    expected = pandas_run.fit_transform(adult)
    sdf = spark.createDataFrame(adult)
    # several top-level parts on 6,000 rows, planned from a 1,500-record sample
    spark.conf.set("spark.privdl.partRows", "1000")
    spark.conf.set("spark.privdl.sampleRows", "1500")
    collected: list[int] = []
    frame_class = type(sdf)  # the concrete class (pyspark.sql.classic...)
    real_to_pandas, real_collect = frame_class.toPandas, frame_class.collect

    def to_pandas(self):  # type: ignore[no-untyped-def]
        out = real_to_pandas(self)
        collected.append(len(out))
        return out

    def collect(self):  # type: ignore[no-untyped-def]
        out = real_collect(self)
        collected.append(len(out))
        return out

    monkeypatch.setattr(frame_class, "toPandas", to_pandas)
    monkeypatch.setattr(frame_class, "collect", collect)
    try:
        anonymizer = Anonymizer(policy, key=key, engine="spark")
        released = anonymizer.fit_transform(sdf)
    finally:
        spark.conf.unset("spark.privdl.partRows")
        spark.conf.unset("spark.privdl.sampleRows")
    # lazy: a Spark DataFrame, and the driver only ever received small statistics
    assert isinstance(released, DataFrame)
    assert collected and max(collected) < len(adult) / 2
    monkeypatch.undo()
    report = anonymizer.report_
    assert report.algorithm_info["engine"] == "spark" and report.algorithm_info["parts"] >= 3
    got = released.toPandas().sort_values("rid").reset_index(drop=True)
    assert len(got) == len(adult) and list(got.columns) == list(adult.columns)
    # the report's figures are the released table's, recomputed here with pandas
    check = measure(got, quasi_identifiers=QIS, sensitive=["salary-class"], k_target=5, ordered={"salary-class": False})
    for name in ("rows", "classes", "k", "l_distinct", "class_sizes", "discernibility", "unique_share"):
        assert report.after[name] == getattr(check, name), name
    assert report.after["t"]["salary-class"] == pytest.approx(check.t["salary-class"])
    assert report.after["l_entropy"]["salary-class"] == pytest.approx(check.l_entropy["salary-class"])
    before = measure(adult, quasi_identifiers=QIS, sensitive=["salary-class"], k_target=5, ordered={"salary-class": False})
    assert report.before["classes"] == before.classes and report.before["k"] == before.k
    assert check.k >= 5 and check.l_distinct["salary-class"] >= 2 and check.t["salary-class"] <= 0.45 + 1e-9
    # judged with the linkable row id counted, as the pandas engine judges: not met
    assert report.policy_met == pandas_run.report_.policy_met == {"k": False, "l": False, "t": False}
    # sensitive values and passthrough columns untouched, row for row
    assert (got["salary-class"] == adult["salary-class"]).all()
    # identical tokens: the pandas engine's, byte for byte, per record
    assert (got["email"] == expected["email"]).all()
    # NCP within 2 points of the pandas engine on the same rows
    ncp_spark = report.information_loss["ncp"]
    ncp_pandas = pandas_run.report_.information_loss["ncp"]
    assert abs(ncp_spark - ncp_pandas) <= 0.02, (ncp_spark, ncp_pandas)
    # the linkable-columns section: the row id is found and measured, as with pandas
    assert set(report.linkable) == set(pandas_run.report_.linkable) == {"rid"}
    assert report.linkable_risk is not None and report.linkable_risk["k"] == 1
    assert report.summary()["k"] == pandas_run.report_.summary()["k"] == 1
    # the subjects stream the released pseudonyms (no collect of the column)
    assert set(anonymizer.subjects_) == set(expected["email"].dropna())


def test_identifier_transforms_match_the_pandas_engine(spark, users, key) -> None:
    from privdl.anonymize.spark_transforms import transform_identifiers

    policy = Policy(
        identifiers=[
            "user_id",
            "email:pseudonymize:normalize=email,domain=crm",
            "full_name:redact",
            "phone:mask:keep_last=2",
            "ip:encrypt",
            "birth_date:shift_dates:by=user_id,max_days=20",
            "city:drop",
        ],
        keep=["signup_date"],
    )
    expected = Anonymizer(policy, key=key).fit_transform(users)
    got = transform_identifiers(spark.createDataFrame(users), policy, key).toPandas()
    assert list(got.columns) == list(expected.columns)
    for column in ("user_id", "email", "full_name", "phone", "ip", "birth_date"):
        assert got[column].tolist() == expected[column].tolist(), column


def test_policy_not_met_and_global_recoding_are_refused(spark, key) -> None:
    from privdl.errors import PolicyError, PolicyNotMetError

    frame = spark.createDataFrame(pd.DataFrame({"age": [30, 31, 32], "s": ["a", "b", "c"]}))
    with pytest.raises(PolicyNotMetError, match="k=5 cannot be met"):
        Anonymizer(Policy(quasi_identifiers=["age"], k=5), engine="spark").fit_transform(frame)
    with pytest.raises(PolicyError, match="one machine"):
        Anonymizer(Policy(quasi_identifiers=["age"], k=2, algorithm="global"), engine="spark").fit_transform(frame)


def test_a_pandas_frame_with_the_spark_engine_still_comes_back_as_pandas(spark, adult) -> None:
    frame = adult.drop(columns=["email", "rid"]).iloc[:600]
    policy = Policy(quasi_identifiers=QIS, sensitive=["salary-class"], k=5, hierarchies=HIER)
    released = Anonymizer(policy, engine="spark").fit_transform(frame)
    assert isinstance(released, pd.DataFrame) and released.index.equals(frame.index)
    assert measure(released, quasi_identifiers=QIS).k >= 5
