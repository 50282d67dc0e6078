"""Numerical composition of privacy loss random variables (Gopi et al., 2021), vectorized.

The same algorithm, discretization, error margins and upper bound as Opacus'
``PRVAccountant.get_epsilon`` (``eps_error=0.01``, ``delta_error=delta/1000``), with
Gauss-Legendre quadrature instead of adaptive ``quad`` and one product of spectra for the
whole history. Inputs are histories already validated by
:class:`~privdl.budget.accounting.History`; callers use
:func:`privdl.budget.accounting.epsilon_of`, which falls back to RDP when
:class:`PRVNumericsError` is raised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from privdl.budget.accounting.rdp import rdp_epsilon, scipy_special
from privdl.errors import PrivacyParameterError

__all__ = ["PRV_DELTA_ERROR_RATIO", "PRV_EPS_ERROR", "PRVNumericsError", "prv_epsilon"]

# Opacus' PRVAccountant.get_epsilon defaults.
PRV_EPS_ERROR = 0.01
PRV_DELTA_ERROR_RATIO = 1e-3


class PRVNumericsError(ArithmeticError):
    """The PRV discretization cannot resolve this history (tiny noise, huge epsilon)."""


_SQRT2 = math.sqrt(2)


def _prv_cdf(t: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """CDF of the privacy loss of the Poisson subsampled Gaussian (Gopi et al., B4)."""
    sp = scipy_special()
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
    l_max = rdp_epsilon(hist, delta_error / 4)
    for sigma, q, _ in hist:
        l_max = max(l_max, rdp_epsilon([(sigma, q, 1)], delta_error / (8 * total)))
    big_l = max(l_max, eps_error) + 3
    if not math.isfinite(big_l):
        raise PRVNumericsError("unbounded privacy loss")
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
        raise PRVNumericsError("PRV domain too large")
    return t_min, t_max, int(size)


def prv_epsilon(hist: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at ``delta`` of a validated history of live segments (q > 0, sigma > 0),
    with Opacus' error margins (``eps_error=0.01``, ``delta_error=delta/1000``).

    Raises:
        PRVNumericsError: the discretization cannot resolve this history.
        PrivacyParameterError: delta is below the floating-point resolution of the domain.
    """
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
            raise PRVNumericsError("no probability mass in the PRV domain")
        inside = (edges >= t_min) & (edges < t_max)
        cdf_e = np.where(inside, (_prv_cdf(edges, q, sigma) - c_lo[0]) / mass, np.where(edges < t_min, 0, 1))
        pmf = np.diff(cdf_e)
        mean_d = float(np.dot(ts, pmf))
        mean_c = _truncated_mean(q, sigma, t_min, t_max, mass)
        seg_shift = mean_c - mean_d
        if not abs(seg_shift) < dt / 2:
            raise PRVNumericsError("discrete mean differs from the continuous mean")
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
        raise PrivacyParameterError("delta is too small for the PRV accountant's floating-point precision")
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
        raise PRVNumericsError("cannot compute epsilon from the composed PRV")
    with np.errstate(invalid="ignore", divide="ignore"):
        eps = math.log((d1[i] - target) / d2[i]) + eps_error
    if not math.isfinite(eps):
        raise PRVNumericsError("cannot compute epsilon from the composed PRV")
    return max(0.0, eps)  # never negative (see rdp_epsilon)
