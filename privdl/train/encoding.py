"""TableEncoder: a released (raw or k-anonymized) table to model-ready float32 features.

Generalized cells are encoded by what they say, not by their text:

* **numeric** columns: every cell is an interval (a number is ``[x, x]``, ``30-39`` is
  ``[30, 39]``, ``[30, 40)`` is ``[30, 40)``, ``<20``/``>=65`` are open-ended, ``*`` is
  the whole domain), encoded as its *midpoint* and *width*, both scaled by the column's
  bounds, plus a *missing* flag. A raw and a generalized table share one feature space.
* **categorical** columns: one-hot over the released domain. With a hierarchy, a value
  also switches on every ancestor (``Bachelors`` -> ``Bachelors``, ``Undergraduate``,
  ``Higher education``), so a generalized cell (``Higher education``) and a raw one agree
  on what they share. A set (``{a, b}`` or ``a|b``) averages its members; ``*`` is all
  zeros; missing values are their own category; values outside the domain go to an
  ``(other)`` column.

Domains come from data-independent sources where they exist: the policy's hierarchies
(ARX CSV files: every label and, for numeric hierarchies, the bounds),
``numeric_bounds=`` and ``categories=``. Where they must come from the data (min/max,
vocabularies, class labels), the fitted encoder lists them in ``data_dependent_``:
statistics fitted on private training data are a release that DP-SGD does not cover,
and the privacy report says so.

numpy + pandas only: a scoring server loads a saved encoder without torch.

Example:
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"age": ["30-39", "45", "*"], "sex": ["F", "M", None]})
    >>> enc = TableEncoder(numeric_bounds={"age": (0, 100)}, categories={"sex": ["F", "M"]})
    >>> enc.fit_transform(frame).shape
    (3, 7)
    >>> enc.data_dependent_
    []
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from privdl.errors import InputError, PolicyError, UsageError

__all__ = ["TableEncoder"]

FORMAT_VERSION = 1
MISSING = "(missing)"
OTHER = "(other)"
ROOT = "*"
_MISSING_TEXT = {"", "?", "nan", "none", "null", MISSING}

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^\s*({_NUM})\s*(?:-|–|~|\.\.)\s*({_NUM})\s*$")
_BRACKET = re.compile(rf"^\s*[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*[\])]\s*$")
_OPEN = re.compile(rf"^\s*(<=|>=|<|>|≤|≥)\s*({_NUM})\s*$")
_PLUS = re.compile(rf"^\s*({_NUM})\s*\+\s*$")


def _is_missing_text(text: str) -> bool:
    return text.strip().lower() in _MISSING_TEXT


def _cell_text(value: Any) -> str | None:
    """Cell as text, or None when missing."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    return None if _is_missing_text(text) else text.strip()


def _parse_interval(value: Any) -> tuple[float, float] | str | None:
    """A cell as ``(lo, hi)``; ``"*"`` for the whole domain; ``None`` when missing.

    Raises:
        ValueError: not a number, range or ``*``.
    """
    if isinstance(value, bool | np.bool_):
        return (float(value), float(value))
    if isinstance(value, int | float | np.integer | np.floating):
        x = float(value)
        if math.isnan(x):
            return None
        return (x, x)
    text = _cell_text(value)
    if text is None:
        return None
    if text == ROOT:
        return ROOT
    try:
        x = float(text)
        if math.isfinite(x):
            return (x, x)
    except ValueError:
        pass
    for pattern in (_RANGE, _BRACKET):
        m = pattern.match(text)
        if m:
            a, b = float(m.group(1)), float(m.group(2))
            return (min(a, b), max(a, b))
    m = _OPEN.match(text)
    if m:
        op, x = m.group(1), float(m.group(2))
        return (-math.inf, x) if op in ("<", "<=", "≤") else (x, math.inf)
    m = _PLUS.match(text)
    if m:
        return (float(m.group(1)), math.inf)
    raise ValueError("not numeric")


def _members(text: str) -> list[str] | None:
    """Members of a released set ``{a, b}`` / ``a|b``, or None for a single value."""
    t = text.strip()
    if t.startswith("{") and t.endswith("}"):
        parts = [p.strip() for p in t[1:-1].split(",")]
    elif "|" in t:
        parts = [p.strip() for p in t.split("|")]
    else:
        return None
    parts = [p for p in parts if p]
    return parts or None


def _load_hierarchy(column: str, spec: str, base_dir: Path | None) -> list[list[str]] | None:
    """ARX paths ``[leaf, level1, ..., *]`` for a file spec; None for built-in specs."""
    if spec.split(":", 1)[0] in ("prefix", "interval", "date"):
        return None
    path = Path(spec)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    from privdl.anonymize.hierarchy import load_arx_csv

    return load_arx_csv(path, column=column)


class TableEncoder:
    """Turn a released table into float32 features and its target into labels.

    Args:
        policy: the anonymization :class:`~privdl.Policy`; its hierarchies give domains,
            its ``drop`` and identifier columns are not features.
        numeric_bounds: column -> ``(low, high)``: data-independent bounds; the column
            is numeric.
        categories: column -> list of values: the released domain of a categorical
            column (for the target column: its class labels, in order).
        target: the target column (also accepted by :meth:`fit`).

    Attributes (after fit):
        columns_: per feature column, how it is encoded (JSON-compatible dicts).
        feature_names_: one name per output column (``age:mid``, ``sex=F``...).
        classes_: target class labels (``None`` for a numeric regression target).
        data_dependent_: what was learned from the data rather than given (for the
            privacy report: preprocessing not covered by DP).
        dropped_: columns present in the fitted frame but not used as features.
    """

    def __init__(
        self,
        policy: Any = None,
        *,
        numeric_bounds: Mapping[str, tuple[float, float]] | None = None,
        categories: Mapping[str, Sequence[Any]] | None = None,
        target: str | None = None,
    ) -> None:
        self.policy = policy
        self.numeric_bounds = numeric_bounds
        self.categories = categories
        self.target = target

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (what goes into an audit record)."""
        policy = self.policy
        return {
            "policy": policy.get_params() if hasattr(policy, "get_params") else None,
            "numeric_bounds": {k: list(v) for k, v in (self.numeric_bounds or {}).items()},
            "categories": {k: [str(x) for x in v] for k, v in (self.categories or {}).items()},
            "target": self.target,
        }

    def __repr__(self) -> str:
        fitted = f", {len(self.feature_names_)} features" if hasattr(self, "feature_names_") else ""
        return f"TableEncoder(target={self.target!r}{fitted})"

    # -- fitting ------------------------------------------------------------------

    def fit(self, frame: pd.DataFrame, target: str | None = None) -> TableEncoder:
        """Decide each column's encoding and domain.

        Args:
            frame: the (released) training table.
            target: the target column; overrides the constructor's.

        Raises:
            InputError: a named column is missing, or a column mixes numbers and text.
            PolicyError: a hierarchy file cannot be read.
        """
        if not isinstance(frame, pd.DataFrame):
            raise UsageError("TableEncoder.fit expects a pandas DataFrame")
        target = target if target is not None else self.target
        if target is not None and target not in frame.columns:
            raise InputError(f"target column {target!r} is not in the table")
        bounds = dict(self.numeric_bounds or {})
        cats = {k: [str(x) for x in v] for k, v in (self.categories or {}).items()}
        for name in list(bounds) + list(cats):
            if name not in frame.columns and name != target:
                raise InputError(f"column {name!r} (given bounds or categories) is not in the table")
        for name, (lo, hi) in bounds.items():
            if not (math.isfinite(float(lo)) and math.isfinite(float(hi)) and float(lo) < float(hi)):
                raise PolicyError(f"numeric_bounds for column {name!r} must be finite with low < high")

        policy = self.policy
        hierarchies: Mapping[str, str] = dict(getattr(policy, "hierarchies", {}) or {})
        base_dir = getattr(policy, "base_dir", None)
        excluded = set(getattr(policy, "drop", ()) or ())
        for rule in getattr(policy, "identifiers", ()) or ():
            excluded.add(getattr(rule, "column", rule))

        learned: list[str] = []
        specs: list[dict[str, Any]] = []
        dropped = [c for c in frame.columns if c in excluded]
        for name in frame.columns:
            if name == target or name in excluded:
                continue
            specs.append(
                self._fit_column(str(name), frame[name], bounds, cats, hierarchies, base_dir, learned)
            )

        classes: list[str] | None = None
        regression = False
        if target is not None:
            classes, regression = self._fit_target(frame[target], target, cats, learned)

        self.columns_ = specs
        self.feature_names_ = [n for spec in specs for n in _spec_features(spec)]
        self.target_ = target
        self.classes_ = classes
        self.regression_ = regression
        self.data_dependent_ = learned
        self.dropped_ = [str(c) for c in dropped]
        return self

    def _fit_column(
        self,
        name: str,
        series: pd.Series,
        bounds: Mapping[str, tuple[float, float]],
        cats: Mapping[str, list[str]],
        hierarchies: Mapping[str, str],
        base_dir: Path | None,
        learned: list[str],
    ) -> dict[str, Any]:
        if name in bounds:
            lo, hi = bounds[name]
            return _numeric_spec(name, float(lo), float(hi), "bounds")
        if name in cats:
            return _categorical_spec(name, cats[name], {}, "categories")
        spec = hierarchies.get(name)
        paths = _load_hierarchy(name, spec, base_dir) if spec else None
        if paths:
            numeric_range = _numeric_hierarchy_range(paths)
            if numeric_range is not None:
                return _numeric_spec(name, *numeric_range, "hierarchy")
            nodes: list[str] = []
            ancestors: dict[str, list[str]] = {}
            for path in paths:
                chain = [p for p in path if p != ROOT]
                for i, label in enumerate(chain):
                    if label not in ancestors:
                        nodes.append(label)
                        ancestors[label] = []
                    for up in chain[i:]:
                        if up not in ancestors[label]:
                            ancestors[label].append(up)
            return _categorical_spec(name, nodes, ancestors, "hierarchy")

        uniques = pd.unique(series.dropna())
        if pd.api.types.is_bool_dtype(series.dtype):
            return _numeric_spec(name, 0.0, 1.0, "dtype")
        if pd.api.types.is_numeric_dtype(series.dtype) or _all_intervals(uniques):
            lo, hi = _data_range(uniques)
            learned.append(f"{name}: numeric range (min/max) taken from the training data")
            return _numeric_spec(name, lo, hi, "data")
        singles: set[str] = set()
        for v in uniques:
            text = _cell_text(v)
            if text is not None and text != ROOT:
                singles.update(_members(text) or [text])
        vocab = sorted(singles)
        learned.append(f"{name}: category vocabulary ({len(vocab)} values) taken from the training data")
        return _categorical_spec(name, vocab, {}, "data")

    def _fit_target(
        self, series: pd.Series, target: str, cats: Mapping[str, list[str]], learned: list[str]
    ) -> tuple[list[str] | None, bool]:
        if series.isna().any():
            raise InputError(f"target column {target!r} has {int(series.isna().sum())} missing values")
        if target in cats:
            return cats[target], False
        if pd.api.types.is_float_dtype(series.dtype) and not np.all(
            np.equal(np.mod(series.to_numpy(dtype=float), 1), 0)
        ):
            return None, True
        values = pd.unique(series)
        if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
            classes = [_label_text(v) for v in sorted(values.tolist())]
        else:
            classes = sorted(_label_text(v) for v in values)
        learned.append(f"{target}: class labels ({len(classes)}) taken from the training data")
        return classes, False

    # -- transforming -------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "columns_"):
            raise UsageError("this TableEncoder is not fitted: call fit() first")

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode a table with the fitted domains (unchanged between training and serving).

        Returns:
            ``float32`` array of shape ``(len(frame), len(feature_names_))``.

        Raises:
            InputError: a feature column is missing, or a numeric column has cells
                that are not numbers, ranges or ``*`` (counted, never quoted).
        """
        self._check_fitted()
        missing = [s["name"] for s in self.columns_ if s["name"] not in frame.columns]
        if missing:
            raise InputError(f"columns missing from the table: {', '.join(map(repr, missing))}")
        blocks = [_encode_column(spec, frame[spec["name"]]) for spec in self.columns_]
        if not blocks:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return np.hstack(blocks).astype(np.float32, copy=False)

    def fit_transform(self, frame: pd.DataFrame, target: str | None = None) -> np.ndarray:
        """:meth:`fit`, then :meth:`transform` the same table."""
        return self.fit(frame, target=target).transform(frame)

    def encode_target(self, series: pd.Series) -> np.ndarray:
        """Target values to labels: ``int64`` class indices, or ``float32`` for regression.

        Raises:
            InputError: missing values or labels outside ``classes_`` (counted).
        """
        self._check_fitted()
        name = self.target_ or "target"
        series = pd.Series(series)
        if series.isna().any():
            raise InputError(f"target column {name!r} has {int(series.isna().sum())} missing values")
        if self.regression_ or self.classes_ is None:
            return series.to_numpy(dtype=np.float32)
        index = {c: i for i, c in enumerate(self.classes_)}
        codes, uniques = pd.factorize(series, sort=False)
        lookup = np.array([index.get(_label_text(u), -1) for u in uniques], dtype=np.int64)
        out = lookup[codes]
        unknown = int((out < 0).sum())
        if unknown:
            raise InputError(
                f"target column {name!r}: {unknown} rows have a label the encoder was not "
                f"fitted with ({len(self.classes_)} known classes)"
            )
        return out

    def decode_target(self, labels: Any) -> list[str]:
        """Class indices back to class labels."""
        self._check_fitted()
        if self.classes_ is None:
            raise UsageError("a regression target has no class labels")
        return [self.classes_[int(i)] for i in np.asarray(labels).reshape(-1)]

    # -- persistence --------------------------------------------------------------

    def to_json(self) -> str:
        """The fitted encoder as JSON (saved with the model; no training data inside
        except the domains listed in ``data_dependent_``)."""
        self._check_fitted()
        return json.dumps(
            {
                "format": "privdl-table-encoder",
                "version": FORMAT_VERSION,
                "params": self.get_params(),
                "target": self.target_,
                "columns": self.columns_,
                "feature_names": self.feature_names_,
                "classes": self.classes_,
                "regression": self.regression_,
                "data_dependent": self.data_dependent_,
                "dropped": self.dropped_,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> TableEncoder:
        """Load a fitted encoder from :meth:`to_json` output.

        Raises:
            InputError: not a privdl encoder, or another format version.
        """
        try:
            data = dict(json.loads(text) if isinstance(text, str) else text)
        except (TypeError, ValueError) as exc:
            raise InputError("not a privdl TableEncoder (invalid JSON)") from exc
        if data.get("format") != "privdl-table-encoder":
            raise InputError("not a privdl TableEncoder")
        if data.get("version") != FORMAT_VERSION:
            raise InputError(
                f"TableEncoder format version {data.get('version')}; this privdl reads {FORMAT_VERSION}"
            )
        params = data.get("params") or {}
        enc = cls(
            numeric_bounds={k: tuple(v) for k, v in (params.get("numeric_bounds") or {}).items()},
            categories=params.get("categories") or None,
            target=data.get("target"),
        )
        enc.columns_ = list(data["columns"])
        enc.feature_names_ = [n for spec in enc.columns_ for n in _spec_features(spec)]
        if enc.feature_names_ != list(data["feature_names"]):
            raise InputError("TableEncoder JSON is inconsistent (feature names)")
        enc.target_ = data.get("target")
        enc.classes_ = data.get("classes")
        enc.regression_ = bool(data.get("regression", False))
        enc.data_dependent_ = list(data.get("data_dependent", []))
        enc.dropped_ = list(data.get("dropped", []))
        return enc


# -- column specs ---------------------------------------------------------------------


def _label_text(value: Any) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _numeric_spec(name: str, lo: float, hi: float, source: str) -> dict[str, Any]:
    if hi <= lo:  # one distinct value: a unit-wide domain keeps the scaling finite
        hi = lo + 1.0
    return {"name": name, "kind": "numeric", "low": float(lo), "high": float(hi), "source": source}


def _categorical_spec(
    name: str, nodes: Sequence[str], ancestors: Mapping[str, list[str]], source: str
) -> dict[str, Any]:
    seen: list[str] = []
    for n in nodes:
        if n not in seen and n not in (ROOT, MISSING, OTHER):
            seen.append(n)
    return {
        "name": name,
        "kind": "categorical",
        "values": seen,
        "ancestors": {k: [a for a in v if a in seen] for k, v in ancestors.items() if k in seen},
        "source": source,
    }


def _spec_features(spec: Mapping[str, Any]) -> list[str]:
    name = spec["name"]
    if spec["kind"] == "numeric":
        return [f"{name}:mid", f"{name}:width", f"{name}:missing"]
    return [f"{name}={v}" for v in spec["values"]] + [f"{name}={MISSING}", f"{name}={OTHER}"]


def _numeric_hierarchy_range(paths: list[list[str]]) -> tuple[float, float] | None:
    """Bounds of a hierarchy whose leaves are all numbers (from every interval label)."""
    lows: list[float] = []
    highs: list[float] = []
    for path in paths:
        try:
            leaf = _parse_interval(path[0])
        except ValueError:
            return None
        if not isinstance(leaf, tuple):
            return None
        for label in path:
            try:
                iv = _parse_interval(label)
            except ValueError:
                continue
            if isinstance(iv, tuple):
                lows += [x for x in iv if math.isfinite(x)]
                highs += [x for x in iv if math.isfinite(x)]
    return (min(lows), max(highs)) if lows else None


def _all_intervals(uniques: np.ndarray) -> bool:
    concrete = 0
    for v in uniques:
        try:
            iv = _parse_interval(v)
        except ValueError:
            return False
        if isinstance(iv, tuple):
            concrete += 1
    return concrete > 0


def _data_range(uniques: np.ndarray) -> tuple[float, float]:
    lows: list[float] = []
    for v in uniques:
        iv = _parse_interval(v)
        if isinstance(iv, tuple):
            lows += [x for x in iv if math.isfinite(x)]
    if not lows:
        return 0.0, 1.0
    return min(lows), max(lows)


def _encode_column(spec: Mapping[str, Any], series: pd.Series) -> np.ndarray:
    codes, uniques = pd.factorize(series, sort=False, use_na_sentinel=True)
    if spec["kind"] == "numeric":
        table = _numeric_rows(spec, uniques)
        width = 3
    else:
        table = _categorical_rows(spec, uniques)
        width = len(spec["values"]) + 2
    # row for NaN (code -1) is the last one of the lookup table
    if spec["kind"] == "numeric":
        na_row = np.array([[0.0, 0.0, 1.0]])
    else:
        na_row = np.zeros((1, width))
        na_row[0, len(spec["values"])] = 1.0
    lookup = np.vstack([table.reshape(-1, width), na_row])
    return lookup[np.where(codes < 0, len(uniques), codes)]


def _numeric_rows(spec: Mapping[str, Any], uniques: Any) -> np.ndarray:
    lo, hi = float(spec["low"]), float(spec["high"])
    span = hi - lo
    rows = np.zeros((len(uniques), 3), dtype=np.float64)
    bad = 0
    for i, value in enumerate(uniques):
        try:
            iv = _parse_interval(value)
        except ValueError:
            bad += 1
            continue
        if iv is None:
            rows[i] = (0.0, 0.0, 1.0)
            continue
        a, b = iv if isinstance(iv, tuple) else (lo, hi)
        # clamp to the declared domain (open-ended ranges end at the bounds)
        a = min(max(float(a), lo), hi)
        b = min(max(float(b), lo), hi)
        rows[i] = (((a + b) / 2 - lo) / span, (b - a) / span, 0.0)
    if bad:
        raise InputError(f"column {spec['name']!r}: {bad} distinct cells are not numbers, ranges or '*'")
    return rows


def _categorical_rows(spec: Mapping[str, Any], uniques: Any) -> np.ndarray:
    values: list[str] = spec["values"]
    index = {v: i for i, v in enumerate(values)}
    ancestors: Mapping[str, list[str]] = spec.get("ancestors") or {}
    n = len(values)
    rows = np.zeros((len(uniques), n + 2), dtype=np.float64)

    def one(label: str) -> np.ndarray | None:
        if label not in index:
            return None
        vec = np.zeros(n + 2)
        for up in ancestors.get(label, [label]):
            vec[index[up]] = 1.0
        vec[index[label]] = 1.0
        return vec

    for i, value in enumerate(uniques):
        text = _cell_text(value)
        if text is None:
            rows[i, n] = 1.0
            continue
        if text == ROOT:
            continue  # fully generalized: says nothing, all zeros
        vec = one(text)
        if vec is None:
            members = _members(text)
            parts = [one(m) for m in members] if members else []
            if parts and all(p is not None for p in parts):
                vec = np.mean(np.stack([p for p in parts if p is not None]), axis=0)
        if vec is None:
            rows[i, n + 1] = 1.0
        else:
            rows[i] = vec
    return rows
