"""The Spark engine for Mondrian (``--engine spark``, needs ``pip install 'privdl[spark]'``).

The driver encodes the quasi-identifiers and runs Mondrian's top levels with a large
minimum partition size (``chunk_rows``), which cuts the table into chunks that each
already meet l and t. Spark then refines every chunk with the real k in parallel
(``applyInPandas`` over integer codes only: no personal value crosses to the
executors as text), and the driver turns the returned code ranges into labels.

Why the union is still safe: every class lies inside one chunk and holds >= k
records meeting l and t against the *whole table's* sensitive distribution (it is
passed to the executors). Classes of different chunks that end up with the same
labels merge into a larger class, and a merge keeps k, distinct and entropy
l-diversity (entropy is concave) and t-closeness (EMD is convex).

Global recoding's lattice search runs on the driver, so ``algorithm="global"`` falls
back to the pandas engine.

This is the path of a *pandas* frame with ``engine="spark"``; a Spark DataFrame goes
through :mod:`privdl.anonymize.spark_engine` and is never collected.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from privdl.anonymize.generalize import Generalization, encode_for, generalize, release_ranges, targets
from privdl.anonymize.metrics import SensitiveCodes
from privdl.anonymize.mondrian import mondrian
from privdl.errors import PolicyNotMetError

__all__ = ["DEFAULT_CHUNK_ROWS", "generalize_spark"]

DEFAULT_CHUNK_ROWS = 100_000


def _session(spark: Any) -> Any:
    # a local session runs its workers on this interpreter (spark_session pins it)
    from privdl.anonymize.spark_session import active_or_local

    return active_or_local(spark)


def generalize_spark(
    frame: pd.DataFrame,
    policy: Any,
    *,
    spark: Any = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Generalization:
    """Same contract as :func:`privdl.anonymize.generalize.generalize`, refined on Spark.

    Args:
        frame: the table (pandas).
        policy: the :class:`~privdl.anonymize.policy.Policy`.
        spark: a ``SparkSession``; by default a local one using every core.
        chunk_rows: smallest chunk the driver hands to one Spark task.

    Raises:
        MissingDependencyError: pyspark is not installed.
        PolicyError / PolicyNotMetError: as :func:`~privdl.anonymize.generalize.generalize`.
    """
    qis = list(getattr(policy, "quasi_identifiers", ()) or ())
    if not qis:
        return generalize(frame, policy)
    algorithm, k, l_value, l_kind, t_value = targets(policy)
    if algorithm != "mondrian":
        return generalize(frame, policy)
    encoded, sens = encode_for(frame, policy, algorithm=algorithm)
    n = len(frame)
    if n < k:
        raise PolicyNotMetError(f"k={k} cannot be met: the table has {n} rows")
    # chunks: Mondrian's top levels on the driver (a few cheap rounds); with a table
    # smaller than two chunks this is one chunk, and still checks l and t up front
    chunk_min = max(int(chunk_rows), k)
    top = mondrian(
        encoded, k=chunk_min if n >= 2 * chunk_min else n, sensitive=sens, l=l_value, l_kind=l_kind, t=t_value
    )
    chunk = top.ids_
    columns: dict[str, np.ndarray] = {"row": np.arange(n, dtype=np.int64), "chunk": chunk}
    for d, qi in enumerate(encoded):
        columns[f"q{d}"] = qi.codes
    for j, s in enumerate(sens):
        columns[f"s{j}"] = s.codes
    # executors get the hierarchies and reference distributions, not the full code arrays
    meta = [dataclasses.replace(qi, codes=np.zeros(0, dtype=np.int64)) for qi in encoded]
    sens_meta = [dataclasses.replace(s, codes=np.zeros(0, dtype=np.int64)) for s in sens]

    def refine(pdf: pd.DataFrame) -> pd.DataFrame:
        local = [dataclasses.replace(m, codes=pdf[f"q{d}"].to_numpy(np.int64)) for d, m in enumerate(meta)]
        local_sens = [
            SensitiveCodes(m.column, pdf[f"s{j}"].to_numpy(np.int64), m.n_values, m.ordered, m.overall)
            for j, m in enumerate(sens_meta)
        ]
        part = mondrian(local, k=k, sensitive=local_sens, l=l_value, l_kind=l_kind, t=t_value)
        out = {"row": pdf["row"].to_numpy(np.int64)}
        for d, qi in enumerate(local):
            lo, hi = part.bounds(qi)
            out[f"lo{d}"] = lo[part.ids_]
            out[f"hi{d}"] = hi[part.ids_]
        return pd.DataFrame(out)

    session = _session(spark)
    schema = ", ".join(["row long"] + [f"lo{d} long, hi{d} long" for d in range(len(encoded))])
    sdf = session.createDataFrame(pd.DataFrame(columns))
    result = sdf.groupBy("chunk").applyInPandas(refine, schema=schema).toPandas()
    result = result.sort_values("row").reset_index(drop=True)
    lo = result[[f"lo{d}" for d in range(len(encoded))]].to_numpy(np.int64)
    hi = result[[f"hi{d}" for d in range(len(encoded))]].to_numpy(np.int64)
    # one class per distinct bounds vector
    _, ids = np.unique(np.concatenate([lo, hi], axis=1), axis=0, return_inverse=True)
    ids = ids.reshape(-1)
    first = np.zeros(int(ids.max()) + 1 if n else 0, dtype=np.int64)
    first[ids[::-1]] = np.arange(n)[::-1]
    released = release_ranges(frame, encoded, ids, lo[first], hi[first])
    info = {
        "hierarchies": {q.column: q.spec for q in encoded},
        "engine": "spark",
        "chunks": int(chunk.max()) + 1 if n else 0,
        "classes": len(first),
    }
    return Generalization(released, 0, algorithm, info)
