"""Polynomials that stand in for activations: what CKKS can evaluate.

CKKS computes additions and products only, so a ReLU or a sigmoid is replaced by a
low-degree polynomial fitted on an input range (:func:`approximate`), or is one
already (:func:`exact_polynomial`: ``x^2`` or a network trained with
:class:`~privdl.encrypted.activations.PolynomialActivation`). :class:`PolyActivation`
is the numpy value both the model specs and the scorer use; the torch modules of
:mod:`~privdl.encrypted.activations` build on it, so this module needs numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from privdl.encrypted.params import poly_depth
from privdl.errors import FormatError, UsageError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DEFAULT_RANGE",
    "EXACT_ACTIVATIONS",
    "SIGMOID_RANGE",
    "PolyActivation",
    "activation_function",
    "approximate",
    "exact_polynomial",
]

DEFAULT_RANGE = (-4.0, 4.0)
SIGMOID_RANGE = (-8.0, 8.0)
# activations that *are* their polynomial: the encrypted circuit computes them exactly
EXACT_ACTIVATIONS = ("square", "polynomial")


def activation_function(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The exact activation ``name`` as a numpy function (what a fit is measured against).

    Raises:
        UsageError: an activation the scorer cannot approximate.
    """
    import numpy as np

    def gelu(x: np.ndarray) -> np.ndarray:
        from math import erf, sqrt

        return x * 0.5 * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))

    table: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "relu": lambda x: np.maximum(x, 0.0),
        "tanh": np.tanh,
        "sigmoid": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)),
        "silu": lambda x: x * 0.5 * (1.0 + np.tanh(0.5 * x)),
        "gelu": gelu,
        "square": lambda x: x * x,
    }
    if name not in table:
        raise UsageError(f"activation {name!r} is not supported; use one of {sorted(table)}")
    return table[name]


@dataclass(frozen=True)
class PolyActivation:
    """A polynomial standing in for an activation on ``range``.

    Attributes:
        name: the activation replaced (``"relu"``, ``"sigmoid"``, ``"square"``...).
        coefficients: ascending powers, ``c0 + c1 x + c2 x^2 + ...``.
        range: the input interval the fit is valid on.
        max_error: ``max |poly(x) - activation(x)|`` over ``range`` (dense grid); 0 when
            the activation is itself this polynomial.
    """

    name: str
    coefficients: tuple[float, ...]
    range: tuple[float, float]
    max_error: float

    @property
    def degree(self) -> int:
        return len(self.coefficients) - 1

    @property
    def exact(self) -> bool:
        """True when the activation is this polynomial (no approximation, any input)."""
        return self.name in EXACT_ACTIVATIONS

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The activation this polynomial stands for (itself when :attr:`exact`)."""
        return self(x) if self.exact else activation_function(self.name)(x)

    @property
    def depth(self) -> int:
        """Levels the scorer's evaluation uses (``x^2`` alone: 1; degree 2-3: 2)."""
        if tuple(self.coefficients) == (0.0, 0.0, 1.0):
            return 1
        return poly_depth(self.degree)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import numpy as np

        return np.polynomial.polynomial.polyval(x, np.asarray(self.coefficients))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "coefficients": list(self.coefficients),
            "range": list(self.range),
            "max_error": self.max_error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolyActivation:
        try:
            return cls(
                name=str(data["name"]),
                coefficients=tuple(float(c) for c in data["coefficients"]),
                range=(float(data["range"][0]), float(data["range"][1])),
                max_error=float(data["max_error"]),
            )
        except (KeyError, TypeError, ValueError, IndexError):
            raise FormatError("activation needs name, coefficients, range and max_error") from None


def approximate(name: str, *, degree: int = 2, range: tuple[float, float] = DEFAULT_RANGE) -> PolyActivation:
    """Least-squares polynomial of ``degree`` for activation ``name`` on ``range``.

    The fit uses Chebyshev nodes; ``max_error`` is measured on 4001 evenly spaced
    points of the range. ``"square"`` is exact (``x^2``, error 0).

    Example:
        >>> approximate("sigmoid", degree=3, range=(-8, 8)).max_error < 0.12
        True
    """
    import numpy as np

    if name == "square":
        return PolyActivation("square", (0.0, 0.0, 1.0), (float(range[0]), float(range[1])), 0.0)
    if not 1 <= degree <= 3:
        raise UsageError("polynomial degree must be 1, 2 or 3")
    lo, hi = float(range[0]), float(range[1])
    if not lo < hi:
        raise UsageError("activation range must be (low, high) with low < high")
    fn = activation_function(name)
    k = np.arange(4 * (degree + 1) + 64)
    nodes = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(np.pi * (k + 0.5) / len(k))
    fit = np.polynomial.Polynomial.fit(nodes, fn(nodes), degree).convert()
    coef = np.asarray(fit.coef, dtype=np.float64)
    # round-off terms (the even powers of an odd function) would encode to zero and
    # make a transparent ciphertext: drop them
    coef[np.abs(coef) < 1e-9 * max(float(np.max(np.abs(coef))), 1e-300)] = 0.0
    coefficients = tuple(float(c) for c in coef) + (0.0,) * (degree + 1 - len(coef))
    grid = np.linspace(lo, hi, 4001)
    poly = PolyActivation(name, coefficients, (lo, hi), 0.0)
    error = float(np.max(np.abs(poly(grid) - fn(grid))))
    return replace(poly, max_error=error)


def exact_polynomial(
    coefficients: Sequence[float], *, range: tuple[float, float] = DEFAULT_RANGE
) -> PolyActivation:
    """An activation that is the polynomial ``coefficients`` (ascending powers, degree 1-3).

    The encrypted scorer evaluates it exactly (``max_error`` 0 on any input); ``range``
    is kept for the record only.

    Raises:
        UsageError: degree outside 1-3, a non-finite coefficient, or no variable term.
    """
    import math

    coef = [float(c) for c in coefficients]
    while len(coef) > 1 and coef[-1] == 0.0:
        coef.pop()
    if not all(math.isfinite(c) for c in coef):
        raise UsageError("polynomial activation coefficients must be finite")
    if not 2 <= len(coef) <= 4:
        raise UsageError("a polynomial activation needs degree 1, 2 or 3 (2 to 4 coefficients)")
    rng = (float(range[0]), float(range[1]))
    if tuple(coef) == (0.0, 0.0, 1.0):
        return PolyActivation("square", (0.0, 0.0, 1.0), rng, 0.0)
    return PolyActivation("polynomial", tuple(coef), rng, 0.0)
