"""Privacy and utility metrics, and the per-class statistics the algorithms share.

All figures are computed from a table (the released one, never the algorithm's
intent) with one vectorized groupby. The low-level helpers work on integer arrays:
``ids`` gives each record's class (``0..n_classes-1``), ``codes`` a sensitive
attribute's value index. One sort or one ``bincount`` per statistic, never a Python
loop over classes.

Information loss is the normalized certainty penalty (NCP, also called GCP; Xu et al.
2006): a numeric value released as the range ``lo-hi`` costs ``(hi - lo) / (max - min)``
of the original column, a taxonomy node costs ``(leaves under it - 1) / (all leaves -
1)``, ``*`` costs 1; the table's NCP is the mean over released records and
quasi-identifiers.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from privdl.anonymize.hierarchy import MISSING_LABEL, ROOT_LABEL, EncodedQI
from privdl.serialize import JSONSerializable

__all__ = [
    "SIZE_BUCKETS",
    "SensitiveCodes",
    "TableMetrics",
    "class_ids",
    "column_loss",
    "diversity",
    "emd",
    "encode_sensitive",
    "information_loss",
    "measure",
]


@dataclass(frozen=True, eq=False)
class SensitiveCodes:
    """One sensitive attribute as codes, with its distribution over the whole table.

    Attributes:
        column: column name.
        codes: value index per record (missing is a value of its own).
        n_values: number of distinct values.
        ordered: True for numeric attributes (ordered EMD), False for categorical
            (equal-distance EMD).
        overall: the whole table's distribution over the values (sums to 1).
    """

    column: str
    codes: np.ndarray
    n_values: int
    ordered: bool
    overall: np.ndarray

    def subset(self, rows: np.ndarray) -> SensitiveCodes:
        """The same attribute restricted to ``rows``; the reference distribution is kept."""
        return SensitiveCodes(self.column, self.codes[rows], self.n_values, self.ordered, self.overall)


def encode_sensitive(series: pd.Series, *, column: str) -> SensitiveCodes:
    """Encode a sensitive column: numeric columns are ordered by value, others by text."""
    ordered = pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)
    codes, _ = pd.factorize(series, sort=True, use_na_sentinel=False)
    codes = np.asarray(codes, dtype=np.int64)
    n_values = int(codes.max()) + 1 if len(codes) else 0
    overall = np.bincount(codes, minlength=n_values) / max(len(codes), 1)
    return SensitiveCodes(column, codes, n_values, ordered, overall)


def hashable(series: pd.Series) -> pd.Series:
    """``series`` with unhashable values (lists, dicts from JSONL) as their text; missing stays."""
    return series.map(lambda v: None if _is_na(v) else v if isinstance(v, Hashable) else repr(v))


def class_ids(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[np.ndarray, int]:
    """Equivalence class of every record on ``columns`` (missing is a value of its own).

    Returns:
        ``(ids, n_classes)`` with ids in ``0..n_classes-1``.
    """
    n = len(frame)
    if not columns:
        return np.zeros(n, dtype=np.int64), 1 if n else 0
    key = np.zeros(n, dtype=np.int64)
    radix = 1
    for col in columns:
        try:
            codes, uniques = pd.factorize(frame[col], use_na_sentinel=False)
        except TypeError:  # unhashable values (lists from JSONL): group on their text
            codes, uniques = pd.factorize(hashable(frame[col]), use_na_sentinel=False)
        size = max(len(uniques), 1)
        if radix * size >= 2**62:
            # compress before the mixed-radix key could overflow int64
            _, key = np.unique(key, return_inverse=True)
            key = key.reshape(-1).astype(np.int64)
            radix = int(key.max()) + 1 if n else 1
        key = key * size + np.asarray(codes, dtype=np.int64)
        radix *= size
    _, ids = np.unique(key, return_inverse=True)
    ids = ids.reshape(-1).astype(np.int64)
    return ids, int(ids.max()) + 1 if n else 0


def _pairs(
    ids: np.ndarray,
    n_classes: int,
    codes: np.ndarray,
    n_values: int,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (class, value) pairs sorted by class then value, with their counts.

    ``weights`` (optional) is the number of records each entry stands for.
    """
    width = max(n_values, 1)
    pair = ids.astype(np.int64) * width + codes
    if n_classes * width <= max(4 * len(ids), 1 << 16):
        counts = np.bincount(pair, weights=weights, minlength=n_classes * width)
        uniq = np.flatnonzero(counts)
        cnt = counts[uniq]
    elif weights is None:
        uniq, cnt = np.unique(pair, return_counts=True)
    else:
        uniq, inverse = np.unique(pair, return_inverse=True)
        cnt = np.bincount(inverse.reshape(-1), weights=weights)
    cls, val = np.divmod(uniq, width)
    return cls, val, cnt


def diversity(
    ids: np.ndarray, n_classes: int, sens: SensitiveCodes, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per class: number of distinct sensitive values, and entropy (nats) of their shares.

    ``weights`` (optional): records per entry, when entries are aggregated rows.
    """
    cls, _, cnt = _pairs(ids, n_classes, sens.codes, sens.n_values, weights)
    distinct = np.bincount(cls, minlength=n_classes)
    size = np.bincount(ids, weights=weights, minlength=n_classes)
    p = cnt / size[cls]
    entropy = -np.bincount(cls, weights=p * np.log(p), minlength=n_classes)
    return distinct, np.maximum(entropy, 0.0)


def emd(
    ids: np.ndarray, n_classes: int, sens: SensitiveCodes, weights: np.ndarray | None = None
) -> np.ndarray:
    """Per class: Earth Mover's Distance between its sensitive values and the table's.

    Numeric attributes use the ordered distance (Li et al. 2007):
    ``1/(m-1) * sum_i |sum_{j<=i} (p_j - q_j)|``; categorical ones the equal distance
    ``1/2 * sum_i |p_i - q_i|``. Computed segment by segment over each class's own
    values, so the cost grows with distinct (class, value) pairs, not classes x values.
    ``weights`` (optional): records per entry, when entries are aggregated rows.
    """
    m = sens.n_values
    q = sens.overall
    cls, val, cnt = _pairs(ids, n_classes, sens.codes, m, weights)
    size = np.bincount(ids, weights=weights, minlength=n_classes)
    p = cnt / size[cls]
    if not sens.ordered:
        diff = np.bincount(cls, weights=np.abs(p - q[val]), minlength=n_classes)
        covered = np.bincount(cls, weights=q[val], minlength=n_classes)
        return 0.5 * (diff + np.maximum(1.0 - covered, 0.0))
    if m <= 1:
        return np.zeros(n_classes)
    big_q = np.cumsum(q)
    cq = np.concatenate([[0.0], np.cumsum(big_q)])  # cq[i] = sum of big_q[:i]

    def seg_sum(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        # sum over i in [a, b] of |c - Q(i)|, Q non-decreasing; empty when b < a
        b = np.minimum(b, m - 2)
        t = np.clip(np.searchsorted(big_q, c, side="left"), a, np.maximum(b + 1, a))
        below = c * (t - a) - (cq[t] - cq[a])
        above = (cq[b + 1] - cq[t]) - c * (b + 1 - t)
        return np.where(b >= a, below + above, 0.0)

    # cumulative share of the class up to and including each of its values
    starts = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
    cum = np.cumsum(p)
    base = np.repeat(np.r_[0.0, cum[starts[1:] - 1]], np.diff(np.r_[starts, len(cls)]))
    cum_p = cum - base
    last = np.r_[cls[1:] != cls[:-1], True]
    next_val = np.r_[val[1:], 0]
    seg_end = np.where(last, m - 2, next_val - 1)
    total = np.bincount(cls, weights=seg_sum(val, seg_end, cum_p), minlength=n_classes)
    first_val = val[starts]
    lead = cq[first_val]  # sum of Q(i) for i < first value, where the class share is 0
    total[cls[starts]] += lead
    return total / (m - 1)


# --- table-level metrics: privacy (k, l, t, risk) and utility (NCP, discernibility) ---

SIZE_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("1", 1, 1),
    ("2", 2, 2),
    ("3-4", 3, 4),
    ("5-9", 5, 9),
    ("10-19", 10, 19),
    ("20-49", 20, 49),
    ("50-99", 50, 99),
    ("100+", 100, 2**62),
)


@dataclass(frozen=True)
class TableMetrics(JSONSerializable):
    """Privacy figures of one table on its quasi-identifiers, from one groupby.

    Risk follows El Emam's models with the table itself as the population (no
    population table is used): prosecutor risk of a record is ``1/|its class|``;
    ``journalist_max`` therefore equals ``prosecutor_max`` and ``marketer`` (the
    expected share of records re-identified) equals ``prosecutor_avg``.

    Attributes:
        rows: records measured.
        classes: number of equivalence classes.
        k: smallest class size (0 for an empty table).
        prosecutor_max: 1 / smallest class size.
        prosecutor_avg: mean over records of 1 / class size (= classes / rows).
        journalist_max: highest journalist risk (population = this table).
        marketer: expected share of records re-identified.
        unique_share: share of records alone in their class.
        high_risk_share: share of records with prosecutor risk > 0.2 (class < 5).
        l_distinct: per sensitive column, smallest number of distinct values in a class.
        l_entropy: per sensitive column, ``exp(smallest class entropy)`` (pycanon
            reports ``int()`` of it).
        t: per sensitive column, largest EMD of a class from the table's distribution.
        class_sizes: rows of ``[bucket, classes, records]``.
        discernibility: sum of squared class sizes, plus rows x suppressed rows.
        avg_class_size: ``C_avg`` = (rows / classes) / k_target (1 is ideal), or the
            plain average class size when no target k is given.
    """

    rows: int
    classes: int
    k: int
    prosecutor_max: float
    prosecutor_avg: float
    journalist_max: float
    marketer: float
    unique_share: float
    high_risk_share: float
    l_distinct: dict[str, int]
    l_entropy: dict[str, float]
    t: dict[str, float]
    class_sizes: list[list[Any]]
    discernibility: float
    avg_class_size: float

    # to_dict / from_dict / to_json / from_json: privdl.serialize.JSONSerializable
    _json_kind = "table metrics"

    @classmethod
    def of_classes(
        cls,
        *,
        rows: int,
        classes: int,
        k: int,
        unique_share: float,
        high_risk_share: float,
        l_distinct: dict[str, int],
        l_entropy: dict[str, float],
        t: dict[str, float],
        class_sizes: list[list[Any]],
        sum_squares: float,
        suppressed: int,
        k_target: int | None,
    ) -> TableMetrics:
        """The figures from the class counts (pandas or Spark): the risks follow from
        ``k``, ``classes`` and ``rows`` (the table is its own population),
        discernibility from the sum of squared class sizes and the suppressed rows."""
        avg = rows / classes if classes else 0.0
        return cls(
            rows=rows,
            classes=classes,
            k=k,
            prosecutor_max=1.0 / k if k else 0.0,
            prosecutor_avg=classes / rows if rows else 0.0,
            journalist_max=1.0 / k if k else 0.0,
            marketer=classes / rows if rows else 0.0,
            unique_share=unique_share,
            high_risk_share=high_risk_share,
            l_distinct=l_distinct,
            l_entropy=l_entropy,
            t=t,
            class_sizes=class_sizes,
            discernibility=float(sum_squares) + float(rows + suppressed) * suppressed,
            avg_class_size=avg / k_target if k_target else avg,
        )


def measure(
    frame: pd.DataFrame,
    *,
    quasi_identifiers: Sequence[str],
    sensitive: Sequence[str] = (),
    k_target: int | None = None,
    suppressed: int = 0,
    ordered: Mapping[str, bool] | None = None,
) -> TableMetrics:
    """Measure k, l, t, re-identification risk and class sizes of ``frame``.

    Args:
        frame: the table (raw or released).
        quasi_identifiers: columns that define the equivalence classes.
        sensitive: columns checked for l-diversity and t-closeness.
        k_target: the policy's k, for ``C_avg``.
        suppressed: rows removed before release, for the discernibility penalty.
        ordered: per sensitive column, force ordered (True) or equal-distance (False)
            EMD; by default numeric columns are ordered.
    """
    n = len(frame)
    ids, n_classes = class_ids(frame, quasi_identifiers)
    sizes = np.bincount(ids, minlength=n_classes) if n else np.zeros(0, dtype=np.int64)
    rec_size = sizes[ids] if n else np.zeros(0, dtype=np.int64)
    l_distinct: dict[str, int] = {}
    l_entropy: dict[str, float] = {}
    t_value: dict[str, float] = {}
    for col in sensitive:
        series = frame[col]
        if ordered and ordered.get(col) and not pd.api.types.is_numeric_dtype(series.dtype):
            # numbers stored as text: order them by value, not alphabetically
            numbers = pd.to_numeric(series, errors="coerce")
            if numbers.isna().sum() == series.isna().sum():
                series = numbers
        sens = encode_sensitive(series, column=col)
        if ordered and col in ordered:
            sens = SensitiveCodes(col, sens.codes, sens.n_values, bool(ordered[col]), sens.overall)
        if n:
            distinct, entropy = diversity(ids, n_classes, sens)
            l_distinct[col] = int(distinct.min())
            l_entropy[col] = float(np.exp(entropy.min()))
            t_value[col] = float(emd(ids, n_classes, sens).max())
        else:
            l_distinct[col], l_entropy[col], t_value[col] = 0, 0.0, 0.0
    buckets = []
    for name, lo, hi in SIZE_BUCKETS:
        in_bucket = (sizes >= lo) & (sizes <= hi)
        buckets.append([name, int(in_bucket.sum()), int(sizes[in_bucket].sum())])
    return TableMetrics.of_classes(
        rows=n,
        classes=n_classes,
        k=int(sizes.min()) if n else 0,
        unique_share=float((rec_size == 1).mean()) if n else 0.0,
        high_risk_share=float((rec_size < 5).mean()) if n else 0.0,
        l_distinct=l_distinct,
        l_entropy=l_entropy,
        t=t_value,
        class_sizes=buckets,
        sum_squares=float(np.sum(sizes.astype(np.float64) ** 2)),
        suppressed=suppressed,
        k_target=k_target,
    )


_NUM = r"(-?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|-?inf)"
_RANGE = re.compile(rf"^\s*{_NUM}\s*-\s*{_NUM}\s*$")
_BRACKET = re.compile(rf"^\s*\[\s*{_NUM}\s*,\s*{_NUM}\s*[)\]]\s*$")


def _label_loss_numeric(label: str, qi: EncodedQI) -> float | None:
    width = qi.domain_width
    if label == MISSING_LABEL:
        return 0.0
    try:
        float(label)
        return 0.0
    except ValueError:
        pass
    match = _BRACKET.match(label) or _RANGE.match(label)
    if match is None:
        return None
    if width <= 0:
        return 0.0
    return min(max((float(match.group(2)) - float(match.group(1))) / width, 0.0), 1.0)


def column_loss(released: pd.Series, qi: EncodedQI) -> np.ndarray:
    """NCP of every released value of one quasi-identifier (0 = original, 1 = ``*``).

    Numeric ranges ``lo-hi`` cost ``(hi - lo) / (max - min)`` of the original column;
    a taxonomy node costs ``(leaves under it - 1) / (all leaves - 1)``. Labels the
    hierarchy does not know count as fully generalized, so loss is never understated.
    """
    codes, uniques = pd.factorize(released, use_na_sentinel=False)
    tree_loss = qi.taxonomy.label_loss() if qi.taxonomy is not None else {}
    losses = np.empty(len(uniques), dtype=np.float64)
    for i, value in enumerate(uniques):
        label = MISSING_LABEL if _is_na(value) else str(value)
        loss: float | None
        if label == ROOT_LABEL:
            loss = 1.0
        elif len(qi.values) and (numeric := _label_loss_numeric(label, qi)) is not None:
            loss = numeric  # numeric columns: range width, whichever algorithm ran
        else:
            loss = tree_loss.get(label)
        losses[i] = 1.0 if loss is None else loss
    return losses[codes]


def _is_na(value: object) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def information_loss(
    released: pd.DataFrame, encoded: Sequence[EncodedQI], *, suppressed: int = 0
) -> dict[str, Any]:
    """NCP (a.k.a. GCP) of a released table, overall and per column.

    Args:
        released: the released table.
        encoded: the quasi-identifiers encoded on the *original* table (their domains
            and hierarchies define the loss).
        suppressed: suppressed rows, reported separately (``ncp_with_suppressed``
            counts each as fully lost).

    Returns:
        ``{"ncp": mean over released records and columns, "per_column": {col: ncp},
        "ncp_with_suppressed": ...}``.
    """
    n = len(released)
    per_column = {
        qi.column: float(column_loss(released[qi.column], qi).mean()) if n else 0.0 for qi in encoded
    }
    ncp = float(np.mean(list(per_column.values()))) if per_column else 0.0
    total = n + suppressed
    with_supp = (ncp * n + suppressed) / total if total else 0.0
    return {"ncp": ncp, "per_column": per_column, "ncp_with_suppressed": with_supp}
