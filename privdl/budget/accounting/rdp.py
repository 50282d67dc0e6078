"""Rényi DP of the sampled Gaussian mechanism (Mironov et al., 2019), vectorized.

The same formulas, orders and conversion as Opacus' ``RDPAccountant`` (and TF-Privacy),
computed with numpy/scipy over every order at once instead of Python loops. Inputs are
histories already validated by :class:`~privdl.budget.accounting.History`; callers use
:func:`privdl.budget.accounting.epsilon_of`, which adds validation and caching.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from privdl._optional import require

__all__ = ["RDP_ORDERS", "rdp_epsilon", "rdp_one_step", "scipy_special"]

# Opacus' RDPAccountant.DEFAULT_ALPHAS, so "rdp" here is Opacus' "rdp".
RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))

_SQRT2 = math.sqrt(2)
_ORDERS = np.asarray(RDP_ORDERS, dtype=np.float64)
_INT_MASK = np.floor(_ORDERS) == _ORDERS


def scipy_special() -> Any:
    """``scipy.special``, or the error naming the extra that installs scipy."""
    require("scipy", "train")
    import scipy.special

    return scipy.special


def _log_a_int(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    sp = scipy_special()
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
    sp = scipy_special()
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
def rdp_one_step(q: float, sigma: float) -> np.ndarray:
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


def rdp_epsilon(hist: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at ``delta`` of a validated history of live segments (q > 0, sigma > 0),
    by the conversion of Balle et al. (2020), minimized over :data:`RDP_ORDERS`."""
    rdp = np.zeros_like(_ORDERS)
    for sigma, q, steps in hist:
        rdp = rdp + rdp_one_step(q, sigma) * steps
    with np.errstate(invalid="ignore"):
        eps = rdp - (math.log(delta) + np.log(_ORDERS)) / (_ORDERS - 1) + np.log((_ORDERS - 1) / _ORDERS)
    if np.isnan(eps).all():
        return math.inf
    # At a large delta the conversion goes below zero; (epsilon, delta)-DP only weakens
    # as epsilon grows, so 0 is the bound to claim, never a negative "spend".
    return max(0.0, float(np.nanmin(eps)))
