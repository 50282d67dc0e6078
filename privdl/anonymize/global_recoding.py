"""Full-domain generalization (global recoding) with a suppression budget.

Every quasi-identifier is generalized to one level of its hierarchy for all records
(``age`` -> ``30-39`` everywhere), which is what downstream code that needs a
consistent encoding per column wants. The search walks the lattice of level vectors
from the bottom, in order of total height. A node is evaluated only if none of its
direct predecessors already satisfies the policy: k-anonymity with suppression (and
distinct/entropy l-diversity) is monotone in generalization, so such a node satisfies
it too but cannot be minimal. Among the minimal satisfying nodes the one with the
lowest loss wins (NCP of released records, suppressed records counted as fully lost).
Records in classes that miss k, l or t are suppressed when they fit in the budget.

A guard refuses lattices larger than ``max_nodes`` (coarser hierarchies or Mondrian).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from privdl.anonymize.hierarchy import EncodedQI
from privdl.anonymize.metrics import SensitiveCodes, diversity, emd
from privdl.errors import PolicyError, PolicyNotMetError

__all__ = ["DEFAULT_MAX_NODES", "Recoding", "global_recoding"]

DEFAULT_MAX_NODES = 200_000


@dataclass(frozen=True, eq=False)
class Recoding:
    """Result of :func:`global_recoding`.

    Attributes:
        levels: chosen hierarchy level per quasi-identifier (0 = original values).
        kept: boolean mask of records that are released (the rest is suppressed).
        loss: NCP of the chosen node, suppressed records counted as 1.
        lattice_size: number of nodes in the lattice.
        evaluated: number of nodes whose classes were computed.
    """

    levels: tuple[int, ...]
    kept: np.ndarray
    loss: float
    lattice_size: int
    evaluated: int

    @property
    def suppressed(self) -> int:
        """Number of suppressed records."""
        return int((~self.kept).sum())


def _class_ids(columns: Sequence[np.ndarray], radices: Sequence[int], n: int) -> np.ndarray:
    key = np.zeros(n, dtype=np.int64)
    space = 1
    for codes, radix in zip(columns, radices, strict=True):
        if space * radix >= 2**62:
            _, key = np.unique(key, return_inverse=True)
            key = key.reshape(-1).astype(np.int64)
            space = int(key.max()) + 1
        key = key * radix + codes
        space *= radix
    if space <= max(4 * n, 1 << 16):
        counts = np.bincount(key, minlength=space)
        remap = np.cumsum(counts > 0) - 1
        return remap[key]
    _, ids = np.unique(key, return_inverse=True)
    return ids.reshape(-1)


def global_recoding(
    qis: Sequence[EncodedQI],
    *,
    k: int,
    sensitive: Sequence[SensitiveCodes] = (),
    l: int | None = None,  # noqa: E741 - the standard name of the l-diversity target
    l_kind: str = "distinct",
    t: float | None = None,
    max_suppression: float = 0.0,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> Recoding:
    """Find the minimal-loss full-domain generalization that meets k, l, t.

    Args:
        qis: quasi-identifiers encoded as taxonomies (``numeric_ranges=False``).
        k: minimum class size.
        sensitive: encoded sensitive attributes, for l and t.
        l: minimum l (distinct, or exp(entropy) with ``l_kind="entropy"``).
        l_kind: ``"distinct"`` or ``"entropy"``.
        t: maximum EMD of a class's sensitive distribution from the table's.
        max_suppression: share of records (0..1) that may be suppressed.
        max_nodes: refuse lattices with more nodes than this.

    Raises:
        PolicyError: the lattice is larger than ``max_nodes``.
        PolicyNotMetError: no node meets the policy within the suppression budget.
    """
    n = len(qis[0].codes)
    if n < k:
        raise PolicyNotMetError(f"k={k} cannot be met: the table has {n} rows")
    trees = [q.tree() for q in qis]
    heights = [tree.height for tree in trees]
    size = math.prod(h + 1 for h in heights)
    if size > max_nodes:
        raise PolicyError(
            f"global recoding lattice has {size} nodes (limit {max_nodes}): use coarser "
            "hierarchies, fewer quasi-identifiers or --algorithm mondrian"
        )
    budget = math.floor(max_suppression * n + 1e-9)
    node_codes = [
        [tree.node_of[lv][q.codes] for lv in range(tree.height + 1)]
        for q, tree in zip(qis, trees, strict=True)
    ]
    radices = [[len(tree.labels[lv]) for lv in range(tree.height + 1)] for tree in trees]
    record_loss = [
        [tree.loss(np.full(n, lv), q.codes) for lv in range(tree.height + 1)]
        for q, tree in zip(qis, trees, strict=True)
    ]
    dims = len(qis)
    strides = [math.prod(h + 1 for h in heights[d + 1 :]) for d in range(dims)]
    satisfied = np.zeros(size, dtype=bool)
    results: list[tuple[float, int, tuple[int, ...], np.ndarray]] = []
    evaluated = 0

    def evaluate(levels: tuple[int, ...]) -> np.ndarray | None:
        ids = _class_ids(
            [node_codes[d][lv] for d, lv in enumerate(levels)],
            [radices[d][lv] for d, lv in enumerate(levels)],
            n,
        )
        n_classes = int(ids.max()) + 1
        sizes = np.bincount(ids, minlength=n_classes)
        bad_class = sizes < k
        for sens in sensitive:
            if l is not None:
                distinct, entropy = diversity(ids, n_classes, sens)
                bad_class |= (
                    entropy < np.log(l) - 1e-12 if l_kind == "entropy" else distinct < l
                )
            if t is not None:
                bad_class |= emd(ids, n_classes, sens) > t + 1e-12
        if int(sizes[bad_class].sum()) > budget:
            return None
        kept = ~bad_class[ids]
        if t is not None and sensitive and not kept.all():
            # the released table's own distribution is the reference once rows are
            # suppressed: re-check t against it so the report's recomputed t holds
            rows = np.flatnonzero(kept)
            _, sub_ids = np.unique(ids[rows], return_inverse=True)
            sub_ids = sub_ids.reshape(-1)
            for sens in sensitive:
                codes = sens.codes[rows]
                overall = np.bincount(codes, minlength=sens.n_values) / len(rows)
                ref = SensitiveCodes(sens.column, codes, sens.n_values, sens.ordered, overall)
                if (emd(sub_ids, int(sub_ids.max()) + 1, ref) > t + 1e-12).any():
                    return None
        return kept

    levels_all = list(np.ndindex(*(h + 1 for h in heights)))
    levels_all.sort(key=sum)
    for levels in levels_all:
        index = sum(lv * s for lv, s in zip(levels, strides, strict=True))
        if any(levels[d] > 0 and satisfied[index - strides[d]] for d in range(dims)):
            satisfied[index] = True  # above a satisfying node: satisfies, not minimal
            continue
        evaluated += 1
        kept = evaluate(tuple(int(v) for v in levels))
        if kept is None:
            continue
        satisfied[index] = True
        n_kept = int(kept.sum())
        lost = sum(float(record_loss[d][lv][kept].sum()) for d, lv in enumerate(levels))
        loss = (lost + (n - n_kept) * dims) / (n * dims)
        results.append((loss, int(sum(levels)), tuple(int(v) for v in levels), kept))
    if not results:
        raise PolicyNotMetError(
            f"no generalization meets the policy (k={k}, l={l}, t={t}) within the "
            f"suppression budget of {budget} rows"
        )
    loss, _, best, kept = min(results, key=lambda r: (r[0], r[1], r[2]))
    return Recoding(best, kept, loss, size, evaluated)
