"""Mondrian multidimensional local recoding (LeFevre, DeWitt, Ramakrishnan, ICDE 2006).

Top-down partitioning: a partition is cut in two on the quasi-identifier with the
widest normalized range (its NCP), numeric columns at the median, taxonomy columns at
a boundary between the subtrees under the partition's common ancestor. A cut is kept
only if both halves hold >= k records and, when asked, satisfy l-diversity and
t-closeness; otherwise the next-widest column is tried, and a partition no column can
cut is final. Each record is then released with its partition's range (``30-39``) or
common ancestor (``Higher education``): records, not aggregated rows.

Relaxed cuts: when no cut at a value (or subtree) boundary leaves >= k on both sides,
for instance because many records tie at the median, the partition is cut at the
median *rank* and the tied records are shared between the halves (LeFevre's relaxed
Mondrian). Both halves keep a range that covers every one of their original values.
When l or t rejects every cut near the median on every column, a second pass tries
off-centre cuts (at 1/3, 2/3, 1/4, ... of the partition's records), which often keep
both halves diverse enough.

Speed: the recursion runs level by level over all partitions at once. Records are
kept in an order where every partition is one contiguous block, so per-partition
minima and maxima are ``np.minimum.reduceat`` calls and one ``argsort`` per column
and level sorts every block at once; there is no Python loop over records or
partitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from privdl.anonymize.hierarchy import EncodedQI
from privdl.anonymize.metrics import SensitiveCodes
from privdl.anonymize.requirements import ClassRequirements
from privdl.errors import PolicyNotMetError

__all__ = ["Partitioning", "mondrian"]

# rank shares tried, in order, when l or t rejects the cuts near the median
_OFF_CENTRE = (1 / 3, 2 / 3, 1 / 4, 3 / 4, 1 / 8, 7 / 8)


@dataclass(frozen=True, eq=False)
class Partitioning:
    """Result of :func:`mondrian`.

    Attributes:
        ids_: class id of every record (0..n_classes-1).
        order_: records sorted by class; class ``c`` is ``order_[starts_[c]:starts_[c+1]]``.
        starts_: start offset of every class in ``order_`` (length n_classes + 1).
        relaxed_cuts: number of accepted cuts that shared tied records between halves.
    """

    ids_: np.ndarray
    order_: np.ndarray
    starts_: np.ndarray
    relaxed_cuts: int = 0
    rounds: int = 0
    info: dict[str, object] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        """Number of equivalence classes."""
        return len(self.starts_) - 1

    def bounds(self, qi: EncodedQI) -> tuple[np.ndarray, np.ndarray]:
        """Smallest and largest code of ``qi`` in every class."""
        gathered = qi.codes[self.order_]
        starts = self.starts_[:-1]
        return np.minimum.reduceat(gathered, starts), np.maximum.reduceat(gathered, starts)


def _widths(qis: Sequence[EncodedQI], perm: np.ndarray, starts: np.ndarray):
    lo = np.empty((len(starts), len(qis)), dtype=np.int64)
    hi = np.empty_like(lo)
    width = np.empty(lo.shape, dtype=np.float64)
    for d, qi in enumerate(qis):
        gathered = qi.codes[perm]
        lo[:, d] = np.minimum.reduceat(gathered, starts)
        hi[:, d] = np.maximum.reduceat(gathered, starts)
        width[:, d] = qi.range_loss(lo[:, d], hi[:, d])
    return lo, hi, width


def _try_cuts(
    qi: EncodedQI,
    perm: np.ndarray,
    pos: np.ndarray,
    sizes: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    req: ClassRequirements,
    relaxed: bool,
    off_centre: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut every block (records ``perm[pos]``, block sizes ``sizes``) on one column.

    Sorts the records of each block by the column (in place in ``perm``) and returns
    ``(cut, was_relaxed)``: the size of the left half per block, -1 where no cut works.
    """
    nb = len(sizes)
    local = np.repeat(np.arange(nb, dtype=np.int64), sizes)
    code = qi.codes[perm[pos]]
    order = np.argsort(local * (qi.n_codes + 1) + code, kind="stable")
    perm[pos] = perm[pos][order]
    code = code[order]
    if qi.kind == "taxonomy":
        tax = qi.tree()
        child_level = np.maximum(tax.lca_level(lo, hi) - 1, 0)
        split = tax.node_of[child_level[local], code]
    else:
        split = code
    total = len(code)
    offset = np.r_[0, np.cumsum(sizes)[:-1]]
    new_run = np.ones(total, dtype=bool)
    new_run[1:] = (split[1:] != split[:-1]) | (local[1:] != local[:-1])
    run_starts = np.flatnonzero(new_run)
    run_id = np.cumsum(new_run) - 1
    run_end = np.r_[run_starts[1:], total][run_id]
    half = sizes // 2
    med = offset + half
    a = run_starts[run_id[med]] - offset  # cut before the median's run
    b = run_end[med] - offset  # cut after it
    k = req.k
    ok_a = (a >= k) & (sizes - a >= k)
    ok_b = (b >= k) & (sizes - b >= k)
    prefer_a = ok_a & (~ok_b | (np.abs(a - sizes / 2) <= np.abs(b - sizes / 2)))
    first = np.where(prefer_a, a, np.where(ok_b, b, -1))
    second = np.where(prefer_a & ok_b, b, np.where(ok_a & ~prefer_a, a, -1))
    if off_centre:
        # second pass, once l or t rejected the cuts near the median on every column
        candidates = []
        for share in _OFF_CENTRE:
            at = (sizes * share).astype(np.int64)
            candidates.append(np.where((at >= k) & (sizes - at >= k), at, -1))
    else:
        candidates = [first, second]
        if relaxed:
            ok_m = (half >= k) & (sizes - half >= k)
            candidates.append(np.where(ok_m, half, -1))
    cut = np.full(nb, -1, dtype=np.int64)
    was_relaxed = np.zeros(nb, dtype=bool)
    rank = np.arange(total) - offset[local]
    for i, cand in enumerate(candidates):
        todo = (cut < 0) & (cand >= 0)
        if not todo.any():
            continue
        if req.checks_sensitive:
            rec = todo[local]
            groups = 2 * local[rec] + (rank[rec] >= cand[local[rec]])
            ok = req.diverse(groups, 2 * nb, rows=perm[pos[rec]])
            good = todo & ok[0::2] & ok[1::2]
        else:
            good = todo
        cut[good] = cand[good]
        was_relaxed[good] = off_centre or i == 2
    return cut, was_relaxed


def mondrian(
    qis: Sequence[EncodedQI],
    *,
    k: int,
    sensitive: Sequence[SensitiveCodes] = (),
    l: int | None = None,  # noqa: E741 - the standard name of the l-diversity target
    l_kind: str = "distinct",
    t: float | None = None,
    relaxed: bool = True,
) -> Partitioning:
    """Partition records into equivalence classes of >= k (l-diverse, t-close) records.

    Args:
        qis: the encoded quasi-identifiers (all the same length).
        k: minimum class size.
        sensitive: encoded sensitive attributes, for l and t.
        l: minimum l (distinct values, or exp(entropy) when ``l_kind="entropy"``).
        l_kind: ``"distinct"`` or ``"entropy"``.
        t: maximum EMD between a class's sensitive distribution and the table's.
        relaxed: allow cuts that share records tied at the median between halves.

    Raises:
        PolicyNotMetError: even the whole table as one class fails k, l or t.
    """
    n = len(qis[0].codes) if qis else 0
    if k < 1:
        raise PolicyNotMetError(f"k must be at least 1 (got {k})")
    if n < k:
        raise PolicyNotMetError(f"k={k} cannot be met: the table has {n} rows")
    req = ClassRequirements(int(k), tuple(sensitive), l, l_kind, t)
    if req.checks_sensitive and not req.diverse(np.zeros(n, dtype=np.int64), 1)[0]:
        raise PolicyNotMetError(
            f"l={l} ({l_kind} l-diversity) cannot be met: even the whole table as one "
            "class is not that diverse in its sensitive column(s)"
        )
    # off-centre cuts only help when l or t can reject a balanced cut
    passes = (False, True) if relaxed and req.checks_sensitive else (False,)
    perm = np.arange(n, dtype=np.int64)
    sizes = np.array([n], dtype=np.int64)
    done_chunks: list[np.ndarray] = []
    done_sizes: list[np.ndarray] = []
    relaxed_count = 0
    rounds = 0
    while len(sizes):
        rounds += 1
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        lo, hi, width = _widths(qis, perm, starts)
        by_width = np.argsort(-width, axis=1, kind="stable")
        cut = np.full(len(sizes), -1, dtype=np.int64)
        for off_centre in passes:
            pending = (sizes >= 2 * k) & (cut < 0)
            for attempt in range(len(qis)):
                dim = by_width[:, attempt]
                pending &= width[np.arange(len(sizes)), dim] > 0
                if not pending.any():
                    break
                for d in np.unique(dim[pending]).tolist():
                    blocks = pending & (dim == d)
                    pos = np.flatnonzero(np.repeat(blocks, sizes))
                    c, was_relaxed = _try_cuts(
                        qis[d],
                        perm,
                        pos,
                        sizes[blocks],
                        lo[blocks, d],
                        hi[blocks, d],
                        req,
                        relaxed,
                        off_centre,
                    )
                    cut[np.flatnonzero(blocks)] = c
                    relaxed_count += int(was_relaxed.sum())
                pending &= cut < 0
        split = cut >= 0
        final = ~split
        if final.any():
            rec_final = np.repeat(final, sizes)
            done_chunks.append(perm[rec_final])
            done_sizes.append(sizes[final])
        # children of cut blocks, in place: [start, start+cut) and [start+cut, end)
        child_sizes = np.stack([cut[split], sizes[split] - cut[split]], axis=1).reshape(-1)
        perm = perm[np.repeat(split, sizes)]
        small = child_sizes < 2 * k
        if small.any():
            rec_small = np.repeat(small, child_sizes)
            done_chunks.append(perm[rec_small])
            done_sizes.append(child_sizes[small])
            perm = perm[~rec_small]
        sizes = child_sizes[~small]
    order = np.concatenate(done_chunks) if done_chunks else np.zeros(0, dtype=np.int64)
    class_sizes = np.concatenate(done_sizes) if done_sizes else np.zeros(0, dtype=np.int64)
    class_starts = np.r_[0, np.cumsum(class_sizes)]
    ids = np.empty(n, dtype=np.int64)
    ids[order] = np.repeat(np.arange(len(class_sizes), dtype=np.int64), class_sizes)
    return Partitioning(ids, order, class_starts, relaxed_count, rounds)
