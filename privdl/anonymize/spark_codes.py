"""Column encodings built on the driver from a Spark table's distinct values.

The algorithms work on integer codes (:mod:`privdl.anonymize.hierarchy`,
:class:`~privdl.anonymize.metrics.SensitiveCodes`). On Spark the driver never sees
the records: it collects each column's distinct values with their counts (one
``GROUPING SETS`` job for all columns), encodes those exactly as the pandas engine
encodes a whole column (the same hierarchy, the same value order, so the same codes
and labels), and ships the small value -> code table to the executors, where a
vectorized lookup (:meth:`ColumnCodes.encode`) codes every batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from privdl.anonymize.hierarchy import EncodedQI, encode_qi
from privdl.anonymize.metrics import SensitiveCodes
from privdl.errors import PolicyError

__all__ = [
    "ColumnCodes",
    "distinct_counts",
    "encode_qi_codes",
    "encode_sensitive_codes",
    "ordered_flags",
    "per_column_counts",
]


@dataclass(frozen=True, eq=False)
class ColumnCodes:
    """How one column's raw values map to codes.

    Attributes:
        column: the column.
        index: the distinct present (non-missing) raw values.
        codes: the code of each ``index`` entry.
        missing: the code of a missing value (null / NaN); -1 when the table had none.
    """

    column: str
    index: pd.Index
    codes: np.ndarray
    missing: int

    def encode(self, series: pd.Series) -> np.ndarray:
        """Codes of a batch of raw values (vectorized hash lookup).

        Raises:
            PolicyError: a value the table did not hold when it was encoded (the
                input changed between Spark jobs); names the column, not the value.
        """
        out = np.full(len(series), self.missing, dtype=np.int64)
        present = series.notna().to_numpy()
        if present.any():
            idx = self.index.get_indexer(series[present])
            if (idx < 0).any():
                raise PolicyError(f"column {self.column!r}: a value was not in the table when it was encoded")
            out[present] = self.codes[idx]
        if self.missing < 0 and not present.all():
            raise PolicyError(f"column {self.column!r}: a missing value was not in the table when it was encoded")
        return out


def per_column_counts(sdf: Any, columns: Sequence[str], measure: Any) -> dict[str, pd.DataFrame]:
    """Per column, its distinct values with ``measure`` (an aggregate, named ``__n``).

    One ``GROUPING SETS`` job for all columns (pyspark >= 4); one job per column on
    older versions.
    """
    from pyspark.sql import functions as F

    cols = list(dict.fromkeys(columns))
    if not cols:
        return {}
    if not hasattr(sdf, "groupingSets"):
        return {
            c: sdf.groupBy(F.col(f"`{c}`")).agg(measure.alias("__n")).toPandas()[[c, "__n"]]
            for c in cols
        }
    width = len(cols)
    grouped = sdf.groupingSets([[F.col(f"`{c}`")] for c in cols], *[F.col(f"`{c}`") for c in cols])
    table = grouped.agg(measure.alias("__n"), F.grouping_id().alias("__g")).toPandas()
    full = (1 << width) - 1
    return {
        c: table.loc[table["__g"] == full - (1 << (width - 1 - i)), [c, "__n"]].reset_index(drop=True)
        for i, c in enumerate(cols)
    }


def distinct_counts(sdf: Any, columns: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Per column, its distinct values and their record counts (one Spark job).

    Returns:
        column -> pandas frame with the column and ``__n`` (records per value).
    """
    from pyspark.sql import functions as F

    return per_column_counts(sdf, columns, F.count(F.lit(1)))


def encode_qi_codes(
    distinct: pd.DataFrame, column: str, spec: str | None, *, base_dir: Any = None
) -> tuple[EncodedQI, ColumnCodes]:
    """The quasi-identifier's encoding (codes emptied, to ship) and its value -> code table.

    Encoding the distinct values gives the same domain, hierarchy and codes as
    encoding the whole column: :func:`~privdl.anonymize.hierarchy.encode_qi` depends
    only on which values occur, not on how often.
    """
    values = distinct[column]
    enc = encode_qi(values, spec, column=column, base_dir=base_dir, numeric_ranges=True)
    missing = values.isna().to_numpy()
    code_missing = int(enc.codes[missing][0]) if missing.any() else -1
    codes = ColumnCodes(column, pd.Index(values[~missing]), enc.codes[~missing].astype(np.int64), code_missing)
    return dataclasses.replace(enc, codes=np.zeros(0, dtype=np.int64)), codes


def encode_sensitive_codes(
    distinct: pd.DataFrame, column: str, *, ordered: bool | None = None
) -> tuple[SensitiveCodes, ColumnCodes]:
    """A sensitive column's codes and distribution, as :func:`~privdl.anonymize.metrics.encode_sensitive`
    and :func:`~privdl.anonymize.metrics.measure` (``ordered=``) give them on the whole column."""
    values = distinct[column]
    counts = distinct["__n"].to_numpy(np.float64)
    series = values
    numeric = pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)
    if ordered and not numeric:
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().sum() == values.isna().sum():
            series, numeric = numbers, True
    codes, _ = pd.factorize(series, sort=True, use_na_sentinel=False)
    codes = np.asarray(codes, dtype=np.int64)
    n_values = int(codes.max()) + 1 if len(codes) else 0
    total = counts.sum()
    overall = np.bincount(codes, weights=counts, minlength=n_values) / max(total, 1.0)
    is_ordered = numeric if ordered is None else bool(ordered)
    missing = values.isna().to_numpy()
    code_missing = int(codes[missing][0]) if missing.any() else -1
    sens = SensitiveCodes(column, np.zeros(0, dtype=np.int64), n_values, is_ordered, overall)
    return sens, ColumnCodes(column, pd.Index(values[~missing]), codes[~missing], code_missing)


def ordered_flags(dtypes: Mapping[str, Any], columns: Sequence[str]) -> dict[str, bool]:
    """Per column, whether a Spark type is numeric (ordered EMD), as the report decides."""
    from pyspark.sql import types as T

    return {c: isinstance(dtypes[c], T.NumericType) for c in columns}
