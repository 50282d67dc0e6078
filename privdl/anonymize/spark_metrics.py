"""k, l, t, risk, NCP and the linkable-column checks of a Spark table, by Spark aggregations.

:func:`measure_spark` returns the same :class:`~privdl.anonymize.metrics.TableMetrics`
as :func:`~privdl.anonymize.metrics.measure` on the same rows:

1. ``cells``: the table grouped by quasi-identifiers and sensitive columns, with a
   record count (one shuffle; persisted while the figures are read);
2. one ``GROUPING SETS`` job on the cells: each sensitive column's distribution
   (t's reference, as ``measure`` takes it from the table measured) and each
   quasi-identifier's released labels with their counts (for the NCP);
3. the cells are shuffled by a hash of the quasi-identifiers into buckets, so every
   class lies in one bucket; each bucket computes its classes' sizes, distinct
   values, entropy and EMD with the vectorized functions of
   :mod:`privdl.anonymize.metrics` (weighted by the counts) and returns one row of
   partial figures; the driver combines them (sums, minima, maxima).

Only distributions, label counts and one row per bucket reach the driver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from privdl.anonymize.detect import (
    DISTINCT_SHARE,
    MIN_DISTINCT,
    SAMPLE,
    UNIQUE_SHARE,
    _text_kind,
    _text_sample,
    looks_like_identifiers,
)
from privdl.anonymize.hierarchy import EncodedQI
from privdl.anonymize.metrics import (
    SIZE_BUCKETS,
    SensitiveCodes,
    TableMetrics,
    class_ids,
    column_loss,
    diversity,
    emd,
)
from privdl.anonymize.spark_codes import ColumnCodes, encode_sensitive_codes, per_column_counts

__all__ = ["SparkMeasure", "identifier_like_spark", "linkable_columns_spark", "measure_spark"]

_N = "__privdl_n"


@dataclass(frozen=True)
class SparkMeasure:
    """:class:`TableMetrics` of a Spark table, and the information loss when asked."""

    metrics: TableMetrics
    information_loss: dict[str, Any] | None


def _bucket_schema(n_sens: int) -> str:
    parts = ["rows double", "classes long", "k long", "sumsq double", "unique_r double", "high_r double"]
    parts += [f"bc{i} long, br{i} double" for i in range(len(SIZE_BUCKETS))]
    parts += [f"ld{j} long, le{j} double, t{j} double" for j in range(n_sens)]
    return ", ".join(parts)


def _bucket_figures(qis: Sequence[str], sens_cols: Sequence[str], sens: Sequence[SensitiveCodes],
                    codes: Sequence[ColumnCodes]) -> Any:
    def figures(pdf: pd.DataFrame) -> pd.DataFrame:
        weights = pdf[_N].to_numpy(np.float64)
        ids, n_classes = class_ids(pdf, list(qis))
        sizes = np.bincount(ids, weights=weights, minlength=n_classes)
        row: dict[str, Any] = {
            "rows": float(sizes.sum()),
            "classes": n_classes,
            "k": int(sizes.min()) if n_classes else 0,
            "sumsq": float(np.sum(sizes**2)),
            "unique_r": float(sizes[sizes == 1].sum()),
            "high_r": float(sizes[sizes < 5].sum()),
        }
        for i, (_, lo, hi) in enumerate(SIZE_BUCKETS):
            inside = (sizes >= lo) & (sizes <= hi)
            row[f"bc{i}"] = int(inside.sum())
            row[f"br{i}"] = float(sizes[inside].sum())
        for j, (col, s, cc) in enumerate(zip(sens_cols, sens, codes, strict=True)):
            local = SensitiveCodes(s.column, cc.encode(pdf[col]), s.n_values, s.ordered, s.overall)
            distinct, entropy = diversity(ids, n_classes, local, weights)
            row[f"ld{j}"] = int(distinct.min())
            row[f"le{j}"] = float(entropy.min())
            row[f"t{j}"] = float(emd(ids, n_classes, local, weights).max())
        return pd.DataFrame([row])

    return figures


def measure_spark(
    sdf: Any,
    *,
    quasi_identifiers: Sequence[str],
    sensitive: Sequence[str] = (),
    k_target: int | None = None,
    suppressed: int = 0,
    ordered: Mapping[str, bool] | None = None,
    encoded: Sequence[EncodedQI] | None = None,
    buckets: int | None = None,
) -> SparkMeasure:
    """:func:`~privdl.anonymize.metrics.measure` of a Spark table, computed by Spark.

    Args:
        sdf: the Spark DataFrame (raw or released).
        quasi_identifiers, sensitive, k_target, suppressed, ordered: as for ``measure``.
        encoded: the quasi-identifiers encoded on the table that was generalized:
            also compute the information loss (as
            :func:`~privdl.anonymize.metrics.information_loss`).
        buckets: how many buckets the classes are spread over (default: the
            session's shuffle partitions).
    """
    from pyspark.sql import functions as F

    qis = list(dict.fromkeys(quasi_identifiers))
    sens_cols = [c for c in sensitive if c not in qis]
    group = [*qis, *sens_cols]
    cells = sdf.groupBy(*[F.col(f"`{c}`") for c in group]).agg(F.count(F.lit(1)).alias(_N)).persist()
    try:
        wanted = [*sensitive, *(q.column for q in encoded or ())]
        dist = _sum_counts(cells, wanted)
        sens: list[SensitiveCodes] = []
        codes: list[ColumnCodes] = []
        for c in sensitive:
            s, cc = encode_sensitive_codes(dist[c], c, ordered=(ordered or {}).get(c))
            sens.append(s)
            codes.append(cc)
        n_buckets = int(buckets or sdf.sparkSession.conf.get("spark.sql.shuffle.partitions"))
        bucket = F.pmod(F.xxhash64(*[F.col(f"`{c}`") for c in qis]), F.lit(n_buckets)) if qis else F.lit(0)
        parts = (
            cells.groupBy(bucket.alias("__privdl_b"))
            .applyInPandas(_bucket_figures(qis, list(sensitive), sens, codes), schema=_bucket_schema(len(sensitive)))
            .toPandas()
        )
    finally:
        cells.unpersist()
    n = int(np.rint(parts["rows"].sum())) if len(parts) else 0
    n_classes = int(parts["classes"].sum()) if len(parts) else 0
    k_min = int(parts["k"].min()) if n else 0
    buckets_rows = [
        [name, int(parts[f"bc{i}"].sum()), int(np.rint(parts[f"br{i}"].sum()))]
        for i, (name, _, _) in enumerate(SIZE_BUCKETS)
    ]
    l_distinct = {c: int(parts[f"ld{j}"].min()) if n else 0 for j, c in enumerate(sensitive)}
    l_entropy = {c: float(np.exp(max(parts[f"le{j}"].min(), 0.0))) if n else 0.0 for j, c in enumerate(sensitive)}
    t_value = {c: float(parts[f"t{j}"].max()) if n else 0.0 for j, c in enumerate(sensitive)}
    metrics = TableMetrics.of_classes(
        rows=n,
        classes=n_classes,
        k=k_min,
        unique_share=float(parts["unique_r"].sum()) / n if n else 0.0,
        high_risk_share=float(parts["high_r"].sum()) / n if n else 0.0,
        l_distinct=l_distinct,
        l_entropy=l_entropy,
        t=t_value,
        class_sizes=buckets_rows,
        sum_squares=float(parts["sumsq"].sum()),
        suppressed=suppressed,
        k_target=k_target,
    )
    loss = None
    if encoded is not None:
        per_column = {}
        for qi in encoded:
            labels = dist[qi.column]
            weights = labels["__n"].to_numpy(np.float64)
            cost = column_loss(labels[qi.column].astype(object), qi)
            per_column[qi.column] = float(np.dot(cost, weights) / weights.sum()) if n else 0.0
        ncp = float(np.mean(list(per_column.values()))) if per_column else 0.0
        total = n + suppressed
        loss = {
            "ncp": ncp,
            "per_column": per_column,
            "ncp_with_suppressed": (ncp * n + suppressed) / total if total else 0.0,
        }
    return SparkMeasure(metrics, loss)


def _sum_counts(cells: Any, columns: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Per column of the cells, its distinct values and summed counts (one job)."""
    from pyspark.sql import functions as F

    return per_column_counts(cells, columns, F.sum(_N))


def _sample(sdf: Any, columns: Sequence[str], rows: int, n: int) -> pd.DataFrame:
    frame = sdf.select(*[f"`{c}`" for c in columns])
    if n > 4 * SAMPLE:
        frame = frame.sample(withReplacement=False, fraction=min(1.0, 4 * SAMPLE / n), seed=0)
    return frame.limit(4 * SAMPLE).toPandas()


def identifier_like_spark(sdf: Any, columns: Sequence[str], *, rows: int) -> dict[str, str]:
    """:func:`~privdl.anonymize.detect.looks_like_identifiers` on a sample (of ~2,000 records)."""
    columns = list(columns)
    if not columns:
        return {}
    return looks_like_identifiers(_sample(sdf, columns, 4 * SAMPLE, rows), columns)


def linkable_columns_spark(sdf: Any, columns: Sequence[str], *, rows: int) -> dict[str, str]:
    """:func:`~privdl.anonymize.detect.linkable_columns` of a Spark table.

    Dates and free text are judged on a sample, as the pandas version judges them;
    cardinality (distinct values, records unique on the column alone) is counted
    exactly by Spark.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    columns = list(columns)
    if not columns:
        return {}
    dtypes = {f.name: f.dataType for f in sdf.schema.fields}
    found: dict[str, str] = {}
    rest = []
    text_cols = [c for c in columns if isinstance(dtypes[c], T.StringType)]
    sample = _sample(sdf, text_cols, 4 * SAMPLE, rows) if text_cols else None
    for c in columns:
        kind = dtypes[c]
        if isinstance(kind, T.DateType):
            found[c] = "dates"
            continue
        if isinstance(kind, T.TimestampType | T.TimestampNTZType):
            timed = sdf.where(F.col(f"`{c}`") != F.date_trunc("day", F.col(f"`{c}`"))).limit(1).count()
            found[c] = "timestamps" if timed else "dates"
            continue
        if isinstance(kind, T.StringType) and sample is not None:
            why = _text_kind(_text_sample(sample[c]))
            if why is not None:
                found[c] = why
                continue
        if isinstance(kind, T.BooleanType):
            continue
        rest.append(c)
    if rest and rows and not hasattr(sdf, "groupingSets"):
        for c in rest:
            counts = sdf.where(F.col(f"`{c}`").isNotNull()).groupBy(F.col(f"`{c}`")).count()
            row = counts.agg(F.count(F.lit(1)).alias("d"), F.sum((F.col("count") == 1).cast("long")).alias("u")).first()
            _judge(found, c, int(row["d"] or 0), int(row["u"] or 0), rows)
        rest = []
    if rest and rows:
        width = len(rest)
        grouped = sdf.groupingSets([[F.col(f"`{c}`")] for c in rest], *[F.col(f"`{c}`") for c in rest])
        per_value = grouped.agg(F.count(F.lit(1)).alias("__n"), F.grouping_id().alias("__g"))
        full = (1 << width) - 1
        gids = [full - (1 << (width - 1 - i)) for i in range(width)]
        # a null is not a value (value_counts(dropna=True)): drop each set's null group
        present = F.lit(False)
        for gid, c in zip(gids, rest, strict=True):
            present = present | ((F.col("__g") == gid) & F.col(f"`{c}`").isNotNull())
        stats = (
            per_value.where(present)
            .groupBy("__g")
            .agg(F.count(F.lit(1)).alias("distinct"), F.sum((F.col("__n") == 1).cast("long")).alias("unique"))
            .toPandas()
        )
        full = (1 << width) - 1
        for i, c in enumerate(rest):
            row = stats[stats["__g"] == full - (1 << (width - 1 - i))]
            if row.empty:
                continue
            _judge(found, c, int(row["distinct"].iloc[0]), int(row["unique"].iloc[0] or 0), rows)
    return {c: found[c] for c in columns if c in found}


def _judge(found: dict[str, str], column: str, distinct: int, unique: int, rows: int) -> None:
    """The pandas detector's high-cardinality rule, on exact Spark counts."""
    share = unique / rows
    if distinct >= MIN_DISTINCT and (distinct / rows >= DISTINCT_SHARE or share >= UNIQUE_SHARE):
        found[column] = f"high-cardinality values ({distinct} distinct, {share:.0%} of records unique on it alone)"
