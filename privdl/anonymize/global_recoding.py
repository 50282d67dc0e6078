"""Full-domain generalization (global recoding) with a suppression budget.

Every quasi-identifier is generalized to one level of its hierarchy for all records
(``age`` -> ``30-39`` everywhere), which is what downstream code that needs a
consistent encoding per column wants.

The lattice of level vectors is searched by bisection over heights (middle layer first,
then the middles of each half). Every evaluated node tags a whole cone: k-anonymity
with suppression (and distinct/entropy l-diversity) is monotone in generalization, so
below a failing node everything fails and above a satisfying node everything
satisfies without being minimal. Every minimal satisfying node is therefore evaluated,
and the one with the lowest loss wins (NCP of released records, suppressed records
counted as fully lost). Evaluations run on the table aggregated once to its distinct
(quasi-identifier, sensitive) rows, with record counts as weights.
Records in classes that miss k, l or t are suppressed when they fit in the budget.

A guard refuses lattices larger than ``max_nodes`` (coarser hierarchies or Mondrian).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from privdl.anonymize.hierarchy import EncodedQI
from privdl.anonymize.metrics import SensitiveCodes, emd
from privdl.anonymize.requirements import ClassRequirements
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
    # hashing beats sorting here; class numbers need not be in key order
    ids, _ = pd.factorize(key)
    return np.asarray(ids, dtype=np.int64)


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
    dims = len(qis)
    # sensitive values only matter for l and t; without them the table is smaller
    sens = tuple(sensitive) if (l is not None or t is not None) else ()
    req = ClassRequirements(k, sens, l, l_kind, t)
    radices = [[len(tree.labels[lv]) for lv in range(tree.height + 1)] for tree in trees]
    node_loss = [
        [
            tree.loss(
                np.full(radices[d][lv], lv), np.searchsorted(tree.node_of[lv], np.arange(radices[d][lv]))
            )
            for lv in range(tree.height + 1)
        ]
        for d, tree in enumerate(trees)
    ]
    base = _Table.from_records(
        [q.codes for q in qis],
        [s_.codes for s_ in sens],
        [q.tree().n_leaves for q in qis],
        [s_.n_values for s_ in sens],
    )
    # every node's level vector, to tag whole cones of the lattice at once
    grid = np.array(list(np.ndindex(*(h + 1 for h in heights))), dtype=np.int64).reshape(size, dims)
    height = grid.sum(axis=1)
    status = np.zeros(size, dtype=np.int8)  # 0 unknown, 1 satisfies, -1 fails
    best: tuple[float, int, tuple[int, ...]] | None = None
    evaluated = 0
    for h in _bisection_order(int(height.max())):
        for index in np.flatnonzero(height == h).tolist():
            if status[index] != 0:
                continue
            levels = tuple(int(v) for v in grid[index])
            evaluated += 1
            loss = base.evaluate(
                [trees[d].node_of[lv] for d, lv in enumerate(levels)],
                req=req,
                budget=budget,
                node_loss=[node_loss[d][lv] for d, lv in enumerate(levels)],
                radices=[radices[d][lv] for d, lv in enumerate(levels)],
                n=n,
            )
            if loss is None:
                # monotone: everything below a failing node fails too
                status[np.all(grid <= grid[index], axis=1)] = -1
                continue
            # ...and everything above a satisfying node satisfies (but is not minimal)
            status[np.all(grid >= grid[index], axis=1)] = 1
            candidate = (loss, h, levels)
            if best is None or candidate < best:
                best = candidate
    if best is None:
        raise PolicyNotMetError(
            f"no generalization meets the policy (k={k}, l={l}, t={t}) within the "
            f"suppression budget of {budget} rows"
        )
    loss, _, chosen = best
    kept = _kept_records(qis, chosen, radices, req)
    return Recoding(chosen, kept, loss, size, evaluated)


def _t_holds_on_kept(
    ids: np.ndarray,
    weights: np.ndarray | None,
    kept: np.ndarray,
    sens: Sequence[SensitiveCodes],
    t: float,
) -> bool:
    """With rows suppressed, the released table's own distribution is the reference."""
    rows = np.flatnonzero(kept)
    _, sub_ids = np.unique(ids[rows], return_inverse=True)
    sub_ids = sub_ids.reshape(-1)
    w = None if weights is None else weights[rows]
    for s_ in sens:
        codes = s_.codes[rows]
        overall = np.bincount(codes, weights=w, minlength=s_.n_values)
        ref = SensitiveCodes(s_.column, codes, s_.n_values, s_.ordered, overall / overall.sum())
        if (emd(sub_ids, int(sub_ids.max()) + 1, ref, w) > t + 1e-12).any():
            return False
    return True


def _kept_records(
    qis: Sequence[EncodedQI],
    levels: tuple[int, ...],
    radices: list[list[int]],
    req: ClassRequirements,
) -> np.ndarray:
    n = len(qis[0].codes)
    ids = _class_ids(
        [q.tree().node_of[lv][q.codes] for q, lv in zip(qis, levels, strict=True)],
        [radices[d][lv] for d, lv in enumerate(levels)],
        n,
    )
    return req.met(ids, int(ids.max()) + 1)[ids]


@dataclass(frozen=True, eq=False)
class _Table:
    """Distinct (quasi-identifier leaves, sensitive values) rows with record counts.

    Built once; every lattice node is evaluated on these rows (weighted by their
    counts) instead of on every record.
    """

    qi: np.ndarray  # (m, dims) leaf codes
    sens: np.ndarray  # (m, n_sensitive) value codes
    counts: np.ndarray  # (m,) records per row

    @classmethod
    def from_records(
        cls,
        qi_codes: list[np.ndarray],
        sens_codes: list[np.ndarray],
        qi_radices: list[int],
        sens_radices: list[int],
    ) -> _Table:
        n = len(qi_codes[0])
        cols = np.stack([*qi_codes, *sens_codes], axis=1) if n else np.zeros((0, 0))
        return cls._aggregate(cols, np.ones(n), len(qi_codes), [*qi_radices, *sens_radices])

    @classmethod
    def _aggregate(cls, cols: np.ndarray, counts: np.ndarray, dims: int, radices: list[int]) -> _Table:
        ids = _class_ids([cols[:, j] for j in range(cols.shape[1])], radices, len(cols))
        n_rows = int(ids.max()) + 1
        first = np.zeros(n_rows, dtype=np.int64)
        first[ids[::-1]] = np.arange(len(ids))[::-1]
        summed = np.bincount(ids, weights=counts, minlength=n_rows)
        rows = cols[first]
        return cls(rows[:, :dims], rows[:, dims:], summed)

    def evaluate(
        self,
        node_of: list[np.ndarray],
        *,
        req: ClassRequirements,
        budget: int,
        node_loss: list[np.ndarray],
        radices: list[int],
        n: int,
    ) -> float | None:
        """Loss of the node mapping leaves through ``node_of`` (one array per column), or
        None when it needs more than ``budget`` suppressed rows."""
        qi = [mapping[self.qi[:, d]] for d, mapping in enumerate(node_of)]
        ids = _class_ids(qi, radices, len(self.qi))
        n_classes = int(ids.max()) + 1
        local = [
            SensitiveCodes(s_.column, self.sens[:, j], s_.n_values, s_.ordered, s_.overall)
            for j, s_ in enumerate(req.sensitive)
        ]
        bad = ~replace(req, sensitive=tuple(local)).met(ids, n_classes, weights=self.counts)
        suppressed = float(self.counts[bad[ids]].sum())
        if suppressed > budget + 1e-9:
            return None
        kept = ~bad[ids]
        if (
            req.t is not None
            and local
            and suppressed > 0
            and kept.any()
            and not _t_holds_on_kept(ids, self.counts, kept, local, req.t)
        ):
            return None
        lost = sum(float((node_loss[d][codes[kept]] * self.counts[kept]).sum()) for d, codes in enumerate(qi))
        return (lost + suppressed * len(qi)) / (n * len(qi))


def _bisection_order(top: int) -> list[int]:
    """Heights 0..top, middle first then the middles of each half: tags spread fastest."""
    order: list[int] = []
    spans = [(0, top)]
    while spans:
        nxt = []
        for lo, hi in spans:
            if lo > hi:
                continue
            mid = (lo + hi) // 2
            order.append(mid)
            nxt += [(lo, mid - 1), (mid + 1, hi)]
        spans = nxt
    return order
