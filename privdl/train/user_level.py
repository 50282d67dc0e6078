"""User-level DP-SGD: the privacy unit is a person with all their records.

With ``PrivateTrainer(..., privacy_unit="user", max_records_per_user=m)`` and
``fit(..., user_column=...)`` (or ``users=``), DP-SGD runs on *users* instead of records:

* each user keeps at most ``m`` of their records, a random subset drawn once per fit
  (from the seeded generator, ChaCha20 in ``secure_mode``, else torch's generator); the
  subset of one user depends on nothing but that user's records and the draw;
* every step is a Poisson sample of users with rate ``q_user = 1 / ceil(U / batch_size)``
  (``batch_size`` is the expected number of users per step);
* a user's gradient is the gradient of the *mean* loss over their kept records, clipped
  to ``max_grad_norm`` as one unit; the clipped user gradients are summed, Gaussian
  noise ``N(0, sigma^2 C^2)`` is added and the sum is divided by the expected number of
  users ``U q_user``;
* the accountant runs on ``(sigma, q_user, steps)``: the epsilon bounds adding or
  removing one person with all their records.

Two gradient engines compute the per-user norms:

* ``"bk"`` (:class:`UserBookKeepingStep`): book-keeping from one backward pass. A user
  is treated as one sample whose positions are their records: for a ``Linear`` layer with
  per-record inputs ``a_i`` and output gradients ``g_i`` the user's squared norm is
  ``||sum_i g_i a_i^T||^2 = sum_{i,j} (a_i . a_j)(g_i . g_j)`` (the block-diagonal Gram,
  or the per-user gradient itself when that is smaller, by the same rule as
  :mod:`privdl.train.bookkeeping`). ``Linear`` (sequences too), ``Embedding`` and
  ``LayerNorm`` are supported this way; ``Conv`` and ``GroupNorm`` layers are not (a
  record's normalization or spatial axis cannot absorb the user axis) and go to Opacus;
* ``"hooks"`` / ``"functorch"`` (:class:`OpacusUserStep`): Opacus' per-record gradients
  (``grad_sample``) summed per user before clipping.

Your own loop (``privdl.make_private(..., privacy_unit="user", users=...)``,
:mod:`privdl.train.private_loop`) uses the same engines from the gradients of the
caller's ``backward()`` of the batch's mean loss:
:meth:`UserBookKeeping.accumulate_backward_users` and
:meth:`OpacusUserStep.step_from_backward`.

Under ``torchrun`` the ranks shard users, not records (each a contiguous block of users
with all their kept records, from rank 0's draw), and reduce the clipped user sums with
one noise draw: :mod:`privdl.train.distributed`.

A training checkpoint of a user-level run keeps the kept-record draw as a
:class:`UserDraw` (one random key per record, no user id), so that a resumed fit trains
on the same records of the same users (checked against the users it is given).
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from privdl._optional import require
from privdl.errors import InputError, UsageError
from privdl.train.bookkeeping import BookKeeping, BookKeepingStep, _trainable_layers
from privdl.train.data import ChaChaRandom, TensorData
from privdl.train.run import TrainingRun

torch: Any = require("torch", "train")
from torch import nn  # noqa: E402

__all__ = [
    "PRIVACY_UNITS",
    "USER_MODES",
    "OpacusUserStep",
    "UserBatch",
    "UserBookKeeping",
    "UserBookKeepingStep",
    "UserDraw",
    "UserIndex",
    "UserTrainingRun",
    "as_user_run",
    "check_user_params",
    "choose_user_mode",
    "clipped_user_sums",
    "draw_user_keys",
    "grouping_digest",
    "make_user_step",
    "refused_dp_domains",
    "user_bk_supports",
    "user_level_encoder",
    "users_of",
]

PRIVACY_UNITS = ("record", "user")
#: the grad_sample_modes that can train at user level
USER_MODES = ("auto", "bk", "hooks", "functorch")
# layer types whose per-record gradient terms fold into one per-user "sequence"
_USER_BK_LAYERS = (nn.Linear, nn.Embedding, nn.LayerNorm)


def check_user_params(trainer: Any) -> None:
    """Check ``privacy_unit`` and ``max_records_per_user`` before a fit.

    Raises:
        UsageError: an unknown unit, a missing or bad maximum, or a gradient mode that
            cannot train at user level.
    """
    unit = trainer.privacy_unit
    if unit not in PRIVACY_UNITS:
        raise UsageError(f"privacy_unit must be one of {', '.join(map(repr, PRIVACY_UNITS))}")
    m = trainer.max_records_per_user
    if m is not None and not (isinstance(m, numbers.Integral) and not isinstance(m, bool) and m >= 1):
        raise UsageError("max_records_per_user must be a positive integer")
    if unit == "user":
        if m is None:
            raise UsageError('privacy_unit="user" needs max_records_per_user= (at most this many records per person)')
        if trainer.grad_sample_mode not in USER_MODES:
            raise UsageError(
                f'privacy_unit="user" trains with grad_sample_mode {", ".join(map(repr, USER_MODES))}, '
                f"not {trainer.grad_sample_mode!r}"
            )


def users_of(frame_or_none: Any, users: Any, user_column: str | None, n: int, *, what: str) -> Any:
    """The user key of every training record as an int64 numpy array of codes.

    Args:
        frame_or_none: the training DataFrame (with ``user_column``) or ``None``.
        users: per-record user ids for array data (any hashable values).
        user_column: the DataFrame's column of user ids.
        n: the number of training records.

    Raises:
        UsageError: neither or both of ``users`` / ``user_column``.
        InputError: a missing column, a length mismatch or missing user ids (the
            message names the column and counts rows, never a value).
    """
    import pandas as pd

    if (users is None) == (user_column is None):
        raise UsageError('privacy_unit="user": pass user_column= (DataFrame) or users= (arrays), one of them')
    if user_column is not None:
        if frame_or_none is None:
            raise UsageError("user_column= needs DataFrame training data; pass users= with arrays")
        if user_column not in frame_or_none.columns:
            raise InputError(f"{what} has no column {user_column!r}")
        values = frame_or_none[user_column]
        where = f"column {user_column!r}"
    else:
        if hasattr(users, "detach"):
            users = users.detach().cpu().numpy()
        values = pd.Series(np.asarray(users).reshape(-1) if not isinstance(users, pd.Series) else users)
        where = "users="
    if len(values) != n:
        raise InputError(f"{what}: {where} has {len(values)} entries for {n} records")
    missing = int(pd.isna(values).sum())
    if missing:
        raise InputError(f"{what}: {where} has {missing} record(s) without a user id")
    codes, _ = pd.factorize(pd.Series(values).reset_index(drop=True), sort=False)
    return codes.astype(np.int64)


@dataclass(frozen=True)
class UserBatch:
    """The records of a set of sampled users, grouped by user.

    Attributes:
        records: record indices (B,), the records of each user together.
        owner: the position of each record's user in this batch (B,), in ``0..n_users-1``.
        pos: each record's position among its user's records (B,).
        n_users: users in this batch.
        width: the most records one user has here.
        weight: ``1 / (records of the user)`` per record (B,): a user's loss is their mean.
    """

    records: Any
    owner: Any
    pos: Any
    n_users: int
    width: int
    weight: Any

    def to(self, device: Any) -> UserBatch:
        return UserBatch(
            self.records.to(device),
            self.owner.to(device),
            self.pos.to(device),
            self.n_users,
            self.width,
            self.weight.to(device),
        )


@dataclass(frozen=True)
class UserIndex:
    """Every user's kept records (at most ``max_records_per_user``), grouped by user.

    Attributes:
        records: kept record indices (R,), user by user.
        offsets: user ``u`` holds ``records[offsets[u]:offsets[u + 1]]`` (U + 1,).
        n_users: number of users.
        n_records: training records given.
        max_records_per_user: the cap.
    """

    records: Any
    offsets: Any
    n_users: int
    n_records: int
    max_records_per_user: int

    @property
    def kept(self) -> int:
        return int(self.records.shape[0])

    @property
    def dropped(self) -> int:
        """Records beyond a user's cap: not used by this fit."""
        return self.n_records - self.kept

    @classmethod
    def build(
        cls,
        codes: Any,
        max_records_per_user: int,
        *,
        generator: Any = None,
        secure: bool = False,
        keys: Any = None,
    ) -> UserIndex:
        """Group records by user and keep a random subset of at most ``m`` per user.

        Args:
            codes: the user code of every record (int64, from :func:`users_of`).
            generator: a seeded CPU ``torch.Generator`` (``None``: torch's default).
            secure: draw the subset from ChaCha20 (``os.urandom`` key).
            keys: the random key of every record, drawn before (see :class:`UserDraw`):
                the same keys and codes give the same index.
        """
        codes = np.asarray(codes, dtype=np.int64)
        n = len(codes)
        if keys is None:
            keys = draw_user_keys(n, generator=generator, secure=secure)
        order = np.lexsort((keys, codes))  # by user, then by the random key
        sorted_codes = codes[order]
        n_users = int(codes.max()) + 1 if n else 0
        counts = np.bincount(sorted_codes, minlength=n_users)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(n) - starts[sorted_codes]
        keep = rank < int(max_records_per_user)
        kept = order[keep]
        kept_counts = np.minimum(counts, int(max_records_per_user))
        offsets = np.concatenate([[0], np.cumsum(kept_counts)])
        return cls(
            records=torch.from_numpy(np.ascontiguousarray(kept, dtype=np.int64)),
            offsets=torch.from_numpy(offsets.astype(np.int64)),
            n_users=n_users,
            n_records=n,
            max_records_per_user=int(max_records_per_user),
        )

    def block(self, start: int, stop: int) -> tuple[UserIndex, Any]:
        """Users ``start`` to ``stop - 1`` on their own (a distributed rank's block, see
        :meth:`privdl.train.distributed.Group.shard_users`): an index whose records are
        positions ``0..R-1`` in the block's kept records, and those records' indices in
        the whole data (R,), user by user. A user keeps every one of their kept records."""
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        records = self.records[lo:hi]
        local = UserIndex(
            records=torch.arange(hi - lo, dtype=torch.int64),
            offsets=self.offsets[start : stop + 1] - lo,
            n_users=int(stop) - int(start),
            n_records=hi - lo,
            max_records_per_user=self.max_records_per_user,
        )
        return local, records

    def counts(self, users: Any) -> Any:
        users = users.to(torch.int64).cpu()
        return self.offsets[users + 1] - self.offsets[users]

    def gather(self, users: Any) -> UserBatch:
        """The records of ``users`` (user indices, CPU), grouped by user."""
        users = users.to(torch.int64).cpu()
        counts = self.counts(users)
        total = int(counts.sum())
        u = int(users.numel())
        owner = torch.repeat_interleave(torch.arange(u), counts)
        first = torch.cumsum(counts, 0) - counts
        pos = torch.arange(total) - first[owner] if total else torch.zeros(0, dtype=torch.int64)
        records = self.records[self.offsets[users][owner] + pos] if total else pos
        weight = 1.0 / counts[owner].to(torch.float64) if total else torch.zeros(0, dtype=torch.float64)
        width = int(counts.max()) if u else 0
        return UserBatch(records, owner, pos, u, width, weight)


_DP_DOMAINS_REFUSED = (
    'privacy_unit="user": the TableEncoder\'s DP domain estimate protects records, not users; '
    "give public domains (TableEncoder(policy=...) or hierarchies), a fitted encoder=, or "
    'domains="learned-unprotected" (reported as not covered)'
)


def user_level_encoder(encoder: Any) -> Any:
    """The encoder a user-level fit may use: a DP domain estimate is record-level, so a
    ``domains="dp"`` encoder that is not fitted yet takes public domains only
    (``domains="policy"``, which refuses when one is missing).

    Raises:
        UsageError: an unfitted encoder of another type.
    """
    from privdl.train.encoding import TableEncoder

    if hasattr(encoder, "columns_"):
        return encoder  # fitted before: its domains (and any DP estimate) are settled
    if not isinstance(encoder, TableEncoder):
        raise UsageError('privacy_unit="user" needs a TableEncoder or a fitted encoder')
    if encoder.domains == "dp":
        public = copy.copy(encoder)
        public.domains = "policy"
        return public
    return encoder


def refused_dp_domains() -> UsageError:
    """The error of a user-level fit whose encoder needs a DP domain estimate."""
    return UsageError(_DP_DOMAINS_REFUSED)


def user_bk_supports(model: nn.Module) -> bool:
    """True when user-level book-keeping can train ``model`` (every trainable layer a
    ``Linear``, ``Embedding`` or ``LayerNorm`` owning its parameters)."""
    layers = _trainable_layers(model)
    return layers is not None and all(type(m) in _USER_BK_LAYERS for m in layers)


def choose_user_mode(requested: str, model: nn.Module) -> str:
    """The gradient engine of a user-level run: ``"bk"`` when it supports every
    trainable layer (``"auto"``), else Opacus' hooks.

    Raises:
        UsageError: ``"bk"`` asked for a model with other layers.
    """
    if requested == "bk" or (requested == "auto" and user_bk_supports(model)):
        if not user_bk_supports(model):
            raise UsageError(
                'privacy_unit="user" with grad_sample_mode="bk" needs every trainable layer to be a '
                'Linear, Embedding or LayerNorm owning its parameters: use grad_sample_mode="hooks"'
            )
        return "bk"
    return "hooks" if requested == "auto" else str(requested)


def _to_users(layer: nn.Module, x: Any, g: Any, batch: UserBatch) -> tuple[Any, Any]:
    """One call's (input, output gradient) of B records as U users whose positions are
    their records: (U, width * positions, ...), zero where a user has fewer records (a
    zero output gradient contributes nothing to a norm or a sum)."""
    u, w, owner, pos = batch.n_users, batch.width, batch.owner, batch.pos
    b = g.shape[0]
    if isinstance(layer, nn.Embedding):
        xr = x.reshape(b, -1)
        gr = g.reshape(b, -1, g.shape[-1])
        xs = xr.new_zeros((u, w, xr.shape[1]))
        gs = gr.new_zeros((u, w, *gr.shape[1:]))
        xs[owner, pos] = xr
        gs[owner, pos] = gr
        return xs.reshape(u, -1), gs.reshape(u, -1, g.shape[-1])
    tail = tuple(layer.normalized_shape) if isinstance(layer, nn.LayerNorm) else (x.shape[-1],)
    gtail = tail if isinstance(layer, nn.LayerNorm) else (g.shape[-1],)
    xr = x.reshape(b, -1, *tail)
    gr = g.reshape(b, -1, *gtail)
    xs = xr.new_zeros((u, w, *xr.shape[1:]))
    gs = gr.new_zeros((u, w, *gr.shape[1:]))
    xs[owner, pos] = xr
    gs[owner, pos] = gr
    return xs.reshape(u, -1, *tail), gs.reshape(u, -1, *gtail)


class UserBookKeeping(BookKeeping):
    """Book-keeping DP-SGD with a user, not a record, as the clipped unit.

    ``expected_batch_size`` is the expected number of users per step. Every trainable
    layer must be a ``Linear``, ``Embedding`` or ``LayerNorm`` (:func:`user_bk_supports`).
    """

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        if not user_bk_supports(model):
            raise UsageError(
                "user-level book-keeping needs every trainable layer to be a Linear, Embedding "
                'or LayerNorm owning its parameters: use grad_sample_mode="hooks"'
            )
        super().__init__(model, *args, **kwargs)

    def accumulate_users(self, losses: Any, batch: UserBatch) -> Any:
        """Clip each user's gradient of their mean loss and add it to the sum.

        Returns:
            The per-user squared gradient norms before clipping (U,).
        """
        captured, self._captured = self._captured, []
        records = losses.shape[0]
        if not captured or records == 0:
            return torch.zeros(batch.n_users)
        self._check_user_rows(captured, records)
        weighted = (losses * batch.weight.to(losses.dtype)).sum()
        grads = torch.autograd.grad(weighted, [out for _, _, out, _ in captured], allow_unused=True)
        return self._clip_users(captured, list(grads), batch, losses.dtype, losses.device)

    def accumulate_backward_users(self, batch: UserBatch) -> Any:
        """Clip each user's gradient from the caller's own ``loss.backward()`` (with
        :attr:`from_backward` set, as :meth:`accumulate_backward`) and add it to the sum.

        The loss was the mean over the batch's ``B`` records (``make_private``'s loop), so
        a record's own gradient is ``B`` times its row of the output gradient, and a
        user's gradient of their mean loss is the sum of those rows times
        ``B * batch.weight``.

        Returns:
            The per-user squared gradient norms before clipping (U,).
        """
        captured, self._captured = self._captured, []
        grads, self._output_grads = self._output_grads, []
        records = int(batch.records.numel())
        if not captured or records == 0:
            return torch.zeros(batch.n_users)
        self._check_user_rows(captured, records)
        given = [g for g in grads if g is not None]
        if not given:  # no output reached the loss: this batch adds nothing
            return torch.zeros(batch.n_users)
        dtype, device = given[0].dtype, given[0].device
        scale = batch.weight.to(device, dtype) * records
        scaled = [None if g is None else g * scale.reshape(-1, *([1] * (g.ndim - 1))) for g in grads]
        return self._clip_users(captured, scaled, batch.to(device), dtype, device)

    def _check_user_rows(self, captured: list[tuple[nn.Module, Any, Any, int]], records: int) -> None:
        self._check_versions(captured)
        for layer, x, out, _ in captured:
            if x.shape[:1] != (records,) or out.shape[:1] != (records,):
                raise UsageError(
                    f"layer {self._names.get(id(layer), '?')!r} ran on part of a batch of {records}: "
                    "per-user clipping needs every trainable layer to run on the whole batch"
                )

    def _clip_users(
        self, captured: list[tuple[nn.Module, Any, Any, int]], grads: list[Any], batch: UserBatch, dtype: Any, device: Any
    ) -> Any:
        """Every call's (input, output gradient) regrouped by user, each user clipped as
        one unit and the clipped sums added; the squared norms."""
        calls: dict[int, tuple[nn.Module, list[tuple[Any, Any]]]] = {}
        for (layer, x, _, _), g in zip(captured, grads, strict=True):
            entry = calls.setdefault(id(layer), (layer, []))
            if g is not None:
                entry[1].append(_to_users(layer, x, g, batch))
        norm2 = self._clip_units(calls, captured, batch.n_users, dtype, device)
        return norm2.detach()


class UserBookKeepingStep(BookKeepingStep):
    """The DP step of user-level ``"bk"``: :class:`~privdl.train.bookkeeping.BookKeepingStep`
    over :class:`UserBatch` chunks, each user clipped as one unit by
    :class:`UserBookKeeping`."""

    engine_type = UserBookKeeping

    def _empty(self, part: UserBatch) -> bool:
        return part.records.numel() == 0

    def _accumulate(self, losses: Any, part: UserBatch) -> None:
        self.engine.accumulate_users(losses, part.to(losses.device))


class OpacusUserStep:
    """The DP step of user-level ``"hooks"`` / ``"functorch"``: Opacus' per-record
    gradients (``grad_sample``) summed per user, each user clipped to C as one unit,
    then the noisy sum as in :class:`~privdl.train.bookkeeping.BookKeeping`."""

    def __init__(self, mode: str, model: nn.Module, settings: Any) -> None:
        from privdl.train.opacus_step import grad_sample_module

        self.mode = mode
        self.settings = settings
        self.module = grad_sample_module(model, functorch=mode == "functorch")
        self.params = [p for p in model.parameters() if p.requires_grad]
        # the noise and the update of the book-keeping engine, over the same parameters
        self._noisy = _NoisyUpdate(self.params, settings)
        self._criterion = copy.copy(settings.criterion)
        if self._criterion is not None:  # None: the caller's loop computes the loss
            self._criterion.reduction = "none"

    @property
    def optimizer(self) -> Any:
        return self._noisy.optimizer

    def train(self) -> None:
        self.module.train()

    def step(self, chunks: Sequence[UserBatch], load: Callable[[UserBatch], tuple[Any, Any]]) -> Any:
        s = self.settings
        total = torch.zeros((), device=s.device)
        sums: dict[int, Any] = {}
        for batch in chunks:
            if batch.records.numel() == 0:
                continue
            xb, yb = load(batch)
            out, yb = s.shape_for_loss(self.module(xb), yb)
            losses = self._criterion(out, yb)
            if losses.ndim > 1:
                losses = losses.reshape(losses.shape[0], -1).mean(dim=1)
            b = batch.to(losses.device)
            (losses * b.weight.to(losses.dtype)).sum().backward()
            part, _ = clipped_user_sums(self.params, b, s.max_grad_norm)
            for key, value in part.items():
                sums[key] = value if key not in sums else sums[key] + value
            total = total + losses.detach().sum()
        self._noisy.apply(sums)
        return total

    def step_from_backward(self, batch: UserBatch) -> None:
        """One DP step from the caller's own ``loss.backward()`` of the mean loss over
        ``batch``'s records (``make_private``'s loop): Opacus' per-record rows, each the
        record's own gradient divided by ``B``, weighted by ``B * batch.weight`` into the
        user's gradient of their mean loss; clipped, noised and applied as :meth:`step`."""
        sums: dict[int, Any] = {}
        records = int(batch.records.numel())
        if records:
            weight = batch.weight * records
            sums, _ = clipped_user_sums(self.params, batch, self.settings.max_grad_norm, row_weight=weight)
        else:
            for p in self.params:  # an empty batch: noise only
                p.grad_sample = None
                p.grad = None
        self._noisy.apply(sums)

    def release(self) -> nn.Module:
        return self.module.to_standard_module()


def clipped_user_sums(
    params: Sequence[Any], batch: UserBatch, max_grad_norm: float, *, row_weight: Any = None
) -> tuple[dict[int, Any], Any]:
    """Opacus' per-record gradients (``p.grad_sample``, cleared here with ``p.grad``)
    summed per user, each row times ``row_weight`` (B,) when given, every user's
    gradient clipped to ``max_grad_norm`` as one unit.

    Returns:
        The clipped sums by ``id(param)`` (parameters without a ``grad_sample`` are
        left out: they contribute zero) and the per-user squared norms (U,).

    Raises:
        UsageError: a ``grad_sample`` whose rows are not ``batch``'s records.
    """
    records = int(batch.records.numel())
    per_user: list[Any] = []
    dtype, device = None, None
    for p in params:
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            per_user.append(None)
            continue
        if gs.shape[0] != records:
            raise UsageError(
                f"per-record gradients of {gs.shape[0]} rows for a batch of {records} records: "
                "step on the backward of the batch just drawn, every layer on the whole batch"
            )
        flat = gs.reshape(gs.shape[0], -1)
        if row_weight is not None:
            flat = flat * row_weight.to(flat.device, flat.dtype)[:, None]
        owner = batch.owner.to(flat.device)
        per_user.append(torch.zeros((batch.n_users, flat.shape[1]), dtype=flat.dtype, device=flat.device)
                        .index_add_(0, owner, flat))
        dtype, device = dtype or flat.dtype, device or flat.device
        p.grad_sample = None
        p.grad = None
    norm2 = torch.zeros(batch.n_users, dtype=dtype or torch.float32, device=device)
    for g in per_user:
        if g is not None:
            norm2 = norm2 + (g * g).sum(dim=1).to(norm2.dtype)
    clip = (float(max_grad_norm) / (norm2.sqrt() + 1e-6)).clamp(max=1.0)
    sums: dict[int, Any] = {}
    for p, g in zip(params, per_user, strict=True):
        if g is not None:
            sums[id(p)] = (clip.to(g.dtype) @ g).reshape(p.shape)
    return sums, norm2.detach()


class _NoisyUpdate:
    """Noise ``N(0, sigma^2 C^2)`` on the clipped sum, divided by the expected number of
    units, applied by the optimizer: :meth:`BookKeeping.step` without the hooks."""

    def __init__(self, params: list[Any], settings: Any) -> None:
        self.optimizer = settings.make_optimizer(params)
        self._engine = BookKeeping.__new__(BookKeeping)
        e = self._engine
        e.params = params
        e.original_optimizer = self.optimizer
        e.noise_multiplier = float(settings.noise_multiplier)
        e.max_grad_norm = float(settings.max_grad_norm)
        e.expected_batch_size = int(settings.expected_batch_size)
        e.generator = settings.generator
        e._rng = ChaChaRandom() if settings.secure else None
        # a distributed run: the ranks' clipped sums all-reduced, the noise added once
        e.collective = settings.collective
        e._sums = {}

    def apply(self, sums: dict[int, Any]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._engine._sums = dict(sums)
        self._engine.step()


def make_user_step(mode: str, model: nn.Module, settings: Any) -> Any:
    """The user-level DP step for ``mode`` (as :func:`choose_user_mode` returns it)."""
    if mode == "bk":
        return UserBookKeepingStep(model, settings)
    if mode in ("hooks", "functorch"):
        return OpacusUserStep(mode, model, settings)
    raise UsageError(f'privacy_unit="user" cannot train with grad_sample_mode={mode!r}')


@dataclass(frozen=True)
class UserTrainingRun(TrainingRun):
    """A run whose Poisson sampler draws users; each step trains on their kept records.

    ``max_physical_batch_size`` splits a step's users into chunks of at most that many
    records (a user is never split: they are clipped as one unit).
    """

    users: UserIndex | None = None

    def step(self, idx: Any) -> Any:
        assert self.users is not None
        users = idx.to(torch.int64).cpu()
        chunk = self.max_physical_batch_size
        if users.numel() == 0:
            parts: list[Any] = []
        elif chunk is None:
            parts = [users]
        else:
            counts = self.users.counts(users)
            cut = _split_by_records(counts.tolist(), max(int(chunk), self.users.max_records_per_user))
            parts = list(users.split(cut))
        batches = [self.users.gather(p) for p in parts]
        return self.dp_step.step(batches, self._load_users)

    def _load_users(self, batch: UserBatch) -> tuple[Any, Any]:
        from privdl.train.data import to_device

        idx = batch.records
        if isinstance(self.data, TensorData):
            idx = idx.to(self.data.X.device)
        xb, yb = self.data.batch(idx)
        return to_device(xb, self.device), to_device(yb, self.device)


def _split_by_records(counts: list[int], limit: int) -> list[int]:
    """Sizes of consecutive user groups with at most ``limit`` records each."""
    sizes: list[int] = []
    users = records = 0
    for c in counts:
        if users and records + c > limit:
            sizes.append(users)
            users = records = 0
        users += 1
        records += c
    if users:
        sizes.append(users)
    return sizes


def as_user_run(run: TrainingRun, users: UserIndex) -> UserTrainingRun:
    """``run`` (from :func:`privdl.train.run.start_run` over ``U`` users, with a user-level
    DP step from :func:`make_user_step`) as a :class:`UserTrainingRun` over ``users``."""
    fields = {f: getattr(run, f) for f in TrainingRun.__dataclass_fields__}
    return UserTrainingRun(**fields, users=users)


# --------------------------------------------------------------------------------------
# checkpoints: the draw of the kept records, kept so that a resumed run trains on them
# --------------------------------------------------------------------------------------
def draw_user_keys(n: int, *, generator: Any = None, secure: bool = False) -> Any:
    """One uniform random key per record (float64): :meth:`UserIndex.build` keeps the
    ``m`` records of each user with the smallest keys. The keys depend on nothing but
    the generator (ChaCha20 in ``secure`` mode): no user id, no data value."""
    if secure:
        return ChaChaRandom().uniform(n)
    return torch.rand(n, generator=generator, dtype=torch.float64).numpy()


def grouping_digest(codes: Any) -> str:
    """SHA-256 of the records' user codes (the grouping of records into users, in order
    of first appearance), through the project's one fingerprint."""
    from privdl.fingerprint import fingerprint_array

    return str(fingerprint_array(np.ascontiguousarray(codes, dtype=np.int64))["sha256"])


@dataclass(frozen=True)
class UserDraw:
    """What reproduces a fit's :class:`UserIndex` exactly, for a training checkpoint.

    The random keys of the kept-record draw (data-independent, see
    :func:`draw_user_keys`; under ``secure_mode`` the only copy of a CSPRNG draw),
    and what a resumed fit is checked against: the counts, the cap and a SHA-256 of
    the grouping of records into users. No user id and no data value.

    Attributes:
        keys: one float64 key per record.
        n_records, n_users: records and users of the fit.
        max_records_per_user: the cap.
        grouping_sha256: :func:`~privdl.fingerprint.fingerprint_array` of the codes.
    """

    keys: Any = field(repr=False, compare=False)
    n_records: int
    n_users: int
    max_records_per_user: int
    grouping_sha256: str

    @classmethod
    def new(cls, codes: Any, max_records_per_user: int, *, generator: Any = None, secure: bool = False) -> UserDraw:
        """A fresh draw for the user codes ``codes`` (from :func:`users_of`)."""
        codes = np.asarray(codes, dtype=np.int64)
        return cls(
            keys=draw_user_keys(len(codes), generator=generator, secure=secure),
            n_records=len(codes),
            n_users=int(codes.max()) + 1 if len(codes) else 0,
            max_records_per_user=int(max_records_per_user),
            grouping_sha256=grouping_digest(codes),
        )

    def index(self, codes: Any) -> UserIndex:
        """The :class:`UserIndex` of this draw over ``codes`` (checked first)."""
        self.check(codes, self.max_records_per_user)
        return UserIndex.build(codes, self.max_records_per_user, keys=self.keys)

    def check(self, codes: Any, max_records_per_user: int) -> None:
        """Check that a resumed fit has the checkpoint's records, cap and users.

        Raises:
            InputError: other counts, another cap or another grouping of the records
                into users (the message gives counts, never a value).
        """
        codes = np.asarray(codes, dtype=np.int64)
        if len(codes) != self.n_records:
            raise InputError(
                f"the checkpoint was trained on {self.n_records} records, not {len(codes)}: "
                "a resumed run must see the same data"
            )
        if int(max_records_per_user) != self.max_records_per_user:
            raise InputError(
                f"the checkpoint was trained with max_records_per_user={self.max_records_per_user}, "
                f"not {int(max_records_per_user)}: a resumed run keeps its cap"
            )
        users = int(codes.max()) + 1 if len(codes) else 0
        if users != self.n_users:
            raise InputError(
                f"the checkpoint was trained on {self.n_users} users, not {users}: "
                "a resumed run must see the same users"
            )
        if grouping_digest(codes) != self.grouping_sha256:
            raise InputError(
                f"the users given group the {self.n_records} records differently from the checkpoint's "
                "run: a resumed run must see the same users, records in the same order"
            )

    def to_meta(self) -> dict[str, Any]:
        """The JSON part (the keys go to a tensor file)."""
        return {
            "n_records": self.n_records,
            "n_users": self.n_users,
            "max_records_per_user": self.max_records_per_user,
            "grouping_sha256": self.grouping_sha256,
        }

    @classmethod
    def from_meta(cls, meta: Any, keys: Any) -> UserDraw:
        """Read back :meth:`to_meta` and the keys.

        Raises:
            InputError: malformed or inconsistent (a checkpoint from elsewhere).
        """
        try:
            draw = cls(
                keys=np.asarray(keys, dtype=np.float64).reshape(-1),
                n_records=int(meta["n_records"]),
                n_users=int(meta["n_users"]),
                max_records_per_user=int(meta["max_records_per_user"]),
                grouping_sha256=str(meta["grouping_sha256"]),
            )
        except (KeyError, TypeError, ValueError):
            raise InputError("checkpoint: the user-level state is malformed") from None
        if len(draw.keys) != draw.n_records:
            raise InputError("checkpoint: the user-level state does not match its record count")
        return draw
