"""What every equivalence class must meet: k records, l-diversity and t-closeness.

Mondrian asks it of every candidate cut and global recoding of every lattice node:
one value holds the targets and one method answers for all classes at once, so the two
algorithms cannot drift apart on what "l-diverse" or "t-close" means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privdl.anonymize.metrics import SensitiveCodes, diversity, emd

__all__ = ["ClassRequirements"]

# slack for float round-off in entropy and EMD comparisons
_EPS = 1e-12


@dataclass(frozen=True)
class ClassRequirements:
    """The targets every class must meet (``None``: not asked).

    Attributes:
        k: minimum class size (records).
        sensitive: encoded sensitive attributes that l and t are checked on.
        l: minimum l (distinct values, or exp(entropy) when ``l_kind="entropy"``).
        l_kind: ``"distinct"`` or ``"entropy"``.
        t: maximum EMD between a class's sensitive distribution and the table's.
    """

    k: int
    sensitive: tuple[SensitiveCodes, ...] = ()
    l: int | None = None  # noqa: E741 - the standard name of the l-diversity target
    l_kind: str = "distinct"
    t: float | None = None

    @property
    def checks_sensitive(self) -> bool:
        """Whether l or t is asked of at least one sensitive attribute."""
        return bool(self.sensitive) and (self.l is not None or self.t is not None)

    def diverse(
        self,
        ids: np.ndarray,
        n_classes: int,
        *,
        rows: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per class of ``ids``: do l and t hold in every sensitive attribute?

        Args:
            ids: class id of every entry (0..n_classes-1).
            n_classes: number of classes.
            rows: the records ``ids`` labels, when they are a subset of the table
                (default: every record, in order).
            weights: records per entry, when entries are aggregated rows.
        """
        ok = np.ones(n_classes, dtype=bool)
        for sens in self.sensitive:
            sub = sens if rows is None else sens.subset(rows)
            if self.l is not None:
                distinct, entropy = diversity(ids, n_classes, sub, weights)
                if self.l_kind == "entropy":
                    ok &= entropy >= np.log(self.l) - _EPS
                else:
                    ok &= distinct >= self.l
            if self.t is not None:
                ok &= emd(ids, n_classes, sub, weights) <= self.t + _EPS
        return ok

    def met(self, ids: np.ndarray, n_classes: int, *, weights: np.ndarray | None = None) -> np.ndarray:
        """Per class of ``ids``: at least k records, and l and t hold (see :meth:`diverse`)."""
        sizes = np.bincount(ids, weights=weights, minlength=n_classes)
        return (sizes >= self.k) & self.diverse(ids, n_classes, weights=weights)
