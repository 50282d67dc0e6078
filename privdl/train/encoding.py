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

**Which columns are features.** Identifiers of the policy (whatever their transform) and
its dropped columns never are. Columns the user does not name are screened, and the ones
that look like identifiers (e-mail addresses, phone numbers, IBANs, IP addresses,
identifier-like names, pseudonym or hash tokens, free text, or nearly one distinct value
per record) are left out with a warning naming them. Naming such a column as a feature
(``features=``, ``numeric_bounds=``, ``categories=``) raises :class:`InputError`.

**Where domains come from** (``domains=``). A domain is a numeric column's bounds, a
categorical column's vocabulary or the target's label set. Public sources come first:
``numeric_bounds=``, ``categories=``, the policy's hierarchies (ARX CSV files) and the
``bool`` dtype. For a column with no public domain:

* ``"dp"`` (default): the domain is estimated with differential privacy. Each column is
  one Gaussian-noise histogram over a public candidate set (sensitivity 1: a record adds
  at most 1 in total to one column's histogram), and the candidates whose noisy count
  passes a threshold are kept: powers of two for numeric bounds, 4,096 hash buckets of the
  values for vocabularies (the vocabulary holds bucket ids such as ``city=#1a3``, never
  the text), the integers -1024..1023 for integer class labels. All histograms of a fit
  share one noise multiplier ``sigma``, calibrated so that they alone spend
  ``domain_epsilon`` at ``domain_delta``; they are exactly the accountant segment
  ``(sigma, 1.0, m)`` in ``domain_history_``, which :class:`~privdl.PrivateTrainer`
  charges to its ledger and composes into its epsilon.
* ``"policy"``: refuse (:class:`InputError`) and name the columns that need a domain.
* ``"learned-unprotected"``: min/max, vocabularies and labels taken from the data without
  noise, listed in ``data_dependent_``; the privacy report says so in its headline.

Text labels have no public candidate set: give them with ``categories={target: [...]}``
(or ``domains="learned-unprotected"``).

numpy + pandas only: a scoring server loads a saved encoder without torch.

Example:
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"age": ["30-39", "45", "*"], "sex": ["F", "M", None]})
    >>> enc = TableEncoder(numeric_bounds={"age": (0, 100)}, categories={"sex": ["F", "M"]})
    >>> enc.fit_transform(frame).shape
    (3, 7)
    >>> enc.data_dependent_, enc.domain_source_
    ([], 'policy')
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from privdl.errors import InputError, NotFittedError, PolicyError, UsageError

__all__ = ["DOMAIN_MODES", "TableEncoder"]

FORMAT_VERSION = 2
_READS = (1, 2)
MISSING = "(missing)"
OTHER = "(other)"
ROOT = "*"
_MISSING_TEXT = {"", "?", "nan", "none", "null", MISSING}

#: how domains without a public source are obtained
DOMAIN_MODES = ("dp", "policy", "learned-unprotected")
#: epsilon of a stand-alone DP domain estimate (PrivateTrainer passes its own share)
DEFAULT_DOMAIN_EPSILON = 0.5
#: PrivateTrainer's share of its run epsilon for a DP domain estimate: composed with
#: DP-SGD under PRV, a fifth of epsilon 2 raises the training noise by about 2 %
DEFAULT_DOMAIN_SHARE = 0.2
#: hash buckets of a DP vocabulary (public candidate set; values never stored)
HASH_BUCKETS = 4096
#: integer class labels a DP label set is chosen from
LABEL_RANGE = (-1024, 1023)
#: powers of two 2**k, k in this range, bound a DP numeric column (plus 0 and negatives)
GRID_EXP = (-10, 62)
#: expected number of empty candidates that pass the threshold, per histogram
FALSE_KEEP = 1e-3
#: a released set with more members than this adds nothing to a DP vocabulary
MAX_MEMBERS = 64

# -- identifier screening (columns the user did not name) ---------------------------------
#: a text column with at least this many distinct values, as many as this share of its
#: records, holds (nearly) one value per record
NEAR_UNIQUE_MIN = 20
NEAR_UNIQUE_SHARE = 0.5
_TOKEN = re.compile(r"^(?=.*\d)[A-Za-z0-9+/=_-]{20,}$")  # pseudonyms, hashes, ciphertexts
_ID_NAME = re.compile(r"(^|_)(id|uuid|guid|key|token|pseudonym)$")

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


def _bucket(text: str, buckets: int) -> str:
    """The public hash bucket of a value, as the token stored instead of the value."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return _bucket_label(int.from_bytes(digest, "little") % buckets, buckets)


def _bucket_label(i: int, buckets: int) -> str:
    width = max(1, ((buckets - 1).bit_length() + 3) // 4)
    return f"#{i:0{width}x}"


Charge = Callable[[list[tuple[float, float, int]], float, float], Any]


class TableEncoder:
    """Turn a released table into float32 features and its target into labels.

    Args:
        policy: the anonymization :class:`~privdl.Policy`; its hierarchies give domains,
            its identifier and dropped columns are never features.
        features: the feature columns, in order; by default every column except the
            target, identifiers and identifier-like columns (left out with a warning).
            Naming an identifier or identifier-like column raises :class:`InputError`.
        numeric_bounds: column -> ``(low, high)``: data-independent bounds; the column
            is numeric.
        categories: column -> list of values: the released domain of a categorical
            column (for the target column: its class labels, in order).
        target: the target column (also accepted by :meth:`fit`).
        domains: where domains with no public source come from: ``"dp"`` (estimated
            with differential privacy), ``"policy"`` (refuse: public sources only) or
            ``"learned-unprotected"`` (from the data, without DP; reported as such).
        domain_epsilon: epsilon of the DP domain estimate on its own (default 0.5;
            :class:`~privdl.PrivateTrainer` passes a share of its run's epsilon).
        domain_delta: its delta (default ``1 / (10 n)``; the trainer passes its own).

    Attributes (after fit):
        columns_: per feature column, how it is encoded (JSON-compatible dicts).
        feature_names_: one name per output column (``age:mid``, ``sex=F``...).
        classes_: target class labels (``None`` for a numeric regression target).
        domain_source_: ``"policy"`` (every domain public), ``"dp"`` (some estimated
            with DP) or ``"learned-unprotected"`` (some learned without DP).
        domain_history_: the DP estimate as accountant segments ``[(sigma, 1.0, m)]``
            (empty when nothing was estimated with DP).
        domain_epsilon_, domain_delta_: what that estimate was calibrated to on its own.
        domain_run_id_: the ledger run the estimate was charged to (by PrivateTrainer).
        dp_domains_: which domains were estimated with DP (for the report).
        data_dependent_: what was taken from the data without DP (for the privacy
            report: preprocessing not covered by DP).
        excluded_: column -> why it is not a feature (identifier, identifier-like).
        screened_: the columns nobody named (not in ``features=``, ``numeric_bounds=``,
            ``categories=`` or a policy hierarchy, and not quasi-identifiers) that were
            screened on the training table. Whether such a column is a feature (and
            whether a text column is read as numbers) depends on the data without DP;
            only names and kinds are kept.
        dropped_: columns present in the fitted frame but not used as features.
    """

    def __init__(
        self,
        policy: Any = None,
        *,
        features: Sequence[str] | None = None,
        numeric_bounds: Mapping[str, tuple[float, float]] | None = None,
        categories: Mapping[str, Sequence[Any]] | None = None,
        target: str | None = None,
        domains: str = "dp",
        domain_epsilon: float | None = None,
        domain_delta: float | None = None,
    ) -> None:
        self.policy = policy
        self.features = features
        self.numeric_bounds = numeric_bounds
        self.categories = categories
        self.target = target
        self.domains = domains
        self.domain_epsilon = domain_epsilon
        self.domain_delta = domain_delta

    def __sklearn_clone__(self) -> TableEncoder:
        """``sklearn.base.clone`` (of a trainer holding this encoder): an unfitted encoder
        with copies of the same constructor parameters (``get_params`` here is the audit
        record, not scikit-learn's)."""
        import copy

        from privdl.estimator import param_names

        return type(self)(**{name: copy.deepcopy(getattr(self, name)) for name in param_names(type(self))})

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (what goes into an audit record)."""
        policy = self.policy
        return {
            "policy": policy.get_params() if hasattr(policy, "get_params") else None,
            "features": None if self.features is None else [str(c) for c in self.features],
            "numeric_bounds": {k: list(v) for k, v in (self.numeric_bounds or {}).items()},
            "categories": {k: [str(x) for x in v] for k, v in (self.categories or {}).items()},
            "target": self.target,
            "domains": self.domains,
            "domain_epsilon": self.domain_epsilon,
            "domain_delta": self.domain_delta,
        }

    def __repr__(self) -> str:
        fitted = f", {len(self.feature_names_)} features" if hasattr(self, "feature_names_") else ""
        return f"TableEncoder(target={self.target!r}, domains={self.domains!r}{fitted})"

    # -- fitting ------------------------------------------------------------------

    def fit(
        self,
        frame: pd.DataFrame,
        target: str | None = None,
        *,
        domain_epsilon: float | None = None,
        domain_delta: float | None = None,
        accountant: str = "prv",
        charge: Charge | None = None,
    ) -> TableEncoder:
        """Choose the feature columns and each one's encoding and domain.

        Args:
            frame: the (released) training table.
            target: the target column; overrides the constructor's.
            domain_epsilon, domain_delta: override the constructor's for this fit.
            accountant: the accountant that calibrates the DP estimate (``"prv"``/``"rdp"``).
            charge: called as ``charge(history, epsilon, delta)`` after the plan and
                before any noise is drawn (PrivateTrainer charges its ledger there; an
                exception stops the fit before anything is estimated).

        Raises:
            InputError: a named column is missing or looks like an identifier, a column
                needs a domain that ``domains="policy"`` cannot give, or a column mixes
                numbers and text.
            PolicyError: a hierarchy file cannot be read, or bounds are malformed.
            UsageError: unknown ``domains``.
        """
        if not isinstance(frame, pd.DataFrame):
            raise UsageError("TableEncoder.fit expects a pandas DataFrame")
        if not all(isinstance(c, str) for c in frame.columns):
            frame = frame.rename(columns=str)  # specs name columns by text
        mode = self.domains
        if mode not in DOMAIN_MODES:
            raise UsageError(f"domains must be one of {', '.join(map(repr, DOMAIN_MODES))}")
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

        self.domain_run_id_: str | None = None  # set by a ledger charge (PrivateTrainer)
        policy = self.policy
        hierarchies: Mapping[str, str] = dict(getattr(policy, "hierarchies", {}) or {})
        base_dir = getattr(policy, "base_dir", None)
        features, excluded, screened = self._select(frame, target, bounds, cats, hierarchies)

        # 1. public domains; the rest is planned, then resolved by `mode`
        learned: list[str] = []
        slots: list[dict[str, Any] | None] = []
        need: list[tuple[str, str]] = []  # (column, "numeric" | "categorical" | "labels")
        for name in features:
            spec = _public_spec(name, frame[name], bounds, cats, hierarchies, base_dir)
            slots.append(spec)
            if spec is None:
                need.append((name, "numeric" if _looks_numeric(frame[name]) else "categorical"))
        classes: list[str] | None = None
        regression = False
        target_needs = False
        if target is not None:
            classes, regression, target_needs = _public_target(frame[target], target, cats)
            if target_needs:
                if mode != "learned-unprotected" and not _integer_labels(frame[target]):
                    raise InputError(
                        f"target column {target!r} has text labels and no public label set: "
                        f"give categories={{{target!r}: [...]}} (the labels, in order)"
                    )
                need.append((target, "labels"))

        dp_domains: list[str] = []
        history: list[tuple[float, float, int]] = []
        eps_used: float | None = None
        delta_used: float | None = None
        resolved: dict[str, Any] = {}
        if need and mode == "policy":
            names = ", ".join(repr(c) for c, _ in need)
            raise InputError(
                f"no public domain for column(s) {names}: give numeric_bounds= / categories= "
                'or a hierarchy in the policy, or pass domains="dp" (estimated with '
                'differential privacy) or domains="learned-unprotected"'
            )
        if need and mode == "learned-unprotected":
            for name, kind in need:
                resolved[name] = _learn(name, frame[name], kind, learned)
            warnings.warn(
                "TableEncoder: domains of "
                + ", ".join(repr(c) for c, _ in need)
                + " were learned from the training data without differential privacy "
                '(domains="learned-unprotected"); the privacy report says so',
                UserWarning,
                stacklevel=2,
            )
        if need and mode == "dp":
            n = len(frame)
            eps = domain_epsilon if domain_epsilon is not None else self.domain_epsilon
            from privdl.budget.accounting import check_delta, check_epsilon, noise_multiplier_for

            eps = check_epsilon(DEFAULT_DOMAIN_EPSILON if eps is None else eps, name="domain_epsilon")
            delta = domain_delta if domain_delta is not None else self.domain_delta
            delta = check_delta(1.0 / (10 * max(n, 1)) if delta is None else delta, name="domain_delta")

            sigma = noise_multiplier_for(
                epsilon=eps, delta=delta, sample_rate=1.0, steps=len(need), accountant=accountant
            )
            history = [(float(sigma), 1.0, len(need))]
            if charge is not None:
                charge(list(history), eps, delta)  # before any noise is drawn
            noise = _Noise()
            for name, kind in need:
                resolved[name] = _estimate(name, frame[name], kind, sigma, noise, dp_domains)
            eps_used, delta_used = eps, delta
            warnings.warn(
                "TableEncoder: no public domain for "
                + ", ".join(repr(c) for c, _ in need)
                + f": estimated with differential privacy ({len(need)} Gaussian histograms, "
                f"noise multiplier {sigma:.3g}; epsilon {eps:.3g} at delta {delta:.2g} on their "
                "own, composed into the run's epsilon by PrivateTrainer). Give numeric_bounds= / "
                "categories= or a policy hierarchy to spend nothing on them",
                UserWarning,
                stacklevel=2,
            )

        specs = [
            spec if spec is not None else resolved[name] for name, spec in zip(features, slots, strict=True)
        ]
        if target_needs:
            classes = resolved[target]
        self.columns_ = specs
        self.feature_names_ = [n for spec in specs for n in _spec_features(spec)]
        self.target_ = target
        self.classes_ = classes
        self.regression_ = regression
        self.data_dependent_ = learned
        self.dp_domains_ = dp_domains
        self.domain_history_ = history
        self.domain_epsilon_ = eps_used
        self.domain_delta_ = delta_used
        unprotected = need and mode == "learned-unprotected"
        self.domain_source_ = "learned-unprotected" if unprotected else "dp" if history else "policy"
        self.excluded_ = excluded
        self.screened_ = screened
        self.dropped_ = [str(c) for c in frame.columns if c not in features and c != target]
        return self

    def _select(
        self,
        frame: pd.DataFrame,
        target: str | None,
        bounds: Mapping[str, Any],
        cats: Mapping[str, Any],
        hierarchies: Mapping[str, str],
    ) -> tuple[list[str], dict[str, str], list[str]]:
        """Feature columns, excluded column -> reason, and the columns screened on the data."""
        policy = self.policy
        banned: dict[str, str] = {}
        for rule in getattr(policy, "identifiers", ()) or ():
            banned[str(getattr(rule, "column", rule))] = "an identifier in the policy"
        for name in getattr(policy, "drop", ()) or ():
            banned[str(name)] = "dropped by the policy"
        qis = set(getattr(policy, "quasi_identifiers", ()) or ())

        if self.features is not None:
            if isinstance(self.features, str):
                raise UsageError("features= takes a list of column names")
            chosen = [str(c) for c in self.features]
            missing = [c for c in chosen if c not in frame.columns]
            if missing:
                raise InputError(f"feature column(s) not in the table: {', '.join(map(repr, missing))}")
            if target is not None and target in chosen:
                raise InputError(f"column {target!r} is the target: it cannot also be a feature")
            explicit = list(dict.fromkeys(chosen))
            implicit: list[str] = []
        else:
            named = set(bounds) | set(cats) | set(hierarchies)
            columns = [str(c) for c in frame.columns if c != target]
            explicit = [c for c in columns if c in named]
            implicit = [c for c in columns if c not in named and c not in banned]

        # a named column that is an identifier stops the fit; the check sees the data
        # but its outcome is pass or refuse, never a silent change of the features
        named_bad = {c: banned[c] for c in explicit if c in banned}
        named_bad.update(_identifier_like(frame, [c for c in explicit if c not in named_bad]))
        if named_bad:
            first = next(iter(named_bad))
            raise InputError(
                f"column {first!r} cannot be a feature: {named_bad[first]} "
                f"({len(named_bad)} such column(s) named: {', '.join(map(repr, named_bad))})"
            )
        screen = [c for c in implicit if c not in qis]  # QIs are generalized, never unique
        found = _identifier_like(frame, screen)
        excluded = {c: banned[c] for c in frame.columns if c in banned and c != target}
        excluded.update(found)
        if self.features is None:
            shown = {c: r for c, r in excluded.items() if c in frame.columns}
            if shown:
                warnings.warn(
                    "TableEncoder: not used as features (identifiers or identifier-like): "
                    + "; ".join(f"{c!r} ({r})" for c, r in shown.items())
                    + ". Name the feature columns with features= to choose them",
                    UserWarning,
                    stacklevel=3,
                )
        features = (
            explicit
            if self.features is not None
            else [c for c in (str(x) for x in frame.columns) if c != target and c not in excluded]
        )
        return features, excluded, screen

    def _check_fitted(self) -> None:
        if not hasattr(self, "columns_"):
            raise NotFittedError("this TableEncoder is not fitted: call fit() first")

    # -- transforming -------------------------------------------------------------

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

    def fit_transform(self, frame: pd.DataFrame, target: str | None = None, **kwargs: Any) -> np.ndarray:
        """:meth:`fit`, then :meth:`transform` the same table."""
        return self.fit(frame, target=target, **kwargs).transform(frame)

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
        """The fitted encoder as JSON, saved with the model.

        It holds column names, public domains, DP-estimated domains (numeric bounds on
        a power-of-two grid, hash bucket ids) and, only for ``domains="learned-unprotected"``,
        the domains listed in ``data_dependent_``; never a value of an identifier or
        identifier-like column (those are never features).
        """
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
                "dp_domains": self.dp_domains_,
                "domain_source": self.domain_source_,
                "domain_history": [list(seg) for seg in self.domain_history_],
                "domain_epsilon": self.domain_epsilon_,
                "domain_delta": self.domain_delta_,
                "domain_run_id": getattr(self, "domain_run_id_", None),
                "excluded": self.excluded_,
                "screened": self.screened_,
                "dropped": self.dropped_,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> TableEncoder:
        """Load a fitted encoder from :meth:`to_json` output (this version or version 1).

        Raises:
            InputError: not a privdl encoder, or another format version.
        """
        try:
            data = dict(json.loads(text) if isinstance(text, str) else text)
        except (TypeError, ValueError) as exc:
            raise InputError("not a privdl TableEncoder (invalid JSON)") from exc
        if data.get("format") != "privdl-table-encoder":
            raise InputError("not a privdl TableEncoder")
        if data.get("version") not in _READS:
            raise InputError(
                f"TableEncoder format version {data.get('version')}; this privdl reads {FORMAT_VERSION}"
            )
        params = data.get("params") or {}
        domains = params.get("domains") or "dp"
        enc = cls(
            features=params.get("features"),
            numeric_bounds={k: tuple(v) for k, v in (params.get("numeric_bounds") or {}).items()},
            categories=params.get("categories") or None,
            target=data.get("target"),
            domains=domains if domains in DOMAIN_MODES else "dp",
            domain_epsilon=params.get("domain_epsilon"),
            domain_delta=params.get("domain_delta"),
        )
        try:
            enc.columns_ = list(data["columns"])
            enc.feature_names_ = [n for spec in enc.columns_ for n in _spec_features(spec)]
            names = list(data["feature_names"])
        except (KeyError, TypeError) as exc:
            raise InputError("TableEncoder JSON is incomplete (columns)") from exc
        if enc.feature_names_ != names:
            raise InputError("TableEncoder JSON is inconsistent (feature names)")
        enc.target_ = data.get("target")
        enc.classes_ = data.get("classes")
        enc.regression_ = bool(data.get("regression", False))
        enc.data_dependent_ = list(data.get("data_dependent", []))
        enc.dp_domains_ = list(data.get("dp_domains", []))
        enc.domain_history_ = [
            (float(s), float(q), int(n)) for s, q, n in data.get("domain_history", []) or []
        ]
        enc.domain_epsilon_ = data.get("domain_epsilon")
        enc.domain_delta_ = data.get("domain_delta")
        enc.domain_run_id_ = data.get("domain_run_id")
        # version 1 learned its domains from the data without noise when it listed any
        legacy = "learned-unprotected" if enc.data_dependent_ else "policy"
        enc.domain_source_ = data.get("domain_source") or legacy
        enc.excluded_ = dict(data.get("excluded", {}) or {})
        enc.screened_ = list(data.get("screened", []) or [])
        enc.dropped_ = list(data.get("dropped", []))
        return enc


# -- screening ------------------------------------------------------------------------


def _identifier_like(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, str]:
    """Column -> why it looks like an identifier (kinds and counts, never values)."""
    if not columns:
        return {}
    from privdl.anonymize.detect import looks_like_identifiers

    found = dict(looks_like_identifiers(frame, list(columns)))
    for name in columns:
        if name in found:
            continue
        series = frame[name]
        present = series.dropna()
        if pd.api.types.is_bool_dtype(series.dtype) or not len(present):
            continue
        distinct = int(present.nunique())
        near_unique = distinct >= NEAR_UNIQUE_MIN and distinct >= NEAR_UNIQUE_SHARE * len(present)
        if pd.api.types.is_numeric_dtype(series.dtype):
            normalized = re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")
            if near_unique and _ID_NAME.search(normalized):
                found[name] = "record identifiers (an id name, nearly one value per record)"
            continue
        texts = present.astype(str).str.strip()
        sample = texts.sample(500, random_state=0) if len(texts) > 500 else texts
        values = [v for v in sample.tolist() if v and not _is_missing_text(v)]
        if values and sum(1 for v in values if _TOKEN.match(v)) >= 0.5 * len(values):
            found[name] = "pseudonym, hash or ciphertext tokens"
        elif _free_text([v for v in values if _members(v) is None]):
            found[name] = "free text"
        elif near_unique:
            found[name] = f"nearly one distinct value per record ({distinct} distinct)"
    return found


def _free_text(values: list[str]) -> bool:
    if len(values) < 5:
        return False
    words = sum(sum(1 for w in v.split() if any(c.isalpha() for c in w)) for v in values) / len(values)
    chars = sum(len(v) for v in values) / len(values)
    return words >= 3.0 or chars >= 40.0


# -- domains --------------------------------------------------------------------------


def _looks_numeric(series: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(series.dtype):
        return True
    return _all_intervals(pd.unique(series.dropna()))


def _public_spec(
    name: str,
    series: pd.Series,
    bounds: Mapping[str, tuple[float, float]],
    cats: Mapping[str, list[str]],
    hierarchies: Mapping[str, str],
    base_dir: Path | None,
) -> dict[str, Any] | None:
    """The column's spec from a public source, or None when it has none."""
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
    if pd.api.types.is_bool_dtype(series.dtype):
        return _numeric_spec(name, 0.0, 1.0, "dtype")
    return None


def _public_target(
    series: pd.Series, target: str, cats: Mapping[str, list[str]]
) -> tuple[list[str] | None, bool, bool]:
    """``(classes, regression, needs_a_label_set)`` from public sources."""
    if series.isna().any():
        raise InputError(f"target column {target!r} has {int(series.isna().sum())} missing values")
    if target in cats:
        return cats[target], False, False
    if pd.api.types.is_bool_dtype(series.dtype):
        return ["False", "True"], False, False
    if pd.api.types.is_float_dtype(series.dtype) and not np.all(
        np.equal(np.mod(series.to_numpy(dtype=float), 1), 0)
    ):
        return None, True, False
    return None, False, True


def _integer_labels(series: pd.Series) -> bool:
    return pd.api.types.is_integer_dtype(series.dtype) or pd.api.types.is_float_dtype(series.dtype)


def _learn(name: str, series: pd.Series, kind: str, learned: list[str]) -> Any:
    """A domain taken from the data without noise (``domains="learned-unprotected"``)."""
    uniques = pd.unique(series.dropna())
    if kind == "labels":
        values = pd.unique(series)
        if pd.api.types.is_numeric_dtype(series.dtype):
            classes = [_label_text(v) for v in sorted(values.tolist())]
        else:
            classes = sorted(_label_text(v) for v in values)
        learned.append(f"{name}: class labels ({len(classes)}) taken from the training data")
        return classes
    if kind == "numeric":
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


class _Noise:
    """Gaussian noise from ChaCha20 keyed by the OS (a sum of four draws, halved, as
    Opacus' secure mode does against floating-point attacks)."""

    def __init__(self) -> None:
        from privdl.train.data import ChaChaRandom

        self._rng = ChaChaRandom()

    def normal(self, count: int) -> np.ndarray:
        return sum((self._rng.normal(count) for _ in range(4)), np.zeros(count)) / 2.0


def _threshold(sigma: float, candidates: int) -> float:
    """Noisy-count threshold: an empty candidate passes with probability FALSE_KEEP / candidates."""
    return sigma * NormalDist().inv_cdf(1.0 - FALSE_KEEP / candidates)


def _grid_edges() -> np.ndarray:
    """Public bin edges: -2**62 .. -2**-10, 0, 2**-10 .. 2**62 (magnitudes by powers of two)."""
    pos = [2.0**k for k in range(GRID_EXP[0], GRID_EXP[1] + 1)]
    return np.array([-x for x in reversed(pos)] + [0.0] + pos)


def _estimate(name: str, series: pd.Series, kind: str, sigma: float, noise: _Noise, notes: list[str]) -> Any:
    """One Gaussian histogram (sensitivity 1) over a public candidate set, thresholded."""
    if kind == "numeric":
        edges = _grid_edges()
        # bins: (-inf, e0), [e0, e1), ... ; a value lands in one bin; the zero bin is [0, 2**-10)
        counts = np.zeros(len(edges) + 1)
        points: list[float] = []
        for value, n in series.value_counts(dropna=True).items():
            try:
                iv = _parse_interval(value)
            except ValueError:
                raise InputError(f"column {name!r} mixes numbers and text") from None
            if isinstance(iv, tuple):
                ends = [x for x in iv if math.isfinite(x)]
                if ends:
                    points.append(sum(ends) / len(ends))
                    counts[int(np.searchsorted(edges, points[-1], side="right"))] += float(n)
        noisy = counts + sigma * noise.normal(len(counts))
        kept = np.flatnonzero(noisy > _threshold(sigma, len(counts)))
        if len(kept):
            lo, hi = _tidy_bounds(edges, int(kept[0]), int(kept[-1]))
        else:
            lo, hi = 0.0, 1.0
        notes.append(
            f"{name}: numeric bounds (DP, power-of-two grid: {len(kept)} of {len(counts)} bins kept)"
        )
        return _numeric_spec(name, lo, hi, "dp")
    if kind == "labels":
        lo_label, hi_label = LABEL_RANGE
        counts = np.zeros(hi_label - lo_label + 1)
        for value, n in series.value_counts(dropna=True).items():
            x = float(value)
            if x.is_integer() and lo_label <= x <= hi_label:
                counts[int(x) - lo_label] += float(n)
        noisy = counts + sigma * noise.normal(len(counts))
        kept = np.flatnonzero(noisy > _threshold(sigma, len(counts)))
        notes.append(f"{name}: class labels (DP over the integers {lo_label}..{hi_label}: {len(kept)} kept)")
        return [str(int(i) + lo_label) for i in kept]
    counts_by: dict[str, float] = {}
    for value, n in series.value_counts(dropna=True).items():
        text = _cell_text(value)
        if text is None or text == ROOT:
            continue
        members = _members(text) or [text]
        if len(members) > MAX_MEMBERS:
            continue
        for m in members:  # a record adds 1 in total (1/m to each member): L2 <= 1
            token = _bucket(m, HASH_BUCKETS)
            counts_by[token] = counts_by.get(token, 0.0) + float(n) / len(members)
    tokens = [_bucket_label(i, HASH_BUCKETS) for i in range(HASH_BUCKETS)]
    counts = np.array([counts_by.get(t, 0.0) for t in tokens])
    noisy = counts + sigma * noise.normal(HASH_BUCKETS)
    kept = [tokens[i] for i in np.flatnonzero(noisy > _threshold(sigma, HASH_BUCKETS))]
    notes.append(f"{name}: category vocabulary (DP over {HASH_BUCKETS} hash buckets: {len(kept)} kept)")
    spec = _categorical_spec(name, kept, {}, "dp")
    spec["hashed"] = {"hash": "blake2b-64", "buckets": HASH_BUCKETS}
    return spec


def _tidy_bounds(edges: np.ndarray, lo_bin: int, hi_bin: int) -> tuple[float, float]:
    """Bounds of the kept bins ``lo_bin..hi_bin`` (bin i is [edges[i-1], edges[i]))."""
    lo = float(edges[lo_bin - 1]) if lo_bin >= 1 else float(edges[0])
    hi = float(edges[hi_bin]) if hi_bin < len(edges) else float(edges[-1])
    return lo, hi


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
    hashed = spec.get("hashed")
    n = len(values)
    rows = np.zeros((len(uniques), n + 2), dtype=np.float64)

    def one(label: str) -> np.ndarray | None:
        if hashed:  # a DP vocabulary holds bucket ids, not values
            label = _bucket(label, int(hashed["buckets"]))
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
