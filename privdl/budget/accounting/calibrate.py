"""Epsilon of a history, and noise calibration: epsilon -> noise multiplier.

:func:`epsilon_of` turns a history into the epsilon spent at a given delta under one of
two accountants:

* ``"prv"`` (default): numerical composition of privacy loss random variables (Gopi et
  al., 2021; :mod:`.prv`), Opacus' ``PRVAccountant.get_epsilon``,
* ``"rdp"``: Rényi DP of the sampled Gaussian mechanism (Mironov et al., 2019;
  :mod:`.rdp`) over Opacus' default orders, with the conversion of Balle et al. (2020).

:func:`noise_multiplier_for` inverts the accountant: the smallest noise multiplier
(within 0.5 %) whose composed epsilon stays at or below the target, found by bracketing
and a secant search in log-space, started from the cheap RDP answer and cached. It lives
beside the accountants, as Opacus keeps ``get_noise_multiplier`` beside its own.

Both need numpy and scipy only, not torch, so the budget ledger and its CLI use them on a
machine without the training extra.

Example:
    >>> sigma = noise_multiplier_for(epsilon=2.0, delta=1e-5, sample_rate=0.01, steps=500)
    >>> epsilon_of([(sigma, 0.01, 500)], delta=1e-5) <= 2.0
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from privdl.budget.accounting.history import History
from privdl.budget.accounting.parameters import (
    check_accountant,
    check_delta,
    check_epsilon,
    check_sample_rate,
    check_steps,
)
from privdl.budget.accounting.prv import PRVNumericsError, prv_epsilon
from privdl.budget.accounting.rdp import rdp_epsilon, rdp_one_step
from privdl.errors import BudgetExceededError, UsageError

__all__ = ["MAX_SIGMA", "clear_caches", "epsilon_of", "noise_multiplier_for"]

MAX_SIGMA = 1e6
_SIGMA_RTOL = 0.005  # calibration stops when the bracket is this tight (relative)


def epsilon_of(history: Iterable[Sequence[Any]], *, delta: float, accountant: str = "prv") -> float:
    """Epsilon spent by a DP-SGD history at ``delta`` under ``accountant``.

    Args:
        history: ``(noise_multiplier, sample_rate, steps)`` segments, composed in order.
        delta: target delta, in (0, 1).
        accountant: ``"prv"`` (tight, Opacus' default) or ``"rdp"``.

    Returns:
        The accountant's epsilon (an upper bound, as Opacus reports it), never
        negative: where the conversion to ``(epsilon, delta)`` goes below zero (a large
        delta, e.g. 0.1) it is ``0.0``, like an empty history; ``inf`` when a segment
        has no noise. If the PRV discretization cannot resolve the history (very small
        noise, epsilon in the tens), the RDP bound is returned instead, with a warning:
        it is a valid, looser upper bound.

    Raises:
        PrivacyParameterError: malformed history, delta or accountant.
    """
    hist = History(history)
    delta_f = check_delta(delta)
    check_accountant(accountant)
    return _epsilon_cached(hist, delta_f, accountant)


def noise_multiplier_for(
    *,
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    prior: Iterable[Sequence[Any]] = (),
) -> float:
    """Smallest noise multiplier whose run keeps the composed epsilon at or below a target.

    Finds sigma such that ``epsilon_of(list(prior) + [(sigma, sample_rate, steps)])`` is
    ``<= epsilon``, and sigma is within 0.5 % of the smallest such value. The returned
    sigma was itself evaluated, so the guarantee is never above the target.

    Args:
        epsilon: target total epsilon (prior runs included).
        delta: target delta.
        sample_rate: Poisson sampling rate q of the planned run.
        steps: planned number of steps.
        accountant: ``"prv"`` or ``"rdp"``.
        prior: history already spent on the same data (e.g. from a budget ledger).

    Raises:
        BudgetExceededError: ``prior`` alone already spends ``epsilon``.
        UsageError: the target needs a noise multiplier above 1e6.
        PrivacyParameterError: arguments out of range.
    """
    delta_f = check_delta(delta)
    check_accountant(accountant)
    eps = check_epsilon(epsilon)
    q = check_sample_rate(sample_rate)
    n_steps = check_steps(steps)
    return _calibrate_cached(eps, delta_f, q, n_steps, accountant, History(prior))


def clear_caches() -> None:
    """Forget every cached epsilon and calibration (for benchmarks that time cold runs)."""
    _calibrate_cached.cache_clear()
    _epsilon_cached.cache_clear()
    rdp_one_step.cache_clear()


@lru_cache(maxsize=4096)
def _epsilon_cached(hist: History, delta: float, acc: str) -> float:
    if not hist:
        return 0.0
    if any(q > 0 and sigma == 0 for sigma, q, _ in hist):
        return math.inf
    live = History(seg for seg in hist if seg.sample_rate > 0)  # q == 0 releases nothing
    if not live:
        return 0.0
    if acc == "rdp":
        return rdp_epsilon(live, delta)
    try:
        return prv_epsilon(live, delta)
    except PRVNumericsError:
        warnings.warn(
            "PRV accountant cannot resolve this history; reporting the RDP bound instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return rdp_epsilon(live, delta)


def _eps_or_inf(hist: History, delta: float, acc: str) -> float:
    """Epsilon for the search: PRV failures (tiny sigma) count as 'too little noise'."""
    if acc == "prv":
        try:
            return prv_epsilon(hist, delta) if hist else 0.0
        except PRVNumericsError:
            return math.inf
    return _epsilon_cached(hist, delta, acc)


@lru_cache(maxsize=1024)
def _calibrate_cached(
    eps: float,
    delta: float,
    q: float,
    steps: int,
    acc: str,
    prior: History,
) -> float:
    prior_eps = _epsilon_cached(prior, delta, acc) if prior else 0.0
    if prior_eps >= eps:
        raise BudgetExceededError(
            f"prior runs already spend epsilon {prior_eps:.4g} >= target {eps:.4g}",
            requested=eps,
            remaining=0.0,
        )

    def f(sigma: float) -> float:
        return _eps_or_inf(History([*prior, (sigma, q, steps)]), delta, acc)

    # The RDP answer is a cheap, slightly conservative starting point for PRV: PRV's
    # epsilon is (almost always) a little below RDP's at the same sigma.
    start, slope = 1.0, -2.0
    if acc == "prv":
        try:
            start = _calibrate_cached(eps, delta, q, steps, "rdp", prior)
        except (BudgetExceededError, UsageError):
            start = 1.0
        else:
            # the RDP curve's local slope predicts PRV's well: the first secant step
            # then lands within a fraction of a percent of the root
            e0 = _epsilon_cached(History([*prior, (start, q, steps)]), delta, "rdp")
            e1 = _epsilon_cached(History([*prior, (start * 1.01, q, steps)]), delta, "rdp")
            if 0 < e1 < e0 < math.inf:
                slope = (math.log(e1) - math.log(e0)) / math.log(1.01)
    return _search(f, eps, start, slope0=slope)


def _search(f: Any, eps: float, start: float, *, slope0: float = -2.0) -> float:
    """Smallest sigma (within _SIGMA_RTOL) with f(sigma) <= eps, f decreasing.

    log(epsilon) is close to linear in log(sigma), so each round predicts the root by a
    secant through the two points nearest to it and evaluates just below and just above
    the prediction: when the prediction is good, one round closes the bracket.
    """
    log_t = math.log(eps)
    lo: tuple[float, float] | None = None  # (log sigma, log eps) with eps above target
    hi: tuple[float, float] | None = None  # ... with eps at or below target
    pts: list[tuple[float, float]] = []

    def visit(sigma: float) -> None:
        nonlocal lo, hi
        if sigma > MAX_SIGMA:
            raise UsageError(
                f"epsilon {eps:.4g} needs a noise multiplier above {MAX_SIGMA:.0g}: "
                "the budget is too small for this many steps"
            )
        if sigma < 1e-4:
            raise UsageError("the target epsilon is reached with (almost) no noise")
        val = f(sigma)
        point = (math.log(sigma), math.log(val) if val > 0 else -math.inf)
        pts.append(point)
        if val <= eps:
            if hi is None or point[0] < hi[0]:
                hi = point
        elif lo is None or point[0] > lo[0]:
            lo = point

    visit(start)
    half = 0.48 * _SIGMA_RTOL
    for _ in range(60):
        if lo is not None and hi is not None and math.exp(hi[0] - lo[0]) - 1 <= _SIGMA_RTOL:
            return math.exp(hi[0])
        finite = [p for p in pts if math.isfinite(p[1])]
        if lo is not None and hi is not None and math.isfinite(lo[1]) and math.isfinite(hi[1]):
            a, b = lo, hi
        elif len(finite) >= 2:
            a, b = sorted(finite, key=lambda p: abs(p[1] - log_t))[:2]
        else:
            a = b = finite[-1] if finite else pts[-1]
        # epsilon ~ 1/sigma^2 for large sigma: -2 is a safe first guess for the slope
        slope = (b[1] - a[1]) / (b[0] - a[0]) if a[0] != b[0] and a[1] != b[1] else slope0
        if not (math.isfinite(slope) and slope < 0):
            slope = slope0 if slope0 < 0 else -2.0
        ref = b if math.isfinite(b[1]) else (hi if hi is not None else pts[-1])
        x = ref[0] + (log_t - ref[1]) / slope if math.isfinite(ref[1]) else ref[0] + 1.0
        x = min(max(x, ref[0] - 1.4), ref[0] + 1.4)  # at most a factor 4 per round
        if hi is not None and hi[1] == -math.inf:
            # epsilon is 0 at the least noise tried so far (a large delta): no secant
            # goes through it, so step down by a factor 4, or halve the bracket, instead
            # of creeping along its edge
            x = (lo[0] + hi[0]) / 2 if lo is not None else hi[0] - 1.4
        if lo is not None:
            x = max(x, lo[0] + half)
        if hi is not None:
            x = min(x, hi[0] - half)
        for cand in (x + half, x - half):
            if (hi is None or cand < hi[0]) and (lo is None or cand > lo[0]):
                visit(math.exp(cand))
    raise UsageError("noise calibration did not converge")  # pragma: no cover
