"""Feature-major SIMD packing: one ciphertext per feature column holding up to N/2 rows.

A linear score is then a sum of ciphertext-by-scalar products with no rotations (no
Galois keys). Chunk ``i`` holds rows ``[i * N/2, (i + 1) * N/2)`` of every column, so
row order survives; the last chunk is short (its size is stored, not padded with
values that could be mistaken for rows).

Feature specs name what is encrypted: ``"age"`` is a numeric column, ``"sex=Female"``
an indicator (1.0 where the column equals the value, else 0.0), so categorical
columns are one-hot encoded identically on the data owner's and the model's side.
Standardization is stored with the model and folded into its first layer (see
:class:`Standardizer`), so both sides apply exactly the same transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from privdl.errors import InputError, UsageError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = [
    "Standardizer",
    "as_matrix",
    "chunk_bounds",
    "encoder_groups",
    "encoder_matrix",
    "feature_matrix",
    "parse_feature",
]


def parse_feature(spec: str) -> tuple[str, str | None]:
    """Split a feature spec: ``"age"`` -> ``("age", None)``, ``"sex=F"`` -> ``("sex", "F")``."""
    if "=" in spec:
        column, value = spec.split("=", 1)
        return column, value
    return spec, None


def source_columns(features: Sequence[str]) -> list[str]:
    """The table columns a list of feature specs reads, in first-use order."""
    seen: dict[str, None] = {}
    for spec in features:
        seen.setdefault(parse_feature(spec)[0], None)
    return list(seen)


def feature_matrix(frame: pd.DataFrame, features: Sequence[str], *, source: str = "input") -> np.ndarray:
    """Build the float64 matrix (rows x features) for ``features`` from ``frame``.

    Raises:
        InputError: a column is missing, or a numeric feature holds a value that is not
            a finite number (the message names the column and the 1-based row, never
            the value).
    """
    import numpy as np
    import pandas as pd

    if not features:
        raise UsageError("no feature columns given")
    out = np.empty((len(frame), len(features)), dtype=np.float64)
    as_text: dict[str, np.ndarray] = {}  # one string conversion per column, not per value
    for j, spec in enumerate(features):
        column, value = parse_feature(spec)
        if column not in frame.columns:
            raise InputError(f"{source}: column {column!r} is missing")
        series = frame[column]
        if value is not None:
            if column not in as_text:
                as_text[column] = series.astype(str).to_numpy()
            out[:, j] = as_text[column] == value
            continue
        numeric = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numeric)
        if bad.any():
            row = int(np.flatnonzero(bad)[0]) + 1
            raise InputError(
                f"{source}: column {column!r} row {row} is not a finite number "
                f"({int(bad.sum())} such rows); encrypt categories as {column}=VALUE"
            )
        out[:, j] = numeric
    return out


def as_matrix(
    data: pd.DataFrame | np.ndarray | Any,
    columns: Sequence[str] | None,
    *,
    encoder: Any = None,
) -> tuple[np.ndarray, list[str]]:
    """A float64 matrix and its column names from a DataFrame or a 2-D array.

    With ``encoder`` (a TableEncoder, e.g. from a saved PrivateTrainer model) a
    DataFrame is encoded by it and ``columns`` are its feature names.
    """
    import numpy as np
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        if encoder is not None:
            if columns is None:
                raise UsageError("name the encoder features to encrypt with columns=")
            return encoder_matrix(data, columns, encoder), list(columns)
        names = list(columns) if columns is not None else [str(c) for c in data.columns]
        return feature_matrix(data, names), names
    matrix = np.asarray(data, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2:
        raise InputError(f"features must be a 2-D table, got {matrix.ndim} dimensions")
    names = list(columns) if columns is not None else [f"x{i}" for i in range(matrix.shape[1])]
    if len(names) != matrix.shape[1]:
        raise UsageError(f"{len(names)} column names for {matrix.shape[1]} columns")
    bad = ~np.isfinite(matrix)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"features: column {names[col]!r} row {row + 1} is not a finite number")
    return matrix, names


def chunk_bounds(rows: int, slots: int) -> list[tuple[int, int]]:
    """Row ranges ``[(start, stop), ...]`` of at most ``slots`` rows each, in order."""
    return [(a, min(a + slots, rows)) for a in range(0, rows, slots)]


@dataclass(frozen=True)
class Standardizer:
    """Feature standardization ``(x - mean) / scale``, stored with the model.

    Rather than transforming ciphertexts, the scorer folds it into the first layer
    (``w' = w / scale``, ``b' = b - sum(w * mean / scale)``), which is the same affine
    map, costs nothing per row and lets the data owner encrypt raw values.
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.scale):
            raise InputError("scaler mean and scale have different lengths")
        if any(s == 0 for s in self.scale):
            raise InputError("scaler has a zero scale")

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        import numpy as np

        return (matrix - np.asarray(self.mean)) / np.asarray(self.scale)

    def fold(self, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fold into a layer ``weight`` (outputs x inputs) and ``bias`` (outputs,)."""
        import numpy as np

        mean = np.asarray(self.mean, dtype=np.float64)
        scale = np.asarray(self.scale, dtype=np.float64)
        w = weight / scale[None, :]
        return w, bias - w @ mean

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Standardizer:
        try:
            return cls(
                mean=tuple(float(v) for v in data["mean"]),
                scale=tuple(float(v) for v in data["scale"]),
            )
        except (KeyError, TypeError, ValueError):
            raise InputError("scaler needs 'mean' and 'scale' lists of numbers") from None


# ----------------------------------------------------------------------------- TableEncoder
def _encoder_data(encoder: Any) -> dict[str, Any]:
    import json

    if isinstance(encoder, dict):
        return dict(encoder)
    if isinstance(encoder, str):
        return dict(json.loads(encoder))
    if hasattr(encoder, "to_json"):
        return dict(json.loads(encoder.to_json()))
    raise UsageError(f"unsupported encoder {type(encoder).__name__}; pass a TableEncoder")


def encoder_groups(encoder: Any) -> list[tuple[str, list[str]]]:
    """``(table column, its feature names)`` for each column a TableEncoder encodes."""
    data = _encoder_data(encoder)
    names = list(data.get("feature_names", []))
    groups = []
    pos = 0
    for spec in data.get("columns", []):
        # numeric: mid, width, missing; categorical: one per value, missing, other
        n = 3 if spec.get("kind") == "numeric" else len(spec.get("values", [])) + 2
        groups.append((str(spec["name"]), names[pos : pos + n]))
        pos += n
    if pos != len(names):
        raise UsageError("the TableEncoder's columns do not add up to its feature names")
    return groups


def encoder_matrix(
    frame: pd.DataFrame, features: Sequence[str], encoder: Any, *, source: str = "input"
) -> np.ndarray:
    """Encode ``frame`` with the model's TableEncoder and keep ``features`` (in order).

    Only the table columns that ``features`` come from are needed, so the scoring
    service can encode the plaintext columns without ever seeing the sensitive ones.

    Raises:
        InputError: a feature the encoder does not make, or a missing table column.
    """
    import numpy as np

    from privdl.train.encoding import TableEncoder

    data = _encoder_data(encoder)
    wanted = list(features)
    keep = [(col, names) for col, names in encoder_groups(data) if set(names) & set(wanted)]
    made = [n for _, names in keep for n in names]
    unknown = [f for f in wanted if f not in made]
    if unknown:
        raise InputError(f"{source}: the model's encoder makes no feature(s) {unknown}")
    absent = [col for col, _ in keep if col not in frame.columns]
    if absent:
        raise InputError(f"{source}: column(s) {absent} are missing")
    data["columns"] = [s for s in data["columns"] if s["name"] in {c for c, _ in keep}]
    data["feature_names"] = made
    sub = TableEncoder.from_json(data)
    matrix = np.asarray(sub.transform(frame[[c for c, _ in keep]]), dtype=np.float64)
    return matrix[:, [made.index(f) for f in wanted]]
