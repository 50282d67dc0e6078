"""A generated table for the Spark scale checks: e-mail, 8 quasi-identifiers, a sensitive column.

Built lazily by Spark from ``spark.range`` (the driver never holds it): values are
drawn from hashes of the row id, so a run is reproducible. Used by
``benchmarks/scale.py`` and the slow driver-memory test.
"""

from __future__ import annotations

from typing import Any

QIS = ["age", "sex", "race", "marital", "education", "country", "workclass", "hours"]
SENSITIVE = "income"


def generated(spark: Any, rows: int) -> Any:
    """``rows`` records: ``email`` (unique), 8 quasi-identifiers, ``income`` (2 values)."""
    from pyspark.sql import functions as F

    def pick(seed: int, values: list[str]) -> Any:
        arr = F.array(*[F.lit(v) for v in values])
        return F.element_at(arr, (F.pmod(F.xxhash64(F.col("id"), F.lit(seed)), F.lit(len(values))) + 1).cast("int"))

    def number(seed: int, lo: int, span: int) -> Any:
        return (F.lit(lo) + F.pmod(F.xxhash64(F.col("id"), F.lit(seed)), F.lit(span))).cast("int")

    return spark.range(rows).select(
        F.concat(F.lit("user"), F.col("id").cast("string"), F.lit("@example.org")).alias("email"),
        number(1, 17, 74).alias("age"),
        pick(2, ["Male", "Female"]).alias("sex"),
        pick(3, ["White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"]).alias("race"),
        pick(4, [f"m{i}" for i in range(7)]).alias("marital"),
        pick(5, [f"e{i}" for i in range(16)]).alias("education"),
        pick(6, [f"c{i}" for i in range(41)]).alias("country"),
        pick(7, [f"w{i}" for i in range(8)]).alias("workclass"),
        number(8, 1, 99).alias("hours"),
        pick(9, ["<=50K", ">50K"]).alias(SENSITIVE),
    )
