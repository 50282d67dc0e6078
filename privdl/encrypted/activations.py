"""Polynomial activations: train with them, and the encrypted circuit is the model itself.

CKKS evaluates additions and products only, so a ReLU or a sigmoid inside a network
is replaced by a low-degree polynomial fitted on an input range, and the encrypted
score differs from the trained model by that approximation (see
:mod:`privdl.encrypted.approximation`). A network trained *with* a polynomial
activation has no such gap: :meth:`EncryptedScorer.from_model` maps these modules
to the same polynomial, and the encrypted score matches the plaintext model up to
CKKS noise.

This module needs torch (``privdl[train]``); it is imported only when asked for.

Example:
    >>> from torch import nn                                          # doctest: +SKIP
    >>> from privdl.encrypted import PolynomialActivation, Square    # doctest: +SKIP
    >>> net = nn.Sequential(nn.Linear(20, 8), Square(), nn.Linear(8, 1))        # doctest: +SKIP
    >>> net = nn.Sequential(nn.Linear(20, 8),                                    # doctest: +SKIP
    ...                     PolynomialActivation.approximating("relu"), nn.Linear(8, 1))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from privdl._optional import require
from privdl.encrypted.polynomial import approximate, exact_polynomial

torch: Any = require("torch", "train")
nn = torch.nn

__all__ = ["PolynomialActivation", "Square"]


class PolynomialActivation(nn.Module):
    """``c0 + c1 x + c2 x^2 + c3 x^3`` applied elementwise (fixed coefficients, degree 1-3).

    The coefficients are constants, not parameters: the module adds nothing for DP-SGD
    to clip and nothing to the saved weights.

    Args:
        coefficients: ascending powers, 2 to 4 finite values with a variable term.

    Raises:
        UsageError: a degree outside 1-3 or a non-finite coefficient.
    """

    def __init__(self, coefficients: Sequence[float]) -> None:
        super().__init__()
        self.coefficients: tuple[float, ...] = exact_polynomial(coefficients).coefficients

    @classmethod
    def approximating(
        cls, name: str, *, degree: int = 2, range: tuple[float, float] = (-4.0, 4.0)
    ) -> PolynomialActivation:
        """The polynomial the scorer would substitute for activation ``name``.

        Training with it (instead of training with ``name`` and approximating after)
        makes the encrypted circuit exact. Same fit as
        :func:`privdl.encrypted.polynomial.approximate`.
        """
        return cls(approximate(name, degree=degree, range=range).coefficients)

    def forward(self, x: Any) -> Any:
        c = self.coefficients
        out = x * c[-1]
        for coef in reversed(c[1:-1]):  # Horner: ((c3 x + c2) x + c1) x + c0
            out = (out + coef) * x
        return out + c[0] if c[0] != 0.0 else out

    def extra_repr(self) -> str:
        return "coefficients=(" + ", ".join(f"{c:.6g}" for c in self.coefficients) + ")"


class Square(PolynomialActivation):
    """``x^2`` (the CryptoNets activation): one multiplicative level, evaluated exactly."""

    def __init__(self) -> None:
        super().__init__((0.0, 0.0, 1.0))

    def forward(self, x: Any) -> Any:
        return x * x

    def extra_repr(self) -> str:
        return ""
