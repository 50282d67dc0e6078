"""Vectorized per-equivalence-class statistics shared by the algorithms and the metrics.

Everything here works on integer arrays: ``ids`` gives each record's class
(``0..n_classes-1``), ``codes`` a sensitive attribute's value index. One sort or one
``bincount`` per statistic, never a Python loop over classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "SensitiveCodes",
    "class_ids",
    "diversity",
    "emd",
    "encode_sensitive",
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
        return SensitiveCodes(self.column, self.codes[rows], self.n_values, self.ordered,
                              self.overall)


def encode_sensitive(series: pd.Series, *, column: str) -> SensitiveCodes:
    """Encode a sensitive column: numeric columns are ordered by value, others by text."""
    ordered = pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(
        series.dtype
    )
    codes, _ = pd.factorize(series, sort=True, use_na_sentinel=False)
    codes = np.asarray(codes, dtype=np.int64)
    n_values = int(codes.max()) + 1 if len(codes) else 0
    overall = np.bincount(codes, minlength=n_values) / max(len(codes), 1)
    return SensitiveCodes(column, codes, n_values, ordered, overall)


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
        codes, uniques = pd.factorize(frame[col], use_na_sentinel=False)
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
    ids: np.ndarray, n_classes: int, codes: np.ndarray, n_values: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (class, value) pairs sorted by class then value, with their counts."""
    width = max(n_values, 1)
    pair = ids.astype(np.int64) * width + codes
    if n_classes * width <= max(4 * len(ids), 1 << 16):
        counts = np.bincount(pair, minlength=n_classes * width)
        uniq = np.flatnonzero(counts)
        cnt = counts[uniq]
    else:
        uniq, cnt = np.unique(pair, return_counts=True)
    cls, val = np.divmod(uniq, width)
    return cls, val, cnt


def diversity(
    ids: np.ndarray, n_classes: int, sens: SensitiveCodes
) -> tuple[np.ndarray, np.ndarray]:
    """Per class: number of distinct sensitive values, and entropy (nats) of their shares."""
    cls, _, cnt = _pairs(ids, n_classes, sens.codes, sens.n_values)
    distinct = np.bincount(cls, minlength=n_classes)
    size = np.bincount(ids, minlength=n_classes)
    p = cnt / size[cls]
    entropy = -np.bincount(cls, weights=p * np.log(p), minlength=n_classes)
    return distinct, np.maximum(entropy, 0.0)


def emd(ids: np.ndarray, n_classes: int, sens: SensitiveCodes) -> np.ndarray:
    """Per class: Earth Mover's Distance between its sensitive values and the table's.

    Numeric attributes use the ordered distance (Li et al. 2007):
    ``1/(m-1) * sum_i |sum_{j<=i} (p_j - q_j)|``; categorical ones the equal distance
    ``1/2 * sum_i |p_i - q_i|``. Computed segment by segment over each class's own
    values, so the cost grows with distinct (class, value) pairs, not classes x values.
    """
    m = sens.n_values
    q = sens.overall
    cls, val, cnt = _pairs(ids, n_classes, sens.codes, m)
    size = np.bincount(ids, minlength=n_classes)
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
