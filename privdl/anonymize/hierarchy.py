"""Generalization hierarchies and the integer encoding every algorithm works on.

A quasi-identifier is encoded once, as one integer code per record, in one of two
kinds:

* ``numeric``: the code is the rank of the record's value among the column's sorted
  distinct values; a partition releases the range ``lo-hi`` of its values. Used by
  Mondrian for numeric columns without a hierarchy or with an ``interval`` spec.
* ``taxonomy``: the code is a *leaf* of a tree (ARX CSV, prefix, date, intervals or
  the flat ``value -> *`` tree). Leaves are numbered in depth-first order, so every
  node of the tree covers one contiguous run of leaf codes: the common ancestor of a
  set of leaves is the lowest common ancestor of its smallest and largest code, which
  makes it a vectorized ``min``/``max`` per partition.

Missing values (NaN, ``None``, empty string, ``?``) are one category of their own,
released as ``(missing)``; in a taxonomy it hangs directly under the root.

Hierarchy specs (``Policy.hierarchies`` values):

* ``"prefix"``: strings such as ZIP codes, ``12345 -> 1234* -> 123** -> ... -> *``.
* ``"interval"``, ``"interval:auto"``: numeric; Mondrian uses the partition's range,
  global recoding uses nested quantile bins (32, 16, 8, 4, 2 bins, then ``*``).
* ``"interval:W"``: numeric; bins of width W, 2W, 4W, ... then ``*``.
* ``"date"``: day -> month -> quarter -> year -> ``*``.
* a path to an ARX hierarchy CSV (``value;level1;...;*``, ``;``-separated); relative
  paths are resolved against ``Policy.base_dir``.

Columns without a spec: numeric dtypes behave as ``"interval:auto"``, datetime dtypes
as ``"date"``, everything else as a flat taxonomy (each value directly under ``*``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from privdl.errors import PolicyError

__all__ = [
    "MISSING_LABEL",
    "ROOT_LABEL",
    "EncodedQI",
    "Taxonomy",
    "encode_qi",
    "encode_qis",
    "format_number",
    "is_missing",
    "load_arx_csv",
]

MISSING_LABEL = "(missing)"
ROOT_LABEL = "*"
_MISSING_TOKENS = ("", "?")
_AUTO_LEVELS = 5  # finest auto-interval level has 2**5 = 32 quantile bins


def format_number(value: float) -> str:
    """Shortest text that reads back as the same number (``39.0`` -> ``"39"``)."""
    x = float(value)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def is_missing(series: pd.Series) -> np.ndarray:
    """Boolean mask of missing cells: NaN/None/NaT, empty or ``?`` strings."""
    mask = series.isna().to_numpy()
    if series.dtype == object or isinstance(series.dtype, pd.StringDtype | pd.CategoricalDtype):
        text = series.astype("string").str.strip()
        mask = mask | text.isin(_MISSING_TOKENS).fillna(False).to_numpy(dtype=bool)
    return mask


@dataclass(frozen=True, eq=False)
class Taxonomy:
    """A generalization tree over a column's leaf values, leaves in DFS order.

    Attributes:
        leaves: leaf labels, index = leaf code.
        node_of: ``(height + 1, n_leaves)`` int array; ``node_of[level, leaf]`` is the
            node covering ``leaf`` at ``level`` (level 0 = the leaf itself, the last
            level is the root). Node ids at one level increase with leaf codes.
        labels: per level, the label of each node.
        leaf_count: per level, how many leaves each node covers.
    """

    leaves: tuple[str, ...]
    node_of: np.ndarray
    labels: tuple[tuple[str, ...], ...]
    leaf_count: tuple[np.ndarray, ...]

    @property
    def height(self) -> int:
        """Number of generalization steps from a leaf to the root."""
        return int(self.node_of.shape[0]) - 1

    @property
    def n_leaves(self) -> int:
        """Number of leaves."""
        return len(self.leaves)

    def lca_level(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Level of the lowest common ancestor of leaf codes ``lo`` and ``hi`` (vectorized)."""
        level = np.full(np.shape(lo), self.height, dtype=np.int64)
        for lv in range(self.height - 1, -1, -1):
            same = self.node_of[lv, lo] == self.node_of[lv, hi]
            level[same] = lv
        return level

    def loss(self, level: np.ndarray, leaf: np.ndarray) -> np.ndarray:
        """NCP of the node at ``level`` above ``leaf``: (leaves under it - 1) / (all - 1)."""
        if self.n_leaves <= 1:
            return np.zeros(np.shape(level), dtype=np.float64)
        counts = np.stack(
            [lc[self.node_of[lv]] for lv, lc in enumerate(self.leaf_count)]
        )  # (levels, n_leaves)
        return (counts[level, leaf] - 1) / (self.n_leaves - 1)

    def label_loss(self) -> dict[str, float]:
        """Released label -> NCP; a label used at several levels maps to the largest loss."""
        out: dict[str, float] = {}
        denom = max(self.n_leaves - 1, 1)
        for labels, counts in zip(self.labels, self.leaf_count, strict=True):
            for label, count in zip(labels, counts.tolist(), strict=True):
                loss = (count - 1) / denom
                if loss >= out.get(label, -1.0):
                    out[label] = loss
        return out

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[str]]) -> Taxonomy:
        """Build from one path per leaf: ``[leaf, level1, ..., root]``, all the same length.

        Node identity is the path from the node up to the root, so a label may repeat
        under different parents. Siblings keep the order in which they first appear.
        """
        if not paths:
            raise PolicyError("a hierarchy has no values")
        height = len(paths[0]) - 1
        # first-appearance rank of every node (identified by its suffix path)
        rank: dict[tuple[str, ...], int] = {}
        for path in paths:
            for lv in range(height, -1, -1):
                rank.setdefault(tuple(path[lv:]), len(rank))
        keys = [tuple(rank[tuple(path[lv:])] for lv in range(height, -1, -1)) for path in paths]
        order = sorted(range(len(paths)), key=keys.__getitem__)
        ordered = [paths[i] for i in order]
        node_of = np.zeros((height + 1, len(ordered)), dtype=np.int64)
        labels: list[tuple[str, ...]] = []
        counts: list[np.ndarray] = []
        for lv in range(height + 1):
            ids: dict[tuple[str, ...], int] = {}
            level_labels: list[str] = []
            for j, path in enumerate(ordered):
                ident = tuple(path[lv:])
                if ident not in ids:
                    ids[ident] = len(ids)
                    level_labels.append(path[lv])
                node_of[lv, j] = ids[ident]
            labels.append(tuple(level_labels))
            counts.append(np.bincount(node_of[lv], minlength=len(ids)).astype(np.int64))
        if len(labels[-1]) != 1:
            # no single root in the file: add one
            node_of = np.vstack([node_of, np.zeros((1, len(ordered)), dtype=np.int64)])
            labels.append((ROOT_LABEL,))
            counts.append(np.array([len(ordered)], dtype=np.int64))
        return cls(tuple(p[0] for p in ordered), node_of, tuple(labels), tuple(counts))


@dataclass(eq=False)
class EncodedQI:
    """One quasi-identifier as integer codes plus what is needed to release them.

    Attributes:
        column: column name.
        kind: ``"numeric"`` (ranges) or ``"taxonomy"`` (common ancestors).
        codes: one code per record (int64).
        values: numeric kind: sorted distinct non-missing values; code ``len(values)``
            is the missing category.
        has_missing: whether any record is missing.
        taxonomy: taxonomy kind: the tree (leaf code = record code).
        spec: the hierarchy spec used, for the report.
    """

    column: str
    kind: Literal["numeric", "taxonomy"]
    codes: np.ndarray
    values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    has_missing: bool = False
    taxonomy: Taxonomy | None = None
    spec: str = ""

    @property
    def n_codes(self) -> int:
        """Number of distinct codes (including the missing code)."""
        if self.taxonomy is not None:
            return self.taxonomy.n_leaves
        return len(self.values) + (1 if self.has_missing else 0)

    @property
    def domain_width(self) -> float:
        """Numeric kind: max - min of the non-missing values (0 if fewer than two)."""
        if len(self.values) < 2:
            return 0.0
        return float(self.values[-1] - self.values[0])

    def tree(self) -> Taxonomy:
        """The taxonomy (raises if this is a numeric encoding)."""
        if self.taxonomy is None:
            raise PolicyError(f"column {self.column!r} has no hierarchy")
        return self.taxonomy

    def range_loss(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """NCP of partitions whose codes span ``lo..hi`` (vectorized)."""
        lo = np.asarray(lo)
        hi = np.asarray(hi)
        if self.kind == "taxonomy":
            tax = self.tree()
            return tax.loss(tax.lca_level(lo, hi), lo)
        n_val = len(self.values)
        width = self.domain_width
        out = np.zeros(lo.shape, dtype=np.float64)
        if width > 0:
            lo_v = self.values[np.minimum(lo, n_val - 1)]
            hi_v = self.values[np.minimum(hi, n_val - 1)]
            out = (hi_v - lo_v) / width
        if self.has_missing:
            # a range mixing missing and present values is released as '*'
            mixed = (hi == n_val) & (lo < n_val)
            out = np.where(mixed, 1.0, np.where(lo == n_val, 0.0, out))
        return out

    def range_labels(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Released label of partitions spanning codes ``lo..hi`` (object array)."""
        lo = np.asarray(lo, dtype=np.int64)
        hi = np.asarray(hi, dtype=np.int64)
        pair = lo * (self.n_codes + 1) + hi
        uniq, inverse = np.unique(pair, return_inverse=True)
        u_lo, u_hi = np.divmod(uniq, self.n_codes + 1)
        labels = np.empty(len(uniq), dtype=object)
        if self.kind == "taxonomy":
            tax = self.tree()
            levels = tax.lca_level(u_lo, u_hi)
            for i, (lv, leaf) in enumerate(zip(levels.tolist(), u_lo.tolist(), strict=True)):
                labels[i] = tax.labels[lv][tax.node_of[lv, leaf]]
        else:
            n_val = len(self.values)
            for i, (a, b) in enumerate(zip(u_lo.tolist(), u_hi.tolist(), strict=True)):
                if a == n_val:
                    labels[i] = MISSING_LABEL
                elif b == n_val:
                    labels[i] = ROOT_LABEL
                elif a == b:
                    labels[i] = format_number(self.values[a])
                else:
                    labels[i] = f"{format_number(self.values[a])}-{format_number(self.values[b])}"
        return labels[inverse.reshape(-1)]


def load_arx_csv(path: str | Path, *, column: str) -> list[list[str]]:
    """Read an ARX hierarchy CSV (``value;level1;...;*``) into one path per value.

    Raises:
        PolicyError: the file is missing, empty, or its rows differ in length.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PolicyError(
            f"hierarchy file for column {column!r} cannot be read: {path} ({exc.strerror})"
        ) from exc
    except UnicodeDecodeError:
        raise PolicyError(f"hierarchy file for column {column!r} is not valid UTF-8 text: {path}") from None
    try:
        rows = [
            [cell.strip() for cell in row]
            for row in csv.reader(text.splitlines(), delimiter=";")
            if row and any(cell.strip() for cell in row)
        ]
    except csv.Error:
        raise PolicyError(f"hierarchy file for column {column!r} cannot be parsed as CSV: {path}") from None
    if not rows:
        raise PolicyError(f"hierarchy file for column {column!r} is empty: {path}")
    width = len(rows[0])
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise PolicyError(
                f"hierarchy file {path} (column {column!r}): row {number} has {len(row)} "
                f"levels, row 1 has {width}"
            )
    seen: set[str] = set()
    unique_rows = []
    for row in rows:
        if row[0] not in seen:
            seen.add(row[0])
            unique_rows.append(row)
    return unique_rows


def _text(value: object) -> str:
    if isinstance(value, float | int | np.integer | np.floating) and not isinstance(value, bool | np.bool_):
        return format_number(float(value))
    return str(value).strip()


@dataclass(frozen=True)
class _Factorized:
    """A column factorized once, so text work runs over distinct values only."""

    codes: np.ndarray  # per record, index into texts; -1 = missing
    texts: list[str]  # distinct present values as text (numbers via format_number)

    @property
    def missing(self) -> np.ndarray:
        return self.codes < 0


def _factorize(series: pd.Series) -> _Factorized:
    raw, uniques = pd.factorize(series, use_na_sentinel=True)
    texts_all = [_text(u) for u in uniques]
    # different raw values may share one text (" a" and "a", 1 and 1.0): merge them
    index: dict[str, int] = {}
    remap = np.empty(len(texts_all) + 1, dtype=np.int64)
    for i, t in enumerate(texts_all):
        remap[i] = -1 if t in _MISSING_TOKENS else index.setdefault(t, len(index))
    remap[-1] = -1  # raw code -1 (NaN) indexes the last slot
    return _Factorized(remap[raw], list(index))


def _taxonomy_codes(
    fact: _Factorized, tax_paths: list[list[str]], column: str
) -> tuple[Taxonomy, np.ndarray]:
    """Attach the data to a taxonomy given as paths; returns (taxonomy, leaf codes)."""
    paths = [list(p) for p in tax_paths]
    if len(paths[0]) == 1:
        paths = [[p[0], ROOT_LABEL] for p in paths]
    height = len(paths[0]) - 1
    missing = fact.missing
    has_missing = bool(missing.any())
    if has_missing:
        paths.append([MISSING_LABEL] * height + [paths[0][-1]])
    tax = Taxonomy.from_paths(paths)
    index = {leaf: i for i, leaf in enumerate(tax.leaves)}
    lookup = np.array([index.get(t, -1) for t in fact.texts] + [-1], dtype=np.int64)
    codes = lookup[fact.codes]  # code -1 picks the trailing -1
    unknown = (codes < 0) & ~missing
    if unknown.any():
        n_distinct = int(np.unique(fact.codes[unknown]).size)
        raise PolicyError(
            f"column {column!r}: {int(unknown.sum())} value(s) in {n_distinct} distinct "
            "value(s) are not in its hierarchy"
        )
    if has_missing:
        codes[missing] = index[MISSING_LABEL]
    return tax, codes


def _prefix_paths(values: list[str]) -> list[list[str]]:
    longest = max((len(v) for v in values), default=1)
    paths = []
    for v in values:
        path = [v]
        for level in range(1, longest):
            keep = longest - level
            path.append(v if len(v) <= keep else v[:keep] + "*" * (len(v) - keep))
        path.append(ROOT_LABEL)
        paths.append(path)
    return paths


def _date_paths(fact: _Factorized, column: str) -> tuple[list[list[str]], _Factorized]:
    parsed = pd.to_datetime(pd.Series(fact.texts, dtype=object), errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        n_bad = int(np.isin(fact.codes, np.flatnonzero(bad)).sum())
        raise PolicyError(f"column {column!r}: {n_bad} value(s) are not dates (hierarchy 'date')")
    days = parsed.dt.strftime("%Y-%m-%d").tolist()
    index: dict[str, int] = {}
    remap = np.array([index.setdefault(d, len(index)) for d in days] + [-1], dtype=np.int64)
    paths = []
    for day in sorted(index):
        year, month = day[:4], day[:7]
        quarter = f"{year}-Q{(int(day[5:7]) - 1) // 3 + 1}"
        paths.append([day, month, quarter, year, ROOT_LABEL])
    return paths, _Factorized(remap[fact.codes], list(index))


def _bin_label(lo: float, hi: float, *, integral: bool, closed: bool) -> str:
    if integral and lo.is_integer() and hi.is_integer():
        top = hi if closed else hi - 1
        return format_number(lo) if top == lo else f"{format_number(lo)}-{format_number(top)}"
    return f"[{format_number(lo)}, {format_number(hi)}{']' if closed else ')'}"


_ARGLESS_KINDS = ("prefix", "date", "flat")


def _interval_width(spec: str, column: str) -> float | None:
    """The width of an ``interval:W`` spec, None for ``interval`` / ``interval:auto``."""
    arg = spec.partition(":")[2].strip()
    if arg in ("", "auto"):
        return None
    try:
        width = float(arg)
    except ValueError:
        width = -1.0
    if not width > 0 or not math.isfinite(width):
        raise PolicyError(
            f"column {column!r}: bad interval width in hierarchy {spec!r} (a positive number or 'auto')"
        )
    return width


def check_spec(spec: str, *, column: str) -> str:
    """Check the syntax of a built-in hierarchy spec; return it stripped.

    ``interval[:auto|:W]`` needs a positive finite width W; ``prefix``, ``date`` and ``flat``
    take no argument. Any other text is a hierarchy file path, checked when it is read.

    Raises:
        PolicyError: a malformed built-in spec (naming the column and the spec kind).
    """
    text = spec.strip()
    kind, sep, _ = text.partition(":")
    if kind == "interval":
        _interval_width(text, column)
    elif kind in _ARGLESS_KINDS and sep:
        raise PolicyError(f"column {column!r}: bad {kind} hierarchy {text!r}: {kind!r} takes no argument")
    return text


def _interval_paths(values: np.ndarray, spec: str, column: str) -> list[list[str]]:
    """Nested bins over sorted distinct numeric values (for global recoding)."""
    integral = bool(np.all(np.mod(values, 1) == 0))
    width_arg = _interval_width(spec, column)
    arg = "auto" if width_arg is None else "width"
    vmin, vmax = float(values[0]), float(values[-1])
    level_edges: list[np.ndarray] = []  # left edges of the bins, finest level first
    if arg == "auto":
        for level in range(_AUTO_LEVELS, 0, -1):
            qs = np.linspace(0.0, 1.0, 2**level + 1)[1:-1]
            inner = np.quantile(values, qs, method="inverted_cdf")
            edges = np.unique(np.concatenate([[vmin], inner[inner > vmin]]))
            if len(edges) > 1 and (not level_edges or len(edges) < len(level_edges[-1])):
                level_edges.append(edges)
    else:
        width = width_arg or 0.0  # a positive float here
        origin = math.floor(vmin / width) * width
        w = width
        while True:
            edges = origin + w * np.arange(0, math.floor((vmax - origin) / w) + 1)
            if len(edges) <= 1:
                break
            level_edges.append(edges)
            w *= 2
        if not level_edges and vmax > vmin:
            level_edges.append(np.array([origin]))
    paths = [[format_number(v)] for v in values]
    for edges in level_edges:
        if arg == "auto":
            closing = vmax  # last bin is [edge, vmax], closed
        else:
            closing = float(edges[-1] + (edges[1] - edges[0] if len(edges) > 1 else width))
        idx = np.maximum(np.searchsorted(edges, values, side="right") - 1, 0)
        labels = [
            _bin_label(
                float(edges[i]),
                float(edges[i + 1]) if i + 1 < len(edges) else closing,
                integral=integral,
                closed=(i + 1 == len(edges) and arg == "auto"),
            )
            for i in range(len(edges))
        ]
        for path, i in zip(paths, idx.tolist(), strict=True):
            path.append(labels[i])
    for path in paths:
        path.append(ROOT_LABEL)
    return paths


def encode_qi(
    series: pd.Series,
    spec: str | None,
    *,
    column: str,
    base_dir: str | Path | None = None,
    numeric_ranges: bool = True,
) -> EncodedQI:
    """Encode one quasi-identifier column.

    Args:
        series: the column.
        spec: hierarchy spec (see the module docstring) or None for the default.
        column: the column name, for messages.
        base_dir: folder that relative hierarchy file paths are resolved against.
        numeric_ranges: True (Mondrian) keeps numeric columns as ranges; False (global
            recoding) turns them into an interval taxonomy.

    Raises:
        PolicyError: unknown spec, unreadable file, values missing from a taxonomy.
    """
    spec_text = check_spec(spec or "", column=column)
    is_numeric = pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)
    if not spec_text and pd.api.types.is_datetime64_any_dtype(series.dtype):
        spec_text = "date"
    if not spec_text and is_numeric:
        spec_text = "interval:auto"
    if spec_text.partition(":")[0] == "interval":
        if is_numeric:
            arr = series.to_numpy(dtype=np.float64, na_value=np.nan)
            missing = np.isnan(arr)
        else:
            fact = _factorize(series)
            missing = fact.missing
            numbers = pd.to_numeric(pd.Series(fact.texts, dtype=object), errors="coerce")
            bad = numbers.isna().to_numpy()
            if bad.any():
                n_bad = int(np.isin(fact.codes, np.flatnonzero(bad)).sum())
                raise PolicyError(
                    f"column {column!r}: {n_bad} value(s) are not numbers (hierarchy {spec_text!r})"
                )
            arr = np.append(numbers.to_numpy(dtype=np.float64), np.nan)[fact.codes]
        values, inverse = np.unique(arr[~missing], return_inverse=True)
        codes = np.full(len(arr), len(values), dtype=np.int64)
        codes[~missing] = inverse.reshape(-1)
        if numeric_ranges or len(values) == 0:
            return EncodedQI(column, "numeric", codes, values, bool(missing.any()), None, spec_text)
        paths = _interval_paths(values, spec_text, column)
        leaf_fact = _Factorized(np.where(missing, -1, codes), [p[0] for p in paths])
        tax, codes = _taxonomy_codes(leaf_fact, paths, column)
        return EncodedQI(column, "taxonomy", codes, values, bool(missing.any()), tax, spec_text)
    fact = _factorize(series)
    if spec_text == "date":
        paths, fact = _date_paths(fact, column)
    elif spec_text == "prefix":
        paths = _prefix_paths(sorted(fact.texts))
    elif spec_text in ("", "flat"):
        paths = [[v, ROOT_LABEL] for v in sorted(fact.texts)]
        spec_text = "flat"
    else:
        file = Path(spec_text)
        if not file.is_absolute() and base_dir is not None:
            file = Path(base_dir) / file
        if not file.suffix and not file.exists():
            raise PolicyError(f"column {column!r}: unknown hierarchy spec {spec_text!r}")
        paths = load_arx_csv(file, column=column)
    if not paths:  # every value is missing
        paths = [[MISSING_LABEL, ROOT_LABEL]]
        tax = Taxonomy.from_paths(paths)
        codes = np.zeros(len(series), dtype=np.int64)
    else:
        tax, codes = _taxonomy_codes(fact, paths, column)
    return EncodedQI(
        column,
        "taxonomy",
        codes,
        has_missing=bool(fact.missing.any()),
        taxonomy=tax,
        spec=spec_text,
    )


def encode_qis(
    frame: pd.DataFrame,
    columns: Sequence[str],
    hierarchies: Mapping[str, str] | None,
    *,
    base_dir: str | Path | None = None,
    numeric_ranges: bool = True,
) -> list[EncodedQI]:
    """Encode every quasi-identifier of ``frame`` (see :func:`encode_qi`)."""
    specs = dict(hierarchies or {})
    missing_cols = [c for c in columns if c not in frame.columns]
    if missing_cols:
        raise PolicyError(f"quasi-identifier column(s) not in the table: {missing_cols}")
    return [
        encode_qi(frame[c], specs.get(c), column=c, base_dir=base_dir, numeric_ranges=numeric_ranges)
        for c in columns
    ]
