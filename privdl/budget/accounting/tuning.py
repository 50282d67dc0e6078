"""The privacy cost of a random-count hyperparameter search (Papernot & Steinke, 2022).

"Hyperparameter Tuning with Renyi Differential Privacy" (ICLR 2022, arXiv 2110.03620):
run a DP mechanism Q a *random* number of times K, each time with hyperparameters drawn
at random (independently of the data), and release only the best candidate by a score
that Q itself computes with DP. Then the whole search is RDP with a cost close to one
run of Q, instead of K runs:

* K truncated negative binomial ``D_{eta,gamma}`` (Theorem 2): for every order lambda
  and every lambda_hat >= 1,
  ``eps'(l) = eps_Q(l) + (1 + eta)(1 - 1/l_hat) eps_Q(l_hat) + (1 + eta) log(1/gamma)/l_hat
  + log(E[K]) / (l - 1)``, with ``E[K] = eta (1 - gamma) / (gamma (1 - gamma^eta))``
  (``eta = 0``, the logarithmic distribution: ``(1/gamma - 1) / log(1/gamma)``);
* K Poisson with mean mu (Theorem 6): if Q is (eps_hat, delta_hat)-DP with
  ``e^eps_hat <= 1 + 1/(l - 1)``, ``eps'(l) = eps_Q(l) + mu delta_hat + log(mu) / (l - 1)``;
  delta_hat is Q's delta at ``eps_hat = log(1 + 1/(l - 1))``, from its RDP curve.

``eps_Q`` is the RDP curve of one candidate: here the sampled Gaussian mechanism of its
DP-SGD history (training segments and the noisy score as a ``(sigma, 1.0, 1)``
segment), at the orders of the RDP accountant; candidates with different histories
(a grid over batch size or epochs) are one mechanism whose curve is, order by order,
the largest of theirs (Renyi divergence is jointly quasi-convex, and the choice of
candidate does not depend on the data). The bound is minimized over lambda_hat among
the same orders, then converted to (epsilon, delta) by the conversion the RDP
accountant uses (Balle et al., 2020).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from privdl.budget.accounting.history import History
from privdl.budget.accounting.rdp import RDP_ORDERS, rdp_one_step
from privdl.errors import PrivacyParameterError

__all__ = [
    "DISTRIBUTIONS",
    "candidate_rdp",
    "expected_runs",
    "gamma_for_mean",
    "recorded_search_epsilon",
    "search_epsilon",
    "search_rdp",
    "to_epsilon",
]

DISTRIBUTIONS = ("poisson", "truncated_negative_binomial")
_ORDERS = np.asarray(RDP_ORDERS, dtype=np.float64)


def candidate_rdp(histories: Iterable[Iterable[Sequence[Any]]]) -> np.ndarray:
    """The RDP curve of one candidate run (at :data:`RDP_ORDERS`): order by order the
    largest over the candidates' histories."""
    curve = np.zeros_like(_ORDERS)
    for history in histories:
        rdp = np.zeros_like(_ORDERS)
        for sigma, q, steps in History(history):
            rdp = rdp + rdp_one_step(float(q), float(sigma)) * int(steps)
        curve = np.maximum(curve, rdp)
    return curve


def expected_runs(eta: float, gamma: float) -> float:
    """E[K] of the truncated negative binomial ``D_{eta,gamma}``."""
    if eta == 0:
        return (1 / gamma - 1) / math.log(1 / gamma)
    return eta * (1 - gamma) / (gamma * (1 - gamma**eta))


def gamma_for_mean(mean_runs: float, eta: float) -> float:
    """The gamma of ``D_{eta,gamma}`` whose mean is ``mean_runs`` (bisection; E[K]
    falls as gamma grows).

    Raises:
        PrivacyParameterError: ``mean_runs`` not above 1, or ``eta`` not above -1.
    """
    if not eta > -1:
        raise PrivacyParameterError("eta must be above -1")
    if not mean_runs > 1:
        raise PrivacyParameterError("mean_runs must be above 1 for a truncated negative binomial")
    lo, hi = 1e-12, 1 - 1e-12
    for _ in range(200):
        mid = (lo + hi) / 2
        if expected_runs(eta, mid) > mean_runs:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _delta_at(rdp: np.ndarray, eps_hat: float) -> float:
    """Q's delta at ``eps_hat`` from its RDP curve (the conversion of :func:`to_epsilon`,
    solved for delta and minimized over the orders)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        log_delta = (_ORDERS - 1) * (rdp - eps_hat + np.log1p(-1 / _ORDERS)) - np.log(_ORDERS)
    log_delta = np.where(np.isnan(log_delta), np.inf, log_delta)
    return float(min(1.0, math.exp(min(0.0, float(np.min(log_delta))))))


def search_rdp(
    rdp: np.ndarray,
    *,
    distribution: str,
    mean_runs: float,
    eta: float = 1.0,
) -> np.ndarray:
    """The RDP curve of the whole search (at :data:`RDP_ORDERS`) from one candidate's.

    Args:
        rdp: the candidate's curve (:func:`candidate_rdp`).
        distribution: ``"poisson"`` (Theorem 6) or ``"truncated_negative_binomial"``
            (Theorem 2).
        mean_runs: E[K].
        eta: the truncated negative binomial's shape (1: geometric, 0: logarithmic).
    """
    if distribution == "poisson":
        if not mean_runs > 0:
            raise PrivacyParameterError("mean_runs must be positive")
        eps_hat = np.log1p(1 / (_ORDERS - 1))
        delta_hat = np.array([_delta_at(rdp, float(e)) for e in eps_hat])
        return rdp + mean_runs * delta_hat + math.log(mean_runs) / (_ORDERS - 1)
    if distribution == "truncated_negative_binomial":
        gamma = gamma_for_mean(mean_runs, eta)
        # min over lambda_hat in the orders (lambda_hat >= 1) of the data-independent term
        with np.errstate(invalid="ignore"):
            extra = (1 + eta) * (1 - 1 / _ORDERS) * rdp + (1 + eta) * math.log(1 / gamma) / _ORDERS
        best = float(np.nanmin(extra))
        return rdp + best + math.log(expected_runs(eta, gamma)) / (_ORDERS - 1)
    raise PrivacyParameterError(f"distribution must be one of {', '.join(map(repr, DISTRIBUTIONS))}")


def to_epsilon(rdp: np.ndarray, delta: float) -> float:
    """Epsilon at ``delta`` of an RDP curve at :data:`RDP_ORDERS` (Balle et al., 2020)."""
    with np.errstate(invalid="ignore"):
        eps = rdp - (math.log(delta) + np.log(_ORDERS)) / (_ORDERS - 1) + np.log((_ORDERS - 1) / _ORDERS)
    if np.isnan(eps).all():
        return math.inf
    return max(0.0, float(np.nanmin(eps)))


def recorded_search_epsilon(search: Any) -> float:
    """The epsilon of a recorded search (``{"histories", "delta", "distribution",
    "mean_runs", "eta"}``, as a tuned trainer's ``search_`` holds it), recomputed."""
    return search_epsilon(
        search["histories"],
        delta=float(search["delta"]),
        distribution=str(search["distribution"]),
        mean_runs=float(search["mean_runs"]),
        eta=float(search.get("eta", 1.0)),
    )


def search_epsilon(
    histories: Iterable[Iterable[Sequence[Any]]],
    *,
    delta: float,
    distribution: str,
    mean_runs: float,
    eta: float = 1.0,
) -> float:
    """Epsilon at ``delta`` of the search whose candidates have ``histories``."""
    curve = candidate_rdp(histories)
    return to_epsilon(search_rdp(curve, distribution=distribution, mean_runs=mean_runs, eta=eta), delta)
