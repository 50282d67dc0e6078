"""How far the encrypted circuit is from the model it stands for, measured in plaintext.

An MLP with ReLU (Tanh, GELU...) cannot be evaluated on CKKS ciphertexts as it is:
each activation is replaced by a low-degree polynomial fitted on an input interval
(:func:`~privdl.encrypted.polynomial.approximate`), and an encrypted probability replaces
the sigmoid by one too. Inside the interval the polynomial is off by its fitted
``max_error``; outside it, the polynomial grows without bound. What a user gets is
off by the propagation of both through the network, which depends on the inputs.

:func:`assess` measures it without any key: the polynomial circuit and the exact model
are both evaluated in numpy on a calibration sample (or on points sampled inside given
input bounds), and the difference is taken on what the user receives (the probability
for a logistic model, the class probabilities for softmax, the value for a
regression). The result is an :class:`ApproximationReport`: aggregates only (sample
size, max and mean absolute error, per activation the interval it was fitted on, the
interval its inputs spanned and the share outside), never a row. The max error is a
statistic *of that sample*, not a bound for every possible input.

A circuit without approximated activations (linear / logistic returning the logit,
``x^2`` or :class:`~privdl.encrypted.activations.PolynomialActivation` networks) is
exact: the encrypted result differs from the model only by CKKS noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from privdl.errors import FormatError, InputError, UsageError
from privdl.serialize import JSONSerializable

if TYPE_CHECKING:
    import numpy as np

    from privdl.encrypted.models import ModelSpec
    from privdl.encrypted.polynomial import PolyActivation

__all__ = [
    "BOUNDS_SAMPLES",
    "CKKS_NOISE_LINEAR",
    "CKKS_NOISE_POLYNOMIAL",
    "DEFAULT_TOLERANCE",
    "ActivationRange",
    "ApproximationReport",
    "assess",
]

#: warn above this absolute error on the user's output (a probability, for a classifier)
DEFAULT_TOLERANCE = 1e-2
#: points sampled uniformly inside ``bounds=`` (plus the corners extreme for each
#: first-layer unit); fixed seed, so the same bounds give the same report
BOUNDS_SAMPLES = 4096
#: what "exact" means here: CKKS noise at the default 2^40 scale, as an order of
#: magnitude on a probability (tests/encrypted/test_approximation.py measures 3e-8 for a
#: logistic model, 5e-6 for x^2 and degree-2 polynomial networks at depth 3-4)
CKKS_NOISE_LINEAR = 1e-7
CKKS_NOISE_POLYNOMIAL = 1e-5
FORMAT = "privdl-he-approximation/1"
STATUSES = ("exact", "measured", "unmeasured")


@dataclass(frozen=True)
class ActivationRange(JSONSerializable):
    """One polynomial of the circuit and the inputs it met.

    Attributes:
        position: ``"hidden 1"``, ``"hidden 2"``... or ``"output sigmoid"``.
        name: the activation replaced (``"relu"``), or ``"square"`` / ``"polynomial"``.
        degree: the polynomial's degree.
        exact: True when the activation is the polynomial itself.
        fitted_range: the interval the polynomial was fitted on.
        fitted_error: its max error on that interval (dense grid; 0 when exact).
        seen_range: smallest and largest input it got on the sample (None: unmeasured).
        share_outside: fraction of its inputs (rows x units) outside ``fitted_range``.
    """

    position: str
    name: str
    degree: int
    exact: bool
    fitted_range: tuple[float, float]
    fitted_error: float
    seen_range: tuple[float, float] | None = None
    share_outside: float | None = None

    # to_json / from_json: privdl.serialize.JSONSerializable
    _json_kind = "activation range"
    _json_indent = 2
    _json_error = FormatError

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "name": self.name,
            "degree": self.degree,
            "exact": self.exact,
            "fitted_range": list(self.fitted_range),
            "fitted_error": self.fitted_error,
            "seen_range": None if self.seen_range is None else list(self.seen_range),
            "share_outside": self.share_outside,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActivationRange:
        seen = data.get("seen_range")
        share = data.get("share_outside")
        return cls(
            position=str(data["position"]),
            name=str(data["name"]),
            degree=int(data["degree"]),
            exact=bool(data["exact"]),
            fitted_range=(float(data["fitted_range"][0]), float(data["fitted_range"][1])),
            fitted_error=float(data["fitted_error"]),
            seen_range=None if seen is None else (float(seen[0]), float(seen[1])),
            share_outside=None if share is None else float(share),
        )

    def describe(self) -> str:
        if self.exact:
            return f"{self.name} (exact)"
        lo, hi = self.fitted_range
        return f"{self.name} by a degree-{self.degree} polynomial on [{lo:g}, {hi:g}]"


@dataclass(frozen=True)
class ApproximationReport(JSONSerializable):
    """The gap between the encrypted circuit and the exact model (aggregates only).

    Attributes:
        status: ``"exact"`` (no approximated activation: CKKS noise only),
            ``"measured"`` (on a sample) or ``"unmeasured"`` (approximated, no sample).
        quantity: what the error is measured on: ``"probability"``,
            ``"class probabilities"`` or ``"value"``.
        activations: the polynomials, in circuit order.
        tolerance: the absolute error on ``quantity`` above which privdl warns.
        source: ``"calibration"`` (a given sample) or ``"bounds"`` (points sampled in a
            box); None unless measured.
        rows: the sample size (0 unless measured).
        max_abs_error, mean_abs_error: over the sample (and over outputs); 0 when
            exact, None when unmeasured.
    """

    status: str
    quantity: str
    activations: tuple[ActivationRange, ...] = ()
    tolerance: float = DEFAULT_TOLERANCE
    source: str | None = None
    rows: int = 0
    max_abs_error: float | None = None
    mean_abs_error: float | None = None

    # to_json / from_json: privdl.serialize.JSONSerializable
    _json_kind = "approximation report"
    _json_indent = 2
    _json_error = FormatError

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise FormatError(f"approximation status must be one of {STATUSES}")

    @property
    def approximated(self) -> tuple[ActivationRange, ...]:
        """The polynomials that stand in for another function."""
        return tuple(a for a in self.activations if not a.exact)

    @property
    def within_tolerance(self) -> bool | None:
        """True / False when exact or measured; None when unmeasured."""
        if self.status == "exact":
            return True
        if self.max_abs_error is None:
            return None
        return self.max_abs_error <= self.tolerance

    def summary(self) -> str:
        """One line stating the approximation (what a report or the CLI prints)."""
        if self.status == "exact":
            noise = CKKS_NOISE_POLYNOMIAL if self.activations else CKKS_NOISE_LINEAR
            return (
                "exact circuit: no activation is approximated; encrypted results differ from "
                f"the model by CKKS noise only (order {noise:.0e} at the default 2^40 scale)"
            )
        what = "; ".join(a.describe() for a in self.approximated)
        if self.status == "unmeasured":
            return f"approximates {what}; the error on the {self.quantity} is unmeasured"
        assert self.max_abs_error is not None and self.mean_abs_error is not None
        sample = "calibration rows" if self.source == "calibration" else "points sampled inside the bounds"
        text = (
            f"approximates {what}: on {self.rows} {sample} the {self.quantity} differs from "
            f"the exact model by up to {self.max_abs_error:.3g} (mean {self.mean_abs_error:.2g})"
        )
        outside = [a for a in self.approximated if a.share_outside]
        if outside:
            text += "; " + ", ".join(
                f"{a.share_outside:.1%} of the {a.position} inputs fall outside its fitted range"
                for a in outside
            )
        return text

    def warning(self) -> str | None:
        """The warning to issue, or None (exact, or measured within the tolerance)."""
        if self.status == "exact" or self.within_tolerance:
            return None
        fix = (
            "train with polynomial activations (privdl.encrypted.Square / PolynomialActivation) "
            "for an exact circuit"
        )
        if self.status == "unmeasured":
            return (
                f"encrypted scoring {self.summary()}: pass a calibration sample or input bounds "
                f"(EncryptedScorer.from_model(..., calibration=X or bounds=(lo, hi))), or {fix}"
            )
        return (
            f"encrypted scoring {self.summary()}, above the tolerance {self.tolerance:g}: "
            f"widen activation_range or raise the degree, or {fix}"
        )

    # -- serialization ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "status": self.status,
            "quantity": self.quantity,
            "activations": [a.to_dict() for a in self.activations],
            "tolerance": self.tolerance,
            "source": self.source,
            "rows": self.rows,
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.mean_abs_error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApproximationReport:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise FormatError(f"approximation report: expected format {FORMAT}")
        try:
            return cls(
                status=str(data["status"]),
                quantity=str(data["quantity"]),
                activations=tuple(ActivationRange.from_dict(a) for a in data["activations"]),
                tolerance=float(data["tolerance"]),
                source=None if data.get("source") is None else str(data["source"]),
                rows=int(data["rows"]),
                max_abs_error=_opt_float(data.get("max_abs_error")),
                mean_abs_error=_opt_float(data.get("mean_abs_error")),
            )
        except (KeyError, TypeError, ValueError, IndexError):
            raise FormatError("approximation report: malformed") from None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


# ----------------------------------------------------------------------------- measuring
def assess(
    spec: ModelSpec,
    *,
    output: str = "logit",
    sigmoid: PolyActivation | None = None,
    calibration: Any = None,
    bounds: tuple[Any, Any] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ApproximationReport:
    """Compare the polynomial circuit with the exact model, in plaintext.

    Args:
        spec: the model as the scorer evaluates it.
        output: the scorer's output (``"logit"``: the client applies the exact link;
            ``"probability"``: ``sigmoid`` is evaluated encrypted).
        sigmoid: the encrypted sigmoid's polynomial (``output="probability"``).
        calibration: rows x ``spec.columns`` raw feature values (array, or a DataFrame
            encoded with the model's TableEncoder or its feature specs). Not kept.
        bounds: ``(low, high)``, scalars or one per column, of the raw inputs; points
            are sampled uniformly inside (see :data:`BOUNDS_SAMPLES`).
        tolerance: absolute error on the user's output above which to warn.

    Raises:
        UsageError: both ``calibration`` and ``bounds``, or a tolerance that is not > 0.
        InputError: a calibration sample or bounds that do not fit the model.
    """
    if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance > 0):
        raise UsageError("tolerance must be a positive number")
    if calibration is not None and bounds is not None:
        raise UsageError("give calibration= or bounds=, not both")
    tolerance = float(tolerance)
    quantity = _quantity(spec, output)
    polys: list[tuple[str, PolyActivation]] = [
        (f"hidden {i + 1}", act) for i, act in enumerate(spec.activations)
    ]
    if sigmoid is not None:
        polys.append(("output sigmoid", sigmoid))
    unmeasured = tuple(_range_entry(position, act) for position, act in polys)
    if all(act.exact for _, act in polys):
        return ApproximationReport(
            "exact", quantity, unmeasured, tolerance, max_abs_error=0.0, mean_abs_error=0.0
        )
    if calibration is None and bounds is None:
        return ApproximationReport("unmeasured", quantity, unmeasured, tolerance)
    if calibration is not None:
        matrix, source = _calibration_matrix(spec, calibration), "calibration"
    else:
        matrix, source = _box_sample(spec, *_bounds(spec, bounds)), "bounds"
    # the sample itself is not kept: only the aggregates below leave this function
    entries, errors = _measure(spec, matrix, output=output, sigmoid=sigmoid)
    return ApproximationReport(
        "measured",
        quantity,
        entries,
        tolerance,
        source=source,
        rows=int(matrix.shape[0]),
        max_abs_error=float(errors.max()),
        mean_abs_error=float(errors.mean()),
    )


def _quantity(spec: ModelSpec, output: str) -> str:
    if output == "probability" or spec.link == "logit":
        return "probability"
    return "class probabilities" if spec.link == "softmax" else "value"


def _range_entry(
    position: str,
    act: PolyActivation,
    seen: tuple[float, float] | None = None,
    share: float | None = None,
) -> ActivationRange:
    return ActivationRange(
        position=position,
        name=act.name,
        degree=act.degree,
        exact=act.exact,
        fitted_range=(float(act.range[0]), float(act.range[1])),
        fitted_error=float(act.max_error),
        seen_range=seen,
        share_outside=share,
    )


def _calibration_matrix(spec: ModelSpec, calibration: Any) -> np.ndarray:
    import numpy as np
    import pandas as pd

    from privdl.encrypted.packing import encoder_matrix, feature_matrix

    columns = list(spec.columns)
    if isinstance(calibration, pd.DataFrame):
        encoder = spec.info.get("encoder")
        if encoder is not None:
            matrix = encoder_matrix(calibration, columns, encoder, source="calibration")
        else:
            matrix = feature_matrix(calibration, columns, source="calibration")
    else:
        if hasattr(calibration, "detach"):  # a torch tensor
            calibration = calibration.detach().cpu().numpy()
        try:
            matrix = np.asarray(calibration, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("calibration: not a numeric array") from None
    if matrix.ndim != 2 or matrix.shape[1] != len(columns):
        raise InputError(
            f"calibration: needs rows x {len(columns)} model columns, got shape {tuple(matrix.shape)}"
        )
    if matrix.shape[0] == 0:
        raise InputError("calibration: the sample has no rows")
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise InputError(f"calibration: row {int(np.flatnonzero(bad)[0]) + 1} holds a non-finite value")
    return matrix


def _bounds(spec: ModelSpec, bounds: Any) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    d = len(spec.columns)
    try:
        lo_in, hi_in = bounds
        lo = np.broadcast_to(np.asarray(lo_in, dtype=np.float64), (d,)).copy()
        hi = np.broadcast_to(np.asarray(hi_in, dtype=np.float64), (d,)).copy()
    except (TypeError, ValueError):
        raise InputError(f"bounds: give (low, high), each a number or {d} numbers (one per column)") from None
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise InputError("bounds: must be finite")
    if (lo > hi).any():
        j = int(np.flatnonzero(lo > hi)[0])
        raise InputError(f"bounds: low is above high for column {spec.columns[j]!r}")
    return lo, hi


def _box_sample(spec: ModelSpec, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Uniform points in the box, plus for each first-layer unit the two corners where
    its input is largest and smallest (a linear map's extremes over a box), so the
    first activation's seen range is its true range over the box."""
    import numpy as np

    rng = np.random.default_rng(0)
    uniform = lo + (hi - lo) * rng.random((BOUNDS_SAMPLES, lo.shape[0]))
    w, _ = spec.folded()
    if spec.activations:
        corners = np.vstack([np.where(w > 0, hi, lo), np.where(w > 0, lo, hi)])
        return np.vstack([uniform, corners])
    return uniform


def _measure(
    spec: ModelSpec,
    matrix: np.ndarray,
    *,
    output: str,
    sigmoid: PolyActivation | None,
) -> tuple[tuple[ActivationRange, ...], np.ndarray]:
    import numpy as np

    w, b = spec.folded()
    circuit = matrix @ w.T + b  # what the encrypted evaluation computes (in plaintext)
    exact = circuit.copy()  # the model with its true activations
    entries: list[ActivationRange] = []
    with np.errstate(over="ignore", invalid="ignore"):
        for i, (act, layer) in enumerate(zip(spec.activations, spec.layers[1:], strict=True)):
            entries.append(_seen(f"hidden {i + 1}", act, circuit))
            circuit = act(circuit) @ layer.w.T + layer.b
            exact = act.reference(exact) @ layer.w.T + layer.b
        if sigmoid is not None:
            entries.append(_seen("output sigmoid", sigmoid, circuit))
            got = sigmoid(circuit)
        else:
            got = _link(spec.link, circuit)
        want = _link(spec.link, exact)
        errors = np.abs(got - want)
    errors = np.where(np.isfinite(errors), errors, np.finfo(np.float64).max)
    return tuple(entries), errors


def _seen(position: str, act: PolyActivation, x: np.ndarray) -> ActivationRange:
    import numpy as np

    lo, hi = act.range
    share = float(np.mean((x < lo) | (x > hi))) if x.size else 0.0
    return _range_entry(position, act, (float(np.min(x)), float(np.max(x))), share)


def _link(link: str, z: np.ndarray) -> np.ndarray:
    import numpy as np

    if link == "logit":
        return 0.5 * (1.0 + np.tanh(0.5 * z))
    if link == "softmax":
        shifted = z - np.max(z, axis=1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=1, keepdims=True)
    return z
