"""``privdl.tune`` on several processes (``torchrun``): one search, drawn and charged once.

Every rank calls ``privdl.tune(...)`` with the same arguments and data. The search is
then the one-process search, run by all ranks together (:class:`Ranks`; ``None`` group:
one process, every call below is the plain local one):

* **same arguments**: each rank checks its own arguments first; a rank that refuses
  them makes every rank refuse (:meth:`~privdl.train.distributed.Group.together`).
  Then the ranks compare a SHA-256 per argument (the grid, epsilon, delta, dataset id,
  the law of K, the split, the score's noise, the seed, every trainer parameter but
  ``device`` and ``progress``; an object by its type) and the data (record counts and
  a sample digest, :meth:`~privdl.train.distributed.Group.check_same_data`; users and
  ``public_val`` likewise). A difference is refused on every rank, naming the argument
  (never a value), before anything is drawn or charged;
* **one plan, from rank 0** (:meth:`Ranks.on_writer`): the held-out split, delta, the
  calibrated noise multiplier, K and every candidate's hyperparameters (drawn before any
  candidate runs, independently of the data), the ledger reservation and its settlement;
  the other ranks hold no ledger, and only rank 0 writes the audit entry;
* **each candidate** is an ordinary distributed :class:`~privdl.PrivateTrainer` fit,
  with the same configuration on every rank and no ledger of its own (the search holds
  the one ledger run); the trainer shards the training split, draws its noise once per
  step on rank 0 and checks that the ranks end with identical weights;
* **one score**: rank ``r`` scores the contiguous block ``[r m / W, (r + 1) m / W)`` of
  the ``m`` held-out units (records; or users, all the records of each, so a user's
  mean accuracy is computed on one rank), the blocks' totals are all-reduced, and rank 0
  alone adds the Gaussian noise (one draw, the accounted ``(sigma, 1, 1)`` segment) and
  hands the noisy score to every rank. The sum is that of the whole held-out split, so
  the score is the one-process mechanism, and every rank selects the same candidate.
  ``public_val=`` is scored the same way, without noise.

Every rank returns the same :class:`~privdl.train.tune.TuneResult`: ``best_params_``,
``candidates_`` (rank 0's plans), ``epsilon`` (rank 0's bound of the recorded histories),
``run_id``, and a ``trainer_`` with bit-identical weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from privdl.errors import UsageError

__all__ = ["Ranks", "argument_digests"]

T = TypeVar("T")

#: trainer parameters that may differ between ranks (a rank's own device, its display)
_RANK_OWN = {"device", "progress"}


def _canonical(value: Any) -> str:
    """A text that is the same on every rank for equal arguments (an object other than
    plain data counts by its type: its repr may hold a memory address)."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_canonical(k)}: {_canonical(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_canonical(v) for v in value) + "]"
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    if isinstance(value, type):
        return f"<class {value.__module__}.{value.__qualname__}>"
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def argument_digests(arguments: Mapping[str, Any], trainer_params: Mapping[str, Any]) -> dict[str, str]:
    """SHA-256 of each argument of a search that decides it (``trainer_params`` under
    their names, but the per-rank ``device`` and ``progress``)."""
    named = dict(arguments)
    for name, value in trainer_params.items():
        if name not in _RANK_OWN:
            named[name] = value
    return {name: hashlib.sha256(_canonical(value).encode()).hexdigest() for name, value in sorted(named.items())}


class Ranks:
    """The search's view of the process group (``group`` ``None``: one process)."""

    def __init__(self, group: Any) -> None:
        self.group = group

    @property
    def several(self) -> bool:
        return self.group is not None and self.group.world_size > 1

    @property
    def writes(self) -> bool:
        """Whether this process draws, charges and writes (rank 0, or the only one)."""
        return self.group is None or self.group.is_writer

    def on_writer(self, make: Callable[[], T]) -> T:
        """``make()`` on rank 0 only, its result handed to every rank (its error raised
        on every rank)."""
        return make() if self.group is None else self.group.from_writer(make)

    def together(self, make: Callable[[], T]) -> T:
        """``make()`` on every rank; an error on one is raised on all."""
        return make() if self.group is None else self.group.together(make)

    def check_same_search(
        self, digests: Mapping[str, str], train: Any, public: Any, users: tuple[int, str] | None
    ) -> None:
        """Every rank must run the same search on the same data.

        Args:
            digests: :func:`argument_digests` of this rank's arguments.
            train: the data (``TensorData``).
            public: ``public_val`` as ``TensorData``, or ``None``.
            users: ``(number of users, SHA-256 of the grouping)`` at user level.

        Raises:
            UsageError: an argument differs between the ranks (named, never its value).
            InputError: the data, the users or ``public_val`` differ.
        """
        if not self.several:
            return
        seen = self.group.all_gather(dict(digests))
        names = sorted(set().union(*seen))
        for name in names:
            values = [s.get(name) for s in seen]
            if len(set(values)) > 1:
                ranks = [r for r, v in enumerate(values) if v != values[0]]
                raise UsageError(
                    f"privdl.tune was given another {name!r} on rank(s) {', '.join(map(str, ranks))} "
                    "than on rank 0: under torchrun every rank passes the same arguments and data "
                    "(rank 0 draws the candidates for all of them)"
                )
        self.group.check_same_data(train)
        if users is not None:
            self.group.check_same_users(*users)
        if public is not None:
            self.group.check_same_data(public, what="public_val")

    def block(self, n: int) -> tuple[int, int]:
        """This rank's contiguous block of ``n`` held-out units."""
        return (0, n) if not self.several else self.group.shard_range(n)

    def total(self, value: float) -> float:
        """The sum over the ranks of each rank's ``value`` (float64)."""
        if not self.several:
            return float(value)
        import torch

        buf = torch.tensor([float(value)], dtype=torch.float64)
        self.group.sum_([buf])
        return float(buf[0])
