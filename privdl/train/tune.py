"""Hyperparameter tuning inside the privacy budget: ``privdl.tune`` (Papernot & Steinke).

``tune(make_model, grid, data, epsilon=3.0, ...)`` runs a *random* number K of DP
training runs, each with hyperparameters drawn uniformly from ``grid`` (independently of
the data), scores every candidate with DP on a held-out split, and releases only the
best one. K is Poisson (``distribution="poisson"``) or truncated negative binomial
(``"truncated_negative_binomial"``, shape ``eta``) with mean ``mean_runs``. The whole
search, every candidate included, is then ``(epsilon, delta)``-DP by the RDP bound of
Papernot & Steinke (ICLR 2022; :mod:`privdl.budget.accounting.tuning`), and the noise of
every candidate is calibrated so that the search meets ``epsilon``. It is charged to the
ledger as *one* run.

The candidate's mechanism: DP-SGD on the training split (records, or users with
``privacy_unit="user"``), then its accuracy on the held-out split with Gaussian noise
(sensitivity 1: one record, or one user whose accuracy is the mean over their records)
of standard deviation ``score_noise`` (as a fraction of the held-out units; at least
the training noise multiplier, in counts). The split
draws every unit into the held-out part independently with probability
``val_fraction``, so a unit's part does not depend on the others; both the training and
the score are charged for every unit. With ``public_val=`` (data declared public) the
score is exact and not charged, and all of ``data`` trains.

Only the best candidate is released: ``result.candidates_`` lists each candidate's
hyperparameters and accountant history (chosen without looking at the data), not their
scores, because the theorem covers the best candidate's output alone.

Under ``torchrun`` every rank calls ``tune`` with the same arguments and data, and the
ranks run *one* search (:mod:`privdl.train.tune_ranks`): rank 0 draws the split, K and
the candidates and holds the one ledger run, each candidate is a distributed fit, and
the held-out score is summed over the ranks and noised once; every rank returns the
same result and model.

Example:
    >>> result = tune(make_model, {"lr": [0.05, 0.1], "max_grad_norm": [0.5, 1.0]},
    ...               (X, y), epsilon=3.0, ledger="budget.db", dataset_id="ds")  # doctest: +SKIP
    >>> result.best_params_, result.epsilon                                 # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from privdl.budget.accounting import epsilon_of
from privdl.budget.accounting.tuning import DISTRIBUTIONS, gamma_for_mean, search_epsilon
from privdl.budget.accounting.units import Charge
from privdl.errors import UsageError

__all__ = ["TuneResult", "tune"]

#: trainer parameters a grid may not set: the search owns the privacy accounting
_OWNED = {"epsilon", "delta", "ledger", "dataset_id", "accountant", "audit_log", "checkpoint_dir"}


@dataclass
class TuneResult:
    """The outcome of :func:`tune`.

    Attributes:
        best_params_: the hyperparameters of the released candidate (``None`` when the
            random count K was 0: nothing is released, the budget is spent).
        trainer_: its fitted :class:`~privdl.PrivateTrainer` (its report covers the
            search), or ``None``.
        epsilon: epsilon of the whole search at ``delta`` (the Papernot-Steinke bound
            recomputed from the candidates' recorded histories).
        delta: the search's delta.
        candidates_: per candidate: ``params`` and ``history`` (no scores).
        best_score_: the released candidate's noisy held-out accuracy.
        distribution, mean_runs, eta: the law of K.
        run_id: the one ledger run charged for the search.
    """

    best_params_: dict[str, Any] | None
    trainer_: Any
    epsilon: float
    delta: float
    candidates_: list[dict[str, Any]] = field(default_factory=list)
    best_score_: float | None = None
    distribution: str = "poisson"
    mean_runs: float = 8.0
    eta: float = 1.0
    run_id: str | None = None


def _configs(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    if not isinstance(grid, Mapping) or not grid:
        raise UsageError("grid must be a non-empty mapping of trainer parameter -> values")
    owned = sorted(set(grid) & _OWNED)
    if owned:
        raise UsageError(f"grid may not set {owned[0]!r}: the search owns the privacy accounting")
    names = list(grid)
    values = [list(grid[k]) for k in names]
    if any(not v for v in values):
        raise UsageError("every grid entry needs at least one value")
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def _count(rng: np.random.Generator, distribution: str, mean_runs: float, eta: float) -> int:
    """K drawn from the search's distribution."""
    if distribution == "poisson":
        return int(rng.poisson(mean_runs))
    gamma = gamma_for_mean(mean_runs, eta)
    while True:  # truncation to K >= 1 by rejection: exactly D_{eta,gamma}
        k = int(rng.logseries(1 - gamma)) if eta == 0 else int(rng.negative_binomial(eta, gamma))
        if k >= 1:
            return k


def _history(sigma: float, n_train: int, config: Mapping[str, Any], defaults: Mapping[str, Any]) -> list:
    from privdl.train.data import steps_per_epoch

    batch = int(config.get("batch_size", defaults["batch_size"]))
    epochs = int(config.get("epochs", defaults["epochs"]))
    per_epoch = steps_per_epoch(n_train, batch)
    return [(float(sigma), 1.0 / per_epoch, per_epoch * epochs)]


def tune(
    make_model: Callable[[], Any],
    grid: Mapping[str, Sequence[Any]],
    data: Any,
    *,
    epsilon: float = 3.0,
    delta: float | None = None,
    ledger: Any = None,
    dataset_id: str | None = None,
    mean_runs: float = 8.0,
    distribution: str = "poisson",
    eta: float = 1.0,
    val_fraction: float = 0.2,
    score_noise: float = 0.01,
    public_val: Any = None,
    users: Any = None,
    accountant: str = "rdp",
    seed: int | None = None,
    audit_log: Any = None,
    **trainer_params: Any,
) -> TuneResult:
    """Random-count hyperparameter search whose total cost meets ``epsilon``.

    Args:
        make_model: returns a fresh ``torch.nn.Module`` per candidate.
        grid: trainer parameter -> candidate values (``lr``, ``max_grad_norm``,
            ``batch_size``, ``epochs``, ``optimizer``, ...); each candidate draws one
            combination uniformly.
        data: ``(X, y)`` arrays or tensors (encode a table first).
        epsilon: epsilon of the whole search.
        delta: its delta; default: half the ledger's delta (the search is charged as a
            fixed ``(epsilon, delta)``, the rest of delta stays for other runs), else
            ``1 / (10 n)``.
        ledger, dataset_id: the search is reserved as one run before the first
            candidate and settled after the last.
        mean_runs: E[K].
        distribution: ``"poisson"`` or ``"truncated_negative_binomial"``.
        eta: the truncated negative binomial's shape (1: geometric; 0: logarithmic).
        val_fraction: each unit's chance to be held out for the score.
        score_noise: standard deviation of the noisy accuracy, as a fraction.
        public_val: ``(X, y)`` declared public: the exact score on it, not charged.
        users: per-record user ids, with ``privacy_unit="user"`` in ``trainer_params``.
        accountant: the per-candidate trainers' accountant (the search bound is RDP).
        seed: for the split, K, the draws and the trainers (reproducible experiments
            only; default: the operating system's randomness).
        audit_log: one ``tune`` entry.
        trainer_params: further :class:`~privdl.PrivateTrainer` parameters for every
            candidate (e.g. ``privacy_unit="user"``, ``max_records_per_user=32``).

    Returns:
        :class:`TuneResult`.

    Raises:
        UsageError: a bad grid, data or distribution; under torchrun also an argument
            that differs between the ranks (on every rank, before anything is charged).
        InputError: bad data; under torchrun also other data, users or ``public_val``
            on some rank.
        BudgetExceededError: the ledger refuses the search (before any candidate).
    """
    from privdl.budget.accounting import check_epsilon
    from privdl.train.distributed import join
    from privdl.train.tune_ranks import Ranks, argument_digests

    # under torchrun: one search over all ranks (privdl.train.tune_ranks)
    ranks = Ranks(join(str(trainer_params.get("device", "auto")), ledger=ledger))

    def checked() -> tuple[Any, ...]:
        # every rank checks its own arguments; a refusal on one is raised on all
        check_epsilon(epsilon)
        if distribution not in DISTRIBUTIONS:
            raise UsageError(f"distribution must be one of {', '.join(map(repr, DISTRIBUTIONS))}")
        if not (0 < val_fraction < 1) and public_val is None:
            raise UsageError("val_fraction must be in (0, 1)")
        if not score_noise > 0:
            raise UsageError("score_noise must be positive")
        if ledger is not None and not dataset_id:
            raise UsageError("a ledger needs a dataset_id= to charge")
        return _checked_data(grid, data, users, public_val, trainer_params, several=ranks.several)

    configs, unit, train, codes, n_units, public = ranks.together(checked)
    arguments = {
        "grid": grid, "epsilon": epsilon, "delta": delta, "dataset_id": dataset_id, "mean_runs": mean_runs,
        "distribution": distribution, "eta": eta, "val_fraction": val_fraction, "score_noise": score_noise,
        "accountant": accountant, "seed": seed, "public_val": public_val is not None, "users": users is not None,
    }
    if ranks.several:
        from privdl.train import user_level

        grouping = None if users is None else (n_units, user_level.grouping_digest(codes))
        ranks.check_same_search(argument_digests(arguments, trainer_params), train, public, grouping)
    return _tune(
        make_model, configs, train, codes, n_units, ranks=ranks, grid=grid, epsilon=float(epsilon),
        delta=delta, ledger=ledger, dataset_id=dataset_id, mean_runs=mean_runs, distribution=distribution,
        eta=eta, val_fraction=val_fraction, score_noise=score_noise, public_val=public_val, users=users,
        unit=unit, accountant=accountant, seed=seed, audit_log=audit_log, trainer_params=trainer_params,
    )


def _checked_data(
    grid: Mapping[str, Sequence[Any]],
    data: Any,
    users: Any,
    public_val: Any,
    trainer_params: Mapping[str, Any],
    *,
    several: bool,
) -> tuple[Any, ...]:
    """The grid's configurations, the unit, the data and every record's unit code."""
    import pandas as pd

    from privdl.train.data import as_data

    configs = _configs(grid)
    unit = str(trainer_params.get("privacy_unit", "record"))
    if (unit == "user") != (users is not None):
        raise UsageError('users= goes with privacy_unit="user" (and the reverse)')
    if isinstance(data, pd.DataFrame):
        raise UsageError("tune takes (X, y) arrays: encode the table first (a TableEncoder with public domains)")
    train = as_data(data, what="training data")
    n = len(train)
    if unit == "user":
        from privdl.train.user_level import users_of

        codes = users_of(None, users, None, n, what="training data")
        n_units = int(codes.max()) + 1
    else:
        codes = np.arange(n)
        n_units = n
    # (compared between the ranks; on one process scored as given)
    public = as_data(tuple(public_val), what="public_val") if several and public_val is not None else None
    return configs, unit, train, codes, n_units, public


@dataclass(frozen=True)
class _Plan:
    """What rank 0 draws and computes before the search, for every rank."""

    held: Any  # per unit: held out (None with public_val)
    delta: float
    sigma: float
    planned: float
    k: int
    picks: tuple[int, ...]  # the candidates' configurations (indices into the grid's)


def _tune(
    make_model: Callable[[], Any],
    configs: list[dict[str, Any]],
    train: Any,
    codes: np.ndarray,
    n_units: int,
    *,
    ranks: Any,
    grid: Mapping[str, Sequence[Any]],
    epsilon: float,
    delta: float | None,
    ledger: Any,
    dataset_id: str | None,
    mean_runs: float,
    distribution: str,
    eta: float,
    val_fraction: float,
    score_noise: float,
    public_val: Any,
    users: Any,
    unit: str,
    accountant: str,
    seed: int | None,
    audit_log: Any,
    trainer_params: Mapping[str, Any],
) -> TuneResult:
    from privdl.audit import operation
    from privdl.train.params import DEFAULTS
    from privdl.train.run import open_ledger

    X, y = train.X, train.y
    n = len(train)
    # rank 0's randomness draws the split, K, the candidates and the scores' noise
    rng = np.random.default_rng(seed if seed is not None else int.from_bytes(os.urandom(16), "big"))
    # the other ranks hold no ledger: rank 0 alone reserves and settles
    ledger_obj = open_ledger(ledger) if ranks.writes else None
    defaults = {"batch_size": trainer_params.get("batch_size", DEFAULTS["batch_size"]),
                "epochs": trainer_params.get("epochs", DEFAULTS["epochs"])}

    def split(held: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
        if held is None:
            return np.arange(n), np.array([], dtype=np.int64), 0, len(np.unique(codes))
        val_rows = np.flatnonzero(held[codes])
        train_rows = np.flatnonzero(~held[codes])
        return train_rows, val_rows, int(held.sum()), len(np.unique(codes[train_rows]))

    def score_segment(sigma: float, m_val: int) -> list[tuple[float, float, int]]:
        # the score's Gaussian noise (in counts): score_noise of the held-out units, and
        # never below the training noise multiplier, so that some noise level meets epsilon
        return [] if public_val is not None else [(float(max(score_noise * m_val, sigma)), 1.0, 1)]

    def histories(sigma: float, m_val: int, n_train_units: int) -> list[list[tuple[float, float, int]]]:
        return [_history(sigma, n_train_units, c, defaults) + score_segment(sigma, m_val) for c in configs]

    def make_plan() -> _Plan:
        # the split: every unit independently held out with probability val_fraction
        held = None
        if public_val is None:
            held = rng.random(n_units) < val_fraction
            _, val_rows, m_val, _ = split(held)
            if m_val < 1 or n - len(val_rows) < 2:
                raise UsageError("the held-out split is empty or leaves too little to train: change val_fraction")
        _, _, m_val, n_train_units = split(held)
        if delta is None:
            d = ledger_obj.budget(dataset_id)[1] / 2 if ledger_obj is not None else 1.0 / (10 * n_units)
        else:
            d = float(delta)

        def bound(sigma: float) -> float:
            return search_epsilon(histories(sigma, m_val, n_train_units), delta=d, distribution=distribution,
                                  mean_runs=mean_runs, eta=eta)

        sigma = _calibrate(bound, float(epsilon))
        # K and every candidate's configuration, drawn before any candidate runs
        k = _count(rng, distribution, mean_runs, eta)
        picks = tuple(int(rng.integers(len(configs))) for _ in range(k))
        return _Plan(held=held, delta=float(d), sigma=sigma, planned=bound(sigma), k=k, picks=picks)

    plan = ranks.on_writer(make_plan)
    train_rows, val_rows, m_val, n_train_units = split(plan.held)
    delta, sigma = plan.delta, plan.sigma
    score_seg = score_segment(sigma, m_val)
    how = f"Papernot-Steinke search, {distribution} mean {mean_runs:g}" + (
        f" eta {eta:g}" if distribution != "poisson" else ""
    )
    worst = max(histories(sigma, m_val, n_train_units), key=lambda h: epsilon_of(h, delta=delta, accountant="rdp"))

    params = {
        "grid": {k: [str(v) for v in vs] for k, vs in grid.items()},
        "epsilon": float(epsilon),
        "delta": delta,
        "distribution": distribution,
        "mean_runs": float(mean_runs),
        "eta": float(eta),
        "dataset_id": dataset_id,
        "privacy_unit": unit,
        "public_val": public_val is not None,
    }
    if ranks.several:
        params["processes"] = ranks.group.world_size
    with contextlib.ExitStack() as stack:
        # rank 0 writes the one audit entry; a log that refuses it stops every rank
        op = ranks.together(
            lambda: stack.enter_context(
                operation(audit_log if ranks.writes else None, "tune", params=params,
                          started=audit_log is not None and ranks.writes)
            )
        )

        def reserve() -> str | None:
            if ledger_obj is None:
                return None
            return ledger_obj.reserve(
                str(dataset_id),
                history=worst,
                delta=delta,
                accountant="rdp",
                model_name=f"search over {len(configs)} configurations",
                epsilon=float(epsilon),
                privacy_unit=unit,
                charge=Charge(plan.planned, delta, how),
            )

        run_id = ranks.on_writer(reserve)
        settled = False
        try:
            result = _search(
                make_model, configs, X, y, codes, train_rows, val_rows, m_val, public_val,
                rng=rng, ranks=ranks, picks=plan.picks, sigma=sigma, delta=delta, accountant=accountant,
                unit=unit, users=users, seed=seed, distribution=distribution, mean_runs=mean_runs,
                eta=eta, score_seg=score_seg, trainer_params=trainer_params,
                secure=bool(trainer_params.get("secure_mode")), defaults=defaults,
                planned=histories(sigma, m_val, n_train_units),
            )
            result.run_id = run_id

            def settle() -> None:
                if ledger_obj is not None and run_id is not None:
                    ledger_obj.settle(
                        run_id,
                        history=worst,
                        charge=Charge(result.epsilon, delta, how + f", {len(result.candidates_)} candidates"),
                    )

            ranks.on_writer(settle)
            settled = True
        finally:
            if ledger_obj is not None and run_id is not None and not settled:
                # a failed search keeps its whole planned charge: candidates may have run
                ledger_obj.settle(run_id, history=worst, charge=Charge(plan.planned, delta, how))
        if result.trainer_ is not None:
            result.trainer_.dataset_id = dataset_id
            result.trainer_.run_id_ = run_id
        op.update(
            params={
                "candidates": len(result.candidates_),
                "epsilon_spent": result.epsilon,
                "run_id": run_id,
                "best_params": None if result.best_params_ is None else {k: str(v) for k, v in result.best_params_.items()},
            }
        )
    return result


def _calibrate(bound: Callable[[float], float], epsilon: float) -> float:
    """The smallest noise multiplier (to 0.1 %) whose search bound meets ``epsilon``."""
    lo, hi = 0.05, 1.0
    while bound(hi) > epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise UsageError(f"no noise level meets epsilon={epsilon:g} for this search")
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        if bound(mid) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def _search(
    make_model: Callable[[], Any],
    configs: list[dict[str, Any]],
    X: Any,
    y: Any,
    codes: np.ndarray,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    m_val: int,
    public_val: Any,
    *,
    rng: np.random.Generator,
    ranks: Any,
    picks: Sequence[int],
    sigma: float,
    delta: float,
    accountant: str,
    unit: str,
    users: Any,
    seed: int | None,
    distribution: str,
    mean_runs: float,
    eta: float,
    score_seg: list[tuple[float, float, int]],
    trainer_params: Mapping[str, Any],
    secure: bool,
    defaults: Mapping[str, Any],
    planned: list[list[tuple[float, float, int]]],
) -> TuneResult:
    import torch

    from privdl.train.data import ChaChaRandom
    from privdl.train.trainer import PrivateTrainer

    tr = torch.from_numpy(train_rows)
    Xt, yt = X[tr], y[tr]
    fit_users = None if users is None else np.asarray(users)[train_rows]
    noise = ChaChaRandom() if secure and ranks.writes else None
    best: tuple[float, Any, dict[str, Any]] | None = None
    candidates: list[dict[str, Any]] = []
    n_train_units = len(np.unique(codes[train_rows]))
    score = _scorer(X, y, codes, val_rows, public_val, unit, ranks)
    for i, pick in enumerate(picks):
        config = configs[pick]
        kwargs = {**trainer_params, **config}
        kwargs.setdefault("progress", False)
        own = _history(sigma, n_train_units, config, defaults)
        # no ledger: the search holds the one ledger run (under torchrun an ordinary
        # distributed fit, the same configuration on every rank)
        trainer = PrivateTrainer(
            make_model(),
            epsilon=epsilon_of(own, delta=delta, accountant=accountant),
            delta=delta,
            accountant=accountant,
            seed=None if seed is None else seed * 1000 + i,
            **kwargs,
        )
        if users is None:
            trainer.fit((Xt, yt))
        else:
            trainer.fit((Xt, yt), users=fit_users)
        history = [*trainer.accountant_history_, *score_seg]
        total = score(trainer)
        if public_val is not None:
            value = ranks.on_writer(lambda total=total: total / len(public_val[1]))
        else:
            std = score_seg[0][0]

            def noisy(total: float = total, std: float = std) -> float:
                # one Gaussian draw for the whole held-out split, on rank 0
                z = float(noise.normal(1)[0]) if noise is not None else float(rng.normal())
                return (total + std * z) / m_val

            value = ranks.on_writer(noisy)
        candidates.append({"params": dict(config), "history": history})
        if best is None or value > best[0]:
            best = (value, trainer, dict(config))
    hists = [c["history"] for c in candidates]
    # K = 0: nothing ran; the planned bound (the law of K) still stands
    recorded = hists if hists else planned
    eps = ranks.on_writer(
        lambda: search_epsilon(recorded, delta=delta, distribution=distribution, mean_runs=mean_runs, eta=eta)
    )
    result = TuneResult(
        best_params_=None if best is None else best[2],
        trainer_=None if best is None else best[1],
        epsilon=eps,
        delta=delta,
        candidates_=candidates,
        best_score_=None if best is None else best[0],
        distribution=distribution,
        mean_runs=float(mean_runs),
        eta=float(eta),
    )
    if best is not None:
        best[1].search_ = {
            "candidates": len(candidates),
            "distribution": distribution,
            "mean_runs": float(mean_runs),
            "eta": float(eta),
            "delta": delta,
            "epsilon": eps,
            "histories": hists,
        }
    return result


def _scorer(
    X: Any, y: Any, codes: np.ndarray, val_rows: np.ndarray, public_val: Any, unit: str, ranks: Any
) -> Callable[[Any], float]:
    """``trainer -> the number of correct held-out units`` (a user counts the mean over
    their records), summed over the ranks' blocks of the units (one process: all)."""
    import torch

    if public_val is not None:
        Xv, yv = public_val
        start, stop = ranks.block(len(yv))
        Xb, yb = Xv[start:stop], np.asarray(yv)[start:stop]

        def public(trainer: Any) -> float:
            mine = float(np.sum(np.asarray(trainer.predict(Xb)) == yb)) if stop > start else 0.0
            return ranks.total(mine)

        return public

    if unit == "user":
        held = np.unique(codes[val_rows])
        start, stop = ranks.block(len(held))
        rows = val_rows[np.isin(codes[val_rows], held[start:stop])]
    else:
        start, stop = ranks.block(len(val_rows))
        rows = val_rows[start:stop]
    vr = torch.from_numpy(rows)
    Xb, yb = X[vr], np.asarray(y[vr])
    _, inv = np.unique(codes[rows], return_inverse=True)

    def held_out(trainer: Any) -> float:
        if len(rows) == 0:
            return ranks.total(0.0)
        correct = (np.asarray(trainer.predict(Xb)) == yb).astype(np.float64)
        if unit == "user":
            mine = float((np.bincount(inv, weights=correct) / np.bincount(inv)).sum())
        else:
            mine = float(correct.sum())
        return ranks.total(mine)

    return held_out
