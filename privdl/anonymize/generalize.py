"""Dispatch a policy's quasi-identifiers to an anonymization algorithm.

:func:`generalize` is what :class:`~privdl.anonymize.anonymizer.Anonymizer` calls: it
encodes the quasi-identifiers over their hierarchies, runs Mondrian (default) or
global recoding, and returns the table with every quasi-identifier replaced by its
released label (strings), suppressed rows removed and the original row order kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from privdl.anonymize.global_recoding import global_recoding
from privdl.anonymize.hierarchy import EncodedQI, encode_qis
from privdl.anonymize.metrics import SensitiveCodes, encode_sensitive
from privdl.anonymize.mondrian import mondrian
from privdl.errors import PolicyError

__all__ = ["ALGORITHMS", "Generalization", "encode_for", "generalize", "release_ranges", "targets"]

ALGORITHMS = ("mondrian", "global")


@dataclass(frozen=True, eq=False)
class Generalization:
    """What an algorithm released.

    Attributes:
        released: input columns in input order, quasi-identifiers replaced by released
            labels, suppressed rows removed, original index order kept.
        suppressed: number of suppressed rows.
        algorithm: ``"mondrian"``, ``"global"`` or ``"none"`` (no quasi-identifiers).
        info: algorithm facts for the report (classes, lattice node, rounds...).
    """

    released: pd.DataFrame
    suppressed: int
    algorithm: str
    info: dict[str, Any] = field(default_factory=dict)


def _policy_value(policy: Any, name: str, default: Any) -> Any:
    value = getattr(policy, name, default)
    return default if value is None else value


def _labels(codes_per_record: np.ndarray, labels: np.ndarray) -> np.ndarray:
    # plain object strings, not a Categorical: grouping a categorical frame with the
    # pandas default observed=False reports empty classes of size 0
    return np.asarray(labels, dtype=object)[codes_per_record]


def encode_for(
    frame: pd.DataFrame, policy: Any, *, algorithm: str | None = None
) -> tuple[list[EncodedQI], list[SensitiveCodes]]:
    """Encode the policy's quasi-identifiers and sensitive columns of ``frame``."""
    algorithm = algorithm or _policy_value(policy, "algorithm", "mondrian")
    qis = list(_policy_value(policy, "quasi_identifiers", ()))
    sensitive = list(_policy_value(policy, "sensitive", ()))
    absent = [c for c in [*qis, *sensitive] if c not in frame.columns]
    if absent:
        raise PolicyError(f"column(s) named in the policy are not in the table: {absent}")
    encoded = encode_qis(
        frame,
        qis,
        _policy_value(policy, "hierarchies", {}),
        base_dir=getattr(policy, "base_dir", None),
        numeric_ranges=algorithm == "mondrian",
    )
    sens = [encode_sensitive(frame[c], column=c) for c in sensitive]
    return encoded, sens


def targets(policy: Any) -> tuple[str, int, int | None, str, float | None]:
    """``(algorithm, k, l, l_kind, t)`` of a policy, checked for consistency.

    Raises:
        PolicyError: unknown algorithm, or l / t without a sensitive column.
    """
    algorithm = str(_policy_value(policy, "algorithm", "mondrian"))
    if algorithm not in ALGORITHMS:
        raise PolicyError(f"unknown algorithm {algorithm!r} (choose from {list(ALGORITHMS)})")
    k = int(_policy_value(policy, "k", 1))
    l_value = getattr(policy, "l", None)
    t_value = getattr(policy, "t", None)
    l_kind = str(_policy_value(policy, "l_kind", "distinct"))
    if (l_value is not None or t_value is not None) and not _policy_value(policy, "sensitive", ()):
        raise PolicyError("l-diversity and t-closeness need at least one sensitive column")
    return algorithm, k, l_value, l_kind, t_value


def release_ranges(
    frame: pd.DataFrame,
    encoded: list[EncodedQI],
    ids: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> pd.DataFrame:
    """Copy of ``frame`` with each quasi-identifier replaced by its class's label.

    ``lo``/``hi`` are ``(n_classes, n_qis)`` code bounds, ``ids`` each record's class.
    """
    released = frame.copy()
    for d, qi in enumerate(encoded):
        released[qi.column] = _labels(ids, qi.range_labels(lo[:, d], hi[:, d]))
    return released


def generalize(frame: pd.DataFrame, policy: Any) -> Generalization:
    """Generalize ``frame``'s quasi-identifiers until the policy's k, l and t hold.

    Args:
        frame: the table (identifier columns may already be pseudonymized or dropped).
        policy: a :class:`~privdl.anonymize.policy.Policy` (``quasi_identifiers``,
            ``sensitive``, ``k``, ``l``, ``l_kind``, ``t``, ``max_suppression``,
            ``hierarchies``, ``algorithm``, ``base_dir``).

    Returns:
        The :class:`Generalization`.

    Raises:
        PolicyError: unknown algorithm, columns or hierarchy values.
        PolicyNotMetError: k, l or t cannot be met on this table.

    Example:
        >>> g = generalize(frame, Policy(quasi_identifiers=["age"], k=5))  # doctest: +SKIP
    """
    qis = list(_policy_value(policy, "quasi_identifiers", ()))
    if not qis:
        return Generalization(frame.copy(), 0, "none", {})
    algorithm, k, l_value, l_kind, t_value = targets(policy)
    encoded, sens = encode_for(frame, policy, algorithm=algorithm)
    info: dict[str, Any] = {"hierarchies": {q.column: q.spec for q in encoded}}
    if algorithm == "mondrian":
        part = mondrian(encoded, k=k, sensitive=sens, l=l_value, l_kind=l_kind, t=t_value)
        bounds = [part.bounds(qi) for qi in encoded]
        released = release_ranges(
            frame,
            encoded,
            part.ids_,
            np.stack([b[0] for b in bounds], axis=1),
            np.stack([b[1] for b in bounds], axis=1),
        )
        info.update(classes=part.n_classes, rounds=part.rounds, relaxed_cuts=part.relaxed_cuts)
        return Generalization(released, 0, algorithm, info)
    recoding = global_recoding(
        encoded,
        k=k,
        sensitive=sens,
        l=l_value,
        l_kind=l_kind,
        t=t_value,
        max_suppression=float(_policy_value(policy, "max_suppression", 0.0)),
    )
    released = frame.copy()
    for qi, level in zip(encoded, recoding.levels, strict=True):
        tax = qi.tree()
        labels = np.asarray(tax.labels[level], dtype=object)
        released[qi.column] = _labels(tax.node_of[level][qi.codes], labels)
    released = released.loc[recoding.kept]
    info.update(
        levels={q.column: lv for q, lv in zip(encoded, recoding.levels, strict=True)},
        lattice_size=recoding.lattice_size,
        nodes_evaluated=recoding.evaluated,
    )
    return Generalization(released, recoding.suppressed, algorithm, info)
