"""The membership-inference test: the loss-threshold attack (Yeom et al., 2018).

The attacker guesses "member" when a record's loss under the model is below a
threshold. Over held-out training records (members) and records never trained on
(non-members), the attack's ROC AUC and its best advantage (max over thresholds of
true-positive rate minus false-positive rate) measure how much the model reveals about
membership. (epsilon, delta)-DP bounds the advantage of *any* attack by
``(e^epsilon - 1 + 2 delta) / (e^epsilon + 1)``; the audit is a sanity check that can
find leaks, never a proof of privacy.

("audit" in privdl names the GDPR evidence log, :mod:`privdl.audit`; this module is
the empirical *membership* test a privacy report can include.)

The result holds no mean loss: the mean loss on the members is the exact training loss
of those records, computed without noise, and is not released.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from privdl.errors import InputError
from privdl.serialize import JSONSerializable, ReadByName

__all__ = ["MembershipInference", "dp_advantage_bound", "loss_threshold_test"]


@dataclass(frozen=True)
class MembershipInference(ReadByName, JSONSerializable):
    """Result of a loss-threshold membership-inference attack.

    Attributes:
        auc: ROC AUC of the attack (0.5 = guessing).
        advantage: max over thresholds of TPR - FPR (0 = guessing, 1 = perfect).
        n_members: number of member records attacked.
        n_non_members: number of non-member records attacked.
        dp_bound: the largest advantage (epsilon, delta)-DP allows any attack, or None.
    """

    auc: float
    advantage: float
    n_members: int
    n_non_members: int
    dp_bound: float | None = None

    # read by from_dict and dropped: files written before the result left them out
    _DROPPED: ClassVar[tuple[str, ...]] = ("mean_loss_members", "mean_loss_non_members")

    _json_kind: ClassVar[str] = "membership-inference result"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MembershipInference:
        """Load from :meth:`to_dict` output (older results with mean losses too)."""
        try:
            kept = {k: v for k, v in dict(data).items() if k not in cls._DROPPED}
            return cls(**kept)
        except TypeError as exc:
            raise InputError("not a privdl membership-inference result") from exc


def dp_advantage_bound(epsilon: float, delta: float) -> float:
    """Largest membership advantage (TPR - FPR) any attack has against (epsilon, delta)-DP."""
    if math.isinf(epsilon) or epsilon > 700:
        return 1.0
    a = math.exp(epsilon)
    return min(1.0, (a - 1 + 2 * delta) / (a + 1))


def _losses(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values)
    arr = arr.astype(np.float64).reshape(-1)
    if arr.size == 0:
        raise InputError(f"membership audit: no {what} records")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"membership audit: {int((~np.isfinite(arr)).sum())} {what} losses are not finite")
    return arr


def loss_threshold_test(
    member_losses: Any,
    non_member_losses: Any,
    *,
    epsilon: float | None = None,
    delta: float | None = None,
) -> MembershipInference:
    """Run the loss-threshold attack on per-record losses.

    Args:
        member_losses: losses of records the model was trained on.
        non_member_losses: losses of records it never saw.
        epsilon: the model's epsilon, to report the DP bound beside the result.
        delta: the model's delta.

    Returns:
        The attack's AUC and advantage.

    Example:
        >>> r = loss_threshold_test([0.1, 0.2, 0.3], [0.9, 1.0, 1.1])
        >>> r.auc, r.advantage
        (1.0, 1.0)
    """
    m = _losses(member_losses, "member")
    n = _losses(non_member_losses, "non-member")
    # Score = -loss: members are expected to have lower loss. AUC by ranks (ties count half).
    scores = np.concatenate([-m, -n])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    auc = (ranks[: m.size].sum() - m.size * (m.size + 1) / 2.0) / (m.size * n.size)
    # Advantage: sweep thresholds over every distinct loss ("member" when loss <= t).
    thresholds = np.unique(np.concatenate([m, n]))
    tpr = np.searchsorted(np.sort(m), thresholds, side="right") / m.size
    fpr = np.searchsorted(np.sort(n), thresholds, side="right") / n.size
    advantage = float(max(0.0, np.max(tpr - fpr)))
    bound = dp_advantage_bound(epsilon, delta or 0.0) if epsilon is not None else None
    return MembershipInference(
        auc=float(auc),
        advantage=advantage,
        n_members=int(m.size),
        n_non_members=int(n.size),
        dp_bound=bound,
    )
