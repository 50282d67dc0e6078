"""Distributed Mondrian on Spark: top-level cuts on the driver, each part finished locally.

1. Encode (driver, small): each quasi-identifier and sensitive column's distinct values
   are collected with their counts and encoded as the pandas engine encodes the whole
   column (:mod:`privdl.anonymize.spark_codes`); executors code every record with a
   vectorized pandas UDF.
2. Plan (driver, small): a uniform sample of the codes (at most ``sample_rows``) is cut
   like Mondrian's top levels, on the widest column at the median, but only at
   thresholds (``code < c``) and only while both halves are estimated to hold
   ``part_rows`` records and to meet l and t. The cuts become one ``CASE WHEN``
   column expression: every record's top-level part.
3. Check (Spark, small): exact record counts and sensitive histograms per part. A cut
   whose halves do not both hold >= k records meeting l and t is undone (the two
   parts merge into their parent), bottom-up; a table that fails as a whole fails
   with the same :class:`~privdl.errors.PolicyNotMetError` as the pandas engine.
4. Finish (executors): records are shuffled to their part and each part is finished
   by the single-machine :func:`~privdl.anonymize.mondrian.mondrian` in
   ``applyInPandas``, with the whole table's sensitive distribution as t's reference.
   Records are sorted by their codes and a hash of the whole row first, so the
   released table is a function of the input rows alone, whatever order Spark
   delivers them in (the report's jobs and the write see the same release).

Why the union is safe: every class lies inside one part and holds >= k records meeting
l and t against the whole table's distribution; classes of different parts that end
up with the same labels merge into a larger class, and a merge keeps k, distinct and
entropy l-diversity (entropy is concave) and t-closeness (EMD is convex).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from privdl.anonymize.generalize import targets
from privdl.anonymize.hierarchy import EncodedQI
from privdl.anonymize.metrics import SensitiveCodes
from privdl.anonymize.mondrian import mondrian
from privdl.anonymize.requirements import ClassRequirements
from privdl.anonymize.spark_codes import (
    ColumnCodes,
    distinct_counts,
    encode_qi_codes,
    encode_sensitive_codes,
)
from privdl.errors import PolicyError, PolicyNotMetError

__all__ = ["DEFAULT_PART_ROWS", "DEFAULT_SAMPLE_ROWS", "SparkGeneralization", "mondrian_spark"]

DEFAULT_PART_ROWS = 100_000
DEFAULT_SAMPLE_ROWS = 200_000
_HASH = "__privdl_h"
_PART = "__privdl_part"


@dataclass(frozen=True, eq=False)
class SparkGeneralization:
    """What :func:`mondrian_spark` released.

    Attributes:
        released: the lazy Spark DataFrame (input columns in input order, the
            quasi-identifiers as released labels, strings).
        encoded: the quasi-identifiers' encodings (domains and hierarchies, no codes),
            for the information loss.
        suppressed: always 0 (Mondrian generalizes, it does not suppress).
        algorithm: ``"mondrian"``.
        info: facts for the report (engine, parts, sample size, hierarchies).
    """

    released: Any
    encoded: list[EncodedQI]
    suppressed: int = 0
    algorithm: str = "mondrian"
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Node:
    rows: np.ndarray
    dim: int = -1
    threshold: int = 0
    left: int = -1
    right: int = -1

    @property
    def leaf(self) -> bool:
        return self.dim < 0


def _candidates(qi: EncodedQI, codes: np.ndarray, lo: int, hi: int) -> list[int]:
    """Leaf-code thresholds ``c`` (left half: ``code < c``) around the median."""
    med = int(np.sort(codes)[len(codes) // 2])
    if qi.kind != "taxonomy":
        return [med, med + 1]
    tax = qi.tree()
    level = max(int(tax.lca_level(np.array([lo]), np.array([hi]))[0]) - 1, 0)
    node = int(tax.node_of[level, med])
    row = tax.node_of[level]
    return [int(np.searchsorted(row, node, "left")), int(np.searchsorted(row, node + 1, "left"))]


def _plan(
    codes: np.ndarray,
    meta: Sequence[EncodedQI],
    req: ClassRequirements,
    *,
    scale: float,
    part_rows: int,
) -> list[_Node]:
    """Cut the sample (``codes``: rows x quasi-identifiers) into top-level parts."""
    nodes = [_Node(np.arange(len(codes)))]
    stack = [0]
    min_side = part_rows / scale
    while stack:
        i = stack.pop()
        rows = nodes[i].rows
        if len(rows) < 2 * min_side:
            continue
        block = codes[rows]
        lo, hi = block.min(axis=0), block.max(axis=0)
        width = np.array([float(m.range_loss(lo[d : d + 1], hi[d : d + 1])[0]) for d, m in enumerate(meta)])
        for d in np.argsort(-width, kind="stable").tolist():
            if width[d] <= 0:
                break
            col = block[:, d]
            best = None
            for c in _candidates(meta[d], col, int(lo[d]), int(hi[d])):
                n_left = int((col < c).sum())
                if n_left < min_side or len(col) - n_left < min_side:
                    continue
                if best is None or abs(n_left - len(col) / 2) < abs(best[1] - len(col) / 2):
                    best = (c, n_left)
            if best is None:
                continue
            right = col >= best[0]
            if req.checks_sensitive:
                ok = req.diverse(right.astype(np.int64), 2, rows=rows)
                if not ok.all():
                    continue
            nodes[i].dim, nodes[i].threshold = d, best[0]
            nodes[i].left, nodes[i].right = len(nodes), len(nodes) + 1
            nodes.append(_Node(rows[~right]))
            nodes.append(_Node(rows[right]))
            stack += [nodes[i].left, nodes[i].right]
            break
    for node in nodes:
        node.rows = np.zeros(0, dtype=np.int64)  # the sample is not needed any more
    return nodes


def _leaves(nodes: list[_Node]) -> dict[int, int]:
    """Node index -> part id, for the leaves reachable from the root."""
    out: dict[int, int] = {}
    stack = [0]
    while stack:
        i = stack.pop()
        if nodes[i].leaf:
            out[i] = len(out)
        else:
            stack += [nodes[i].right, nodes[i].left]
    return out


def _part_expr(nodes: list[_Node], leaves: dict[int, int], code_cols: Sequence[str]) -> Any:
    from pyspark.sql import functions as F

    def build(i: int) -> Any:
        node = nodes[i]
        if node.leaf:
            return F.lit(leaves[i])
        return F.when(F.col(code_cols[node.dim]) < F.lit(node.threshold), build(node.left)).otherwise(
            build(node.right)
        )

    return build(0)


def _merge_failing(
    nodes: list[_Node],
    leaves: dict[int, int],
    counts: np.ndarray,
    hists: list[np.ndarray],
    req: ClassRequirements,
    sens: Sequence[SensitiveCodes],
) -> None:
    """Undo, bottom-up, every cut one of whose halves fails k, l or t (in place).

    Raises:
        PolicyNotMetError: the whole table fails (as :func:`~privdl.anonymize.mondrian.mondrian`).
    """
    stats: dict[int, tuple[float, list[np.ndarray]]] = {
        i: (float(counts[p]), [h[p] for h in hists]) for i, p in leaves.items()
    }

    def ok(i: int) -> bool:
        size, hist = stats[i]
        if size < req.k:
            return False
        for s, h in zip(sens, hist, strict=True):
            one = ClassRequirements(req.k, (dataclasses.replace(s, codes=np.arange(s.n_values)),), req.l,
                                    req.l_kind, req.t)
            if not one.diverse(np.zeros(s.n_values, dtype=np.int64), 1, weights=h)[0]:
                return False
        return True

    order: list[int] = []
    stack = [0]
    while stack:  # pre-order, reversed below: children before parents
        i = stack.pop()
        order.append(i)
        if not nodes[i].leaf:
            stack += [nodes[i].left, nodes[i].right]
    for i in reversed(order):
        node = nodes[i]
        if node.leaf:
            continue
        a, b = stats[node.left], stats[node.right]
        stats[i] = (a[0] + b[0], [x + y for x, y in zip(a[1], b[1], strict=True)])
        if not (ok(node.left) and ok(node.right)):
            node.dim = -1  # merge the halves back into this part
    if not ok(0):
        n = int(stats[0][0])
        if n < req.k:
            raise PolicyNotMetError(f"k={req.k} cannot be met: the table has {n} rows")
        raise PolicyNotMetError(
            f"l={req.l} ({req.l_kind} l-diversity) cannot be met: even the whole table as one "
            "class is not that diverse in its sensitive column(s)"
            if req.l is not None
            else f"t={req.t} cannot be met: even the whole table as one class is not that close"
        )


def _code_udf(codes: ColumnCodes) -> Any:
    from pyspark.sql.functions import pandas_udf

    def encode(series: pd.Series) -> pd.Series:
        return pd.Series(codes.encode(series))

    return pandas_udf(encode, "long")  # type: ignore[call-overload]


def mondrian_spark(
    sdf: Any,
    policy: Any,
    *,
    part_rows: int = DEFAULT_PART_ROWS,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    seed: int = 0,
) -> SparkGeneralization:
    """Generalize a Spark DataFrame's quasi-identifiers until the policy's k, l and t hold.

    Args:
        sdf: the table (identifier transforms already applied), a Spark DataFrame.
        policy: the :class:`~privdl.anonymize.policy.Policy`.
        part_rows: smallest top-level part (records) one ``applyInPandas`` task finishes.
        sample_rows: at most this many sampled records plan the top-level cuts.
        seed: the sample's seed.

    Raises:
        PolicyError: global recoding (it runs on one machine), unknown hierarchy values.
        PolicyNotMetError: k, l or t cannot be met on this table.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    algorithm, k, l_value, l_kind, t_value = targets(policy)
    if algorithm != "mondrian":
        raise PolicyError(
            f"algorithm {algorithm!r} runs on one machine: use --engine pandas, or mondrian with Spark"
        )
    qis = list(policy.quasi_identifiers)
    sensitive = list(policy.sensitive or ())
    specs = dict(policy.hierarchies or {})
    distinct = distinct_counts(sdf, [*qis, *sensitive])
    n = int(distinct[qis[0]]["__n"].sum())
    if n < k:
        raise PolicyNotMetError(f"k={k} cannot be met: the table has {n} rows")
    meta: list[EncodedQI] = []
    qi_codes: list[ColumnCodes] = []
    for c in qis:
        m, cc = encode_qi_codes(distinct[c], c, specs.get(c), base_dir=getattr(policy, "base_dir", None))
        meta.append(m)
        qi_codes.append(cc)
    sens_meta: list[SensitiveCodes] = []
    sens_codes: list[ColumnCodes] = []
    for c in sensitive:
        s, cc = encode_sensitive_codes(distinct[c], c)
        sens_meta.append(s)
        sens_codes.append(cc)
    q_cols = [f"__privdl_q{d}" for d in range(len(qis))]
    s_cols = [f"__privdl_s{j}" for j in range(len(sensitive))]
    coded = sdf.select(
        "*",
        *[_code_udf(cc)(F.col(f"`{c}`")).alias(name) for c, cc, name in zip(qis, qi_codes, q_cols, strict=True)],
        *[
            _code_udf(cc)(F.col(f"`{c}`")).alias(name)
            for c, cc, name in zip(sensitive, sens_codes, s_cols, strict=True)
        ],
        F.xxhash64(*[F.col(f"`{c}`") for c in sdf.columns]).alias(_HASH),
    )
    # plan the top-level cuts on a sample of the codes (integers only reach the driver)
    fraction = min(1.0, sample_rows / n)
    sample = coded.select(*q_cols, *s_cols)
    if fraction < 1.0:
        sample = sample.sample(withReplacement=False, fraction=fraction, seed=seed)
    picked = sample.toPandas()
    sample_q = picked[q_cols].to_numpy(np.int64) if len(picked) else np.zeros((0, len(qis)), dtype=np.int64)
    sample_sens = tuple(
        dataclasses.replace(s, codes=picked[col].to_numpy(np.int64)) for s, col in zip(sens_meta, s_cols, strict=True)
    )
    req = ClassRequirements(int(k), sample_sens, l_value, l_kind, t_value)
    scale = n / max(len(picked), 1)
    nodes = _plan(sample_q, meta, req, scale=scale, part_rows=max(int(part_rows), int(k)))
    # exact sizes and sensitive histograms per part, then undo the cuts that fail
    leaves = _leaves(nodes)
    with_part = coded.withColumn(_PART, _part_expr(nodes, leaves, q_cols))
    counts = np.zeros(len(leaves))
    hists = [np.zeros((len(leaves), s.n_values)) for s in sens_meta]
    if len(leaves) > 1 or sens_meta:
        if sens_meta:
            for j, col in enumerate(s_cols):
                table = with_part.groupBy(_PART, col).count().toPandas()
                np.add.at(hists[j], (table[_PART].to_numpy(), table[col].to_numpy()), table["count"].to_numpy())
            counts = hists[0].sum(axis=1)
        else:
            table = with_part.groupBy(_PART).count().toPandas()
            counts[table[_PART].to_numpy()] = table["count"].to_numpy()
    else:
        counts[:] = n
    full_req = ClassRequirements(int(k), tuple(sens_meta), l_value, l_kind, t_value)
    _merge_failing(nodes, leaves, counts, hists, full_req, sens_meta)
    leaves = _leaves(nodes)
    with_part = coded.withColumn(_PART, _part_expr(nodes, leaves, q_cols))

    out_fields = [
        T.StructField(f.name, T.StringType(), True) if f.name in qis else f for f in sdf.schema.fields
    ]
    out_schema = T.StructType(out_fields)
    out_names = [f.name for f in out_fields]
    sort_cols = [*q_cols, *s_cols, _HASH]

    def finish(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values(sort_cols, kind="stable").reset_index(drop=True)
        local = [dataclasses.replace(m, codes=pdf[col].to_numpy(np.int64)) for m, col in zip(meta, q_cols, strict=True)]
        local_sens = [
            dataclasses.replace(s, codes=pdf[col].to_numpy(np.int64)) for s, col in zip(sens_meta, s_cols, strict=True)
        ]
        part = mondrian(local, k=k, sensitive=local_sens, l=l_value, l_kind=l_kind, t=t_value)
        out = pdf[out_names].copy()
        for qi in local:
            lo, hi = part.bounds(qi)
            out[qi.column] = np.asarray(qi.range_labels(lo, hi), dtype=object)[part.ids_]
        return out

    released = with_part.groupBy(_PART).applyInPandas(finish, schema=out_schema)
    info = {
        "hierarchies": {m.column: m.spec for m in meta},
        "engine": "spark",
        "parts": len(leaves),
        "sample_rows": len(picked),
        "part_rows": int(part_rows),
    }
    return SparkGeneralization(released, meta, 0, "mondrian", info)
