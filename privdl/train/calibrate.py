"""Privacy accounting for DP-SGD and fast noise calibration (epsilon -> noise multiplier).

A run of DP-SGD with Poisson sampling is described by its *history*: a list of segments
``(noise_multiplier, sample_rate, steps)``. :func:`epsilon_of` turns a history into the
epsilon spent at a given delta under one of two accountants:

* ``"prv"`` (default): numerical composition of privacy loss random variables (Gopi et
  al., 2021), the same algorithm, discretization, error margins and upper bound as
  Opacus' ``PRVAccountant.get_epsilon`` (``eps_error=0.01``, ``delta_error=delta/1000``),
* ``"rdp"``: Rényi DP of the sampled Gaussian mechanism (Mironov et al., 2019) over
  Opacus' default orders, with the conversion of Balle et al. (2020).

Both are re-implemented here with vectorized numpy/scipy instead of Python loops and
adaptive quadrature, so one evaluation takes milliseconds, and they agree with Opacus
to far better than 1 % (the test suite recomputes every figure with Opacus itself).
The module needs numpy and scipy only, not torch, so the budget ledger and its CLI can
use it on a machine without the training extra.

:func:`noise_multiplier_for` inverts the accountant: the smallest noise multiplier
(within 0.5 %) whose composed epsilon stays at or below the target, found by bracketing
and a secant search in log-space, started from the cheap RDP answer and cached.

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

import numpy as np

from privdl.errors import BudgetExceededError, InputError, UsageError, require

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "History",
    "epsilon_of",
    "noise_multiplier_for",
    "normalize_history",
]

History = list[tuple[float, float, int]]
"""Accountant history: ``(noise_multiplier, sample_rate, steps)`` segments, in order."""

ACCOUNTANTS = ("prv", "rdp")

# Opacus' RDPAccountant.DEFAULT_ALPHAS, so "rdp" here is Opacus' "rdp".
RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))

# Opacus' PRVAccountant.get_epsilon defaults.
PRV_EPS_ERROR = 0.01
PRV_DELTA_ERROR_RATIO = 1e-3

MAX_SIGMA = 1e6
_SIGMA_RTOL = 0.005  # calibration stops when the bracket is this tight (relative)


class _PRVNumericsError(ArithmeticError):
    """The PRV discretization cannot resolve this history (tiny noise, huge epsilon)."""


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------
def normalize_history(history: Iterable[Sequence[Any]]) -> tuple[tuple[float, float, int], ...]:
    """Validate a history and return it as a hashable tuple of ``(float, float, int)``.

    Segments with zero steps are dropped; nothing else is merged or reordered.

    Raises:
        InputError: a segment is malformed or out of range.
    """
    out: list[tuple[float, float, int]] = []
    for pos, seg in enumerate(history):
        try:
            sigma, q, steps = seg
            sigma_f, q_f = float(sigma), float(q)
            steps_f = float(steps)
        except (TypeError, ValueError):
            raise InputError(f"history segment {pos} is not (noise_multiplier, sample_rate, steps)") from None
        if not steps_f.is_integer() or steps_f < 0:
            raise InputError(f"history segment {pos}: steps must be a non-negative integer")
        if not (math.isfinite(sigma_f) and sigma_f >= 0):
            raise InputError(f"history segment {pos}: noise_multiplier must be >= 0 and finite")
        if not (0.0 <= q_f <= 1.0):
            raise InputError(f"history segment {pos}: sample_rate must be in [0, 1]")
        if steps_f > 0:
            out.append((sigma_f, q_f, int(steps_f)))
    return tuple(out)


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
        InputError: malformed history, delta or accountant.
    """
    hist = normalize_history(history)
    _check_delta(delta)
    _check_accountant(accountant)
    return _epsilon_cached(hist, float(delta), accountant)


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
        InputError: arguments out of range.
    """
    _check_delta(delta)
    _check_accountant(accountant)
    eps = float(epsilon)
    if not (math.isfinite(eps) and eps > 0):
        raise InputError("epsilon must be a positive finite number")
    q = float(sample_rate)
    if not (0.0 < q <= 1.0):
        raise InputError("sample_rate must be in (0, 1]")
    n_steps = int(steps)
    if n_steps != steps or n_steps < 1:
        raise InputError("steps must be a positive integer")
    return _calibrate_cached(eps, float(delta), q, n_steps, accountant, normalize_history(prior))


# --------------------------------------------------------------------------------------
# validation and caching
# --------------------------------------------------------------------------------------
def _check_delta(delta: float) -> None:
    if not (isinstance(delta, int | float) and 0.0 < float(delta) < 1.0):
        raise InputError("delta must be in (0, 1)")


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise InputError(f"unknown accountant {accountant!r}; use one of {', '.join(ACCOUNTANTS)}")


@lru_cache(maxsize=4096)
def _epsilon_cached(hist: tuple[tuple[float, float, int], ...], delta: float, acc: str) -> float:
    if not hist:
        return 0.0
    if any(q > 0 and sigma == 0 for sigma, q, _ in hist):
        return math.inf
    live = tuple(seg for seg in hist if seg[1] > 0)  # q == 0 releases nothing
    if not live:
        return 0.0
    if acc == "rdp":
        return _rdp_epsilon(live, delta)
    try:
        return _prv_epsilon(live, delta)
    except _PRVNumericsError:
        warnings.warn(
            "PRV accountant cannot resolve this history; reporting the RDP bound instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return _rdp_epsilon(live, delta)


def _eps_or_inf(hist: tuple[tuple[float, float, int], ...], delta: float, acc: str) -> float:
    """Epsilon for the search: PRV failures (tiny sigma) count as 'too little noise'."""
    if acc == "prv":
        try:
            return _prv_epsilon(hist, delta) if hist else 0.0
        except _PRVNumericsError:
            return math.inf
    return _epsilon_cached(hist, delta, acc)


@lru_cache(maxsize=1024)
def _calibrate_cached(
    eps: float,
    delta: float,
    q: float,
    steps: int,
    acc: str,
    prior: tuple[tuple[float, float, int], ...],
) -> float:
    prior_eps = _epsilon_cached(prior, delta, acc) if prior else 0.0
    if prior_eps >= eps:
        raise BudgetExceededError(
            f"prior runs already spend epsilon {prior_eps:.4g} >= target {eps:.4g}",
            requested=eps,
            remaining=0.0,
        )

    def f(sigma: float) -> float:
        return _eps_or_inf((*prior, (sigma, q, steps)), delta, acc)

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
            e0 = _epsilon_cached((*prior, (start, q, steps)), delta, "rdp")
            e1 = _epsilon_cached((*prior, (start * 1.01, q, steps)), delta, "rdp")
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


# --------------------------------------------------------------------------------------
# RDP of the sampled Gaussian mechanism (vectorized Opacus / TF-Privacy formulas)
# --------------------------------------------------------------------------------------
_ORDERS = np.asarray(RDP_ORDERS, dtype=np.float64)
_INT_MASK = np.floor(_ORDERS) == _ORDERS


def _scipy_special() -> Any:
    require("scipy", "train")
    import scipy.special

    return scipy.special


def _log_a_int(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    sp = _scipy_special()
    a = alphas[:, None]
    i = np.arange(int(alphas.max()) + 1, dtype=np.float64)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_coef = (
            sp.gammaln(a + 1)
            - sp.gammaln(i + 1)
            - sp.gammaln(np.maximum(a - i, 0) + 1)
            + i * math.log(q)
            + (a - i) * math.log1p(-q)
        )
    s = log_coef + (i * i - i) / (2 * sigma**2)
    s = np.where(i <= a, s, -np.inf)
    return np.asarray(sp.logsumexp(s, axis=1))


def _log_a_frac(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """log A_alpha for fractional orders: Opacus' series, summed in vectorized chunks.

    Like Opacus, each order's series stops after the first term whose two parts are both
    below e^-30 (that term included). Chunks grow geometrically because with large q
    and large sigma the series decays only polynomially.
    """
    sp = _scipy_special()
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    sq2s = math.sqrt(2) * sigma
    n = len(alphas)
    acc = np.full((2, n), -np.inf)
    acc_sign = np.ones((2, n))
    active = np.ones(n, dtype=bool)
    start, chunk = 0, 64
    while active.any() and start < 1 << 20:
        rows = np.flatnonzero(active)
        a = alphas[rows][:, None]
        i = np.arange(start, start + chunk, dtype=np.float64)[None, :]
        coef = sp.binom(a, i)
        with np.errstate(divide="ignore"):
            log_coef = np.log(np.abs(coef))
        j = a - i
        log_t0 = log_coef + i * math.log(q) + j * math.log1p(-q)
        log_t1 = log_coef + j * math.log(q) + i * math.log1p(-q)
        # log(0.5 * erfc(x)) == log_ndtr(-x * sqrt(2))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + sp.log_ndtr(-(i - z0) / sq2s * _SQRT2)
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + sp.log_ndtr(-(z0 - j) / sq2s * _SQRT2)
        stop = np.maximum(log_s0, log_s1) < -30
        done = stop.any(axis=1)
        first = np.where(done, stop.argmax(axis=1), chunk)
        weight = np.where(np.arange(chunk)[None, :] <= first[:, None], np.sign(coef), 0.0)
        for part, log_s in ((0, log_s0), (1, log_s1)):
            with np.errstate(divide="ignore", invalid="ignore"):
                val, sgn = sp.logsumexp(log_s, axis=1, b=weight, return_sign=True)
                both = np.stack([acc[part, rows], val], axis=1)
                signs = np.stack([acc_sign[part, rows], sgn], axis=1)
                tot, tot_sign = sp.logsumexp(both, axis=1, b=signs, return_sign=True)
            acc[part, rows] = tot
            acc_sign[part, rows] = np.where(tot_sign == 0, 1.0, tot_sign)
        active[rows[done]] = False
        start += chunk
        chunk = min(chunk * 2, 8192)
    return np.asarray(np.logaddexp(acc[0], acc[1]))


@lru_cache(maxsize=4096)
def _rdp_one_step(q: float, sigma: float) -> np.ndarray:
    """RDP of one step of the sampled Gaussian mechanism at every order in RDP_ORDERS."""
    if q == 0:
        return np.zeros_like(_ORDERS)
    if sigma == 0:
        return np.full_like(_ORDERS, np.inf)
    if q == 1.0:
        return _ORDERS / (2 * sigma**2)
    out = np.empty_like(_ORDERS)
    out[_INT_MASK] = _log_a_int(q, sigma, _ORDERS[_INT_MASK]) / (_ORDERS[_INT_MASK] - 1)
    out[~_INT_MASK] = _log_a_frac(q, sigma, _ORDERS[~_INT_MASK]) / (_ORDERS[~_INT_MASK] - 1)
    out.setflags(write=False)
    return out


def _rdp_epsilon(hist: Sequence[tuple[float, float, int]], delta: float) -> float:
    rdp = np.zeros_like(_ORDERS)
    for sigma, q, steps in hist:
        rdp = rdp + _rdp_one_step(q, sigma) * steps
    with np.errstate(invalid="ignore"):
        eps = rdp - (math.log(delta) + np.log(_ORDERS)) / (_ORDERS - 1) + np.log((_ORDERS - 1) / _ORDERS)
    if np.isnan(eps).all():
        return math.inf
    # At a large delta the conversion goes below zero; (epsilon, delta)-DP only weakens
    # as epsilon grows, so 0 is the bound to claim, never a negative "spend".
    return max(0.0, float(np.nanmin(eps)))


# --------------------------------------------------------------------------------------
# PRV accountant (vectorized re-implementation of opacus.accountants.PRVAccountant)
# --------------------------------------------------------------------------------------
_SQRT2 = math.sqrt(2)


def _prv_cdf(t: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """CDF of the privacy loss of the Poisson subsampled Gaussian (Gopi et al., B4)."""
    sp = _scipy_special()
    log1mq = math.log1p(-q) if q < 1 else -math.inf
    valid = t > log1mq
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        z = np.log(np.where(valid, (np.exp(t) + q - 1) / q, 1.0))
        val = (
            -q * sp.erfc((2 * z * sigma**2 - 1) / (2 * _SQRT2 * sigma)) / 2
            - (1 - q) * sp.erfc((2 * z * sigma**2 + 1) / (2 * _SQRT2 * sigma)) / 2
            + 1.0
        )
    return np.where(valid, val, 0.0)


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(32)


def _truncated_mean(q: float, sigma: float, t_min: float, t_max: float, mass: float) -> float:
    """Mean of the PRV truncated to [t_min, t_max]: t_max - integral of its CDF.

    Gauss-Legendre on a grid that is log-spaced around 0 (where a PRV with small q
    concentrates) replaces Opacus' adaptive ``quad`` calls; the two agree to ~1e-12.
    """
    c_min = float(_prv_cdf(np.array([t_min]), q, sigma)[0])
    a = max(t_min, math.log1p(-q) if q < 1 else t_min)
    span = max(abs(t_min), abs(t_max), 1e-6)
    pts = np.geomspace(1e-10, span, 90)
    grid = np.concatenate([[a, t_max, 0.0], pts, -pts])
    grid = np.unique(grid[(grid >= a) & (grid <= t_max)])
    left, right = grid[:-1, None], grid[1:, None]
    half = (right - left) / 2
    t = (left + right) / 2 + half * _GL_NODES[None, :]
    cdf = (_prv_cdf(t.ravel(), q, sigma).reshape(t.shape) - c_min) / mass
    integral = float(np.sum(half * (cdf @ _GL_WEIGHTS[:, None])))
    return t_max - integral


def _prv_domain(
    hist: Sequence[tuple[float, float, int]], eps_error: float, delta_error: float
) -> tuple[float, float, int]:
    total = sum(steps for _, _, steps in hist)
    # compute_safe_domain_size (Gopi et al., remark 5.6, as implemented by Opacus)
    l_max = _rdp_epsilon(hist, delta_error / 4)
    for sigma, q, _ in hist:
        l_max = max(l_max, _rdp_epsilon([(sigma, q, 1)], delta_error / (8 * total)))
    big_l = max(l_max, eps_error) + 3
    if not math.isfinite(big_l):
        raise _PRVNumericsError("unbounded privacy loss")
    dt = eps_error / math.sqrt(total * math.log(12 / delta_error) / 2)
    t_min = math.floor(-big_l / dt) * dt
    t_max = math.ceil(big_l / dt) * dt
    size = round((t_max - t_min) / dt) + 1
    if size % 2 == 1:
        size += 1
        t_max += dt
    # Grow the domain to an FFT-friendly length (5-smooth, even): pocketfft on an
    # awkward length was 80 % of an evaluation. A wider domain only truncates less
    # (both ends grow by the same number of cells: the composition's index arithmetic
    # assumes a domain centred like Opacus').
    from scipy.fft import next_fast_len

    fast = next_fast_len(size, real=True)
    while (fast - size) % 2:
        fast = next_fast_len(fast + 1, real=True)
    k = (fast - size) // 2
    t_min -= k * dt
    t_max += k * dt
    size = fast
    if size > 1 << 26:
        raise _PRVNumericsError("PRV domain too large")
    return t_min, t_max, int(size)


def _prv_epsilon(hist: Sequence[tuple[float, float, int]], delta: float) -> float:
    from scipy.fft import irfft, rfft

    eps_error = PRV_EPS_ERROR
    delta_error = delta * PRV_DELTA_ERROR_RATIO
    t_min, t_max, size = _prv_domain(hist, eps_error, delta_error)
    dt = (t_max - t_min) / (size - 1)
    ts = np.linspace(t_min, t_max, size)
    edges = np.empty(size + 1)
    edges[:-1] = ts - dt / 2
    edges[-1] = ts[-1] + dt / 2

    # Every segment's discretized PRV is composed with itself ``steps`` times and with
    # the others in one product of spectra: circular convolution on a domain that
    # _prv_domain sized for the whole history (Opacus self-composes the same way, then
    # joins segments pairwise with linear convolutions cut back to the domain; the
    # mass either way differs only beyond the domain, and one product needs one inverse
    # FFT instead of three transforms per pair).
    spectrum = None
    shift = 0.0
    total = 0
    for sigma, q, steps in hist:
        c_lo = _prv_cdf(np.array([t_min, t_max]), q, sigma)
        mass = float(c_lo[1] - c_lo[0])
        if not mass > 0:
            raise _PRVNumericsError("no probability mass in the PRV domain")
        inside = (edges >= t_min) & (edges < t_max)
        cdf_e = np.where(inside, (_prv_cdf(edges, q, sigma) - c_lo[0]) / mass, np.where(edges < t_min, 0, 1))
        pmf = np.diff(cdf_e)
        mean_d = float(np.dot(ts, pmf))
        mean_c = _truncated_mean(q, sigma, t_min, t_max, mass)
        seg_shift = mean_c - mean_d
        if not abs(seg_shift) < dt / 2:
            raise _PRVNumericsError("discrete mean differs from the continuous mean")
        power = rfft(pmf) ** steps
        spectrum = power if spectrum is None else spectrum * power
        shift += seg_shift * steps
        total += steps
    assert spectrum is not None
    # the sum of ``total`` variables on the grid t_min + i dt lies on total * t_min + k dt:
    # index k is index k - (total - 1) K of the grid, K = -t_min / dt (modulo size)
    cells = round(-t_min / dt)
    pmf = np.roll(irfft(spectrum, n=size), -((total - 1) * cells) % size)

    if np.finfo(np.longdouble).eps * size > delta - delta_error:
        raise InputError("delta is too small for the PRV accountant's floating-point precision")
    t = ts + shift
    d1 = np.flip(np.flip(pmf).cumsum())
    # exp overflows in the far tail when a search tries very little noise (Opacus
    # computes the same values, warnings included); the index and epsilon found below
    # are checked, and an unusable result falls back to RDP
    with np.errstate(over="ignore", invalid="ignore"):
        d2 = np.flip(np.flip(pmf * np.exp(-t)).cumsum())
        ndelta = np.exp(t) * d2 - d1
    target = delta - delta_error
    i = int(np.searchsorted(ndelta, -target, side="left"))
    if i <= 0 or i >= size:
        raise _PRVNumericsError("cannot compute epsilon from the composed PRV")
    with np.errstate(invalid="ignore", divide="ignore"):
        eps = math.log((d1[i] - target) / d2[i]) + eps_error
    if not math.isfinite(eps):
        raise _PRVNumericsError("cannot compute epsilon from the composed PRV")
    return max(0.0, eps)  # never negative (see _rdp_epsilon)
