"""The Spark engine end to end: a Spark DataFrame in, a lazy Spark DataFrame out.

:class:`~privdl.anonymize.anonymizer.Anonymizer` with ``engine="spark"`` hands a
PySpark DataFrame here. The order of work is the pandas engine's (see
:mod:`privdl.anonymize.anonymizer`): identifier transforms from the original values
(:mod:`~privdl.anonymize.spark_transforms`), dropped columns, distributed Mondrian
(:mod:`~privdl.anonymize.spark_mondrian`), linkable columns, then the report, every
figure computed by Spark aggregations on the released table
(:mod:`~privdl.anonymize.spark_metrics`). The driver receives counts, distinct
values of the quasi-identifiers and sensitive columns, a sample of integer codes and
one row of figures per bucket; never the records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from privdl.anonymize.pseudonymize import KEYED
from privdl.anonymize.spark_codes import ordered_flags
from privdl.anonymize.spark_metrics import identifier_like_spark, linkable_columns_spark, measure_spark
from privdl.anonymize.spark_mondrian import DEFAULT_PART_ROWS, DEFAULT_SAMPLE_ROWS, mondrian_spark
from privdl.anonymize.spark_transforms import transform_identifiers
from privdl.errors import InputError, KeyMissingError

__all__ = ["PART_ROWS_CONF", "SAMPLE_ROWS_CONF", "SparkRelease", "SparkSubjects", "prepare", "report_for", "subjects_of"]


class SparkSubjects:
    """The distinct pseudonyms of a released Spark table's subject column, streamed.

    Iterating runs one Spark job and brings the values partition by partition
    (``toLocalIterator``), so the driver never holds the whole column at once.
    """

    def __init__(self, sdf: Any, column: str) -> None:
        self._sdf = sdf
        self._column = column

    def __iter__(self) -> Iterator[Any]:
        from pyspark.sql import functions as F

        col = F.col(f"`{self._column}`")
        for row in self._sdf.select(col).where(col.isNotNull()).distinct().toLocalIterator():
            yield row[0]

    def __repr__(self) -> str:
        return f"SparkSubjects(column={self._column!r})"


@dataclass(eq=False)
class SparkRelease:
    """A planned release: the lazy released table and what its report needs."""

    original: Any
    released: Any
    rows: int
    generalization: Any
    passthrough: list[str]
    warnings: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def _check_scalar_qis(sdf: Any, columns: Any) -> None:
    from pyspark.sql import types as T

    kinds = {f.name: f.dataType for f in sdf.schema.fields}
    for column in columns:
        if isinstance(kinds[column], T.ArrayType | T.MapType | T.StructType | T.BinaryType):
            raise InputError(f"column {column!r} holds lists/objects: a quasi-identifier needs scalar values")


#: Spark settings that tune the distributed Mondrian (``--conf`` on spark-submit)
PART_ROWS_CONF = "spark.privdl.partRows"
SAMPLE_ROWS_CONF = "spark.privdl.sampleRows"


def prepare(
    sdf: Any,
    policy: Any,
    key: Any,
    *,
    part_rows: int | None = None,
    sample_rows: int | None = None,
) -> SparkRelease:
    """Check the policy, then define the released table (lazy, except the small jobs
    that plan Mondrian's top-level cuts).

    ``part_rows`` / ``sample_rows`` default to the session's ``spark.privdl.partRows``
    / ``spark.privdl.sampleRows`` settings, else 100,000 / 200,000.

    Raises:
        PolicyError, KeyMissingError, InputError, PolicyNotMetError: as the pandas engine.
    """
    policy.validate(sdf.columns)
    _check_scalar_qis(sdf, policy.quasi_identifiers)
    if policy.needs_key and key is None:
        first = next(r.column for r in policy.identifiers if r.transform in KEYED)
        raise KeyMissingError(f"column {first!r} needs a key: pass key= (CLI: --key-env VAR or --key-file PATH)")
    rows = int(sdf.count())
    out = transform_identifiers(sdf, policy, key)
    passthrough = policy.passthrough(sdf.columns)
    suspicious = identifier_like_spark(sdf, passthrough, rows=rows)
    warnings = [
        f"column {column!r} looks like {kind} but has no role;"
        f" add --id {column}, --drop {column} or --keep {column}"
        for column, kind in suspicious.items()
    ]
    conf = sdf.sparkSession.conf
    if part_rows is None:
        part_rows = int(conf.get(PART_ROWS_CONF, str(DEFAULT_PART_ROWS)))
    if sample_rows is None:
        sample_rows = int(conf.get(SAMPLE_ROWS_CONF, str(DEFAULT_SAMPLE_ROWS)))
    generalization = None
    released = out
    if policy.quasi_identifiers:
        generalization = mondrian_spark(out, policy, part_rows=part_rows, sample_rows=sample_rows)
        released = generalization.released
    return SparkRelease(sdf, released, rows, generalization, passthrough, warnings)


def report_for(run: SparkRelease, measured: Any, *, policy: Any, key: Any, linkable: Any) -> Any:
    """The :class:`~privdl.anonymize.report.AnonymizationReport` of ``measured`` (the
    released table, or what was written of it), every figure from Spark aggregations.

    ``linkable(released, passthrough, detect)`` is the anonymizer's linkable-column
    rule, called with the Spark detector.
    """
    from privdl.anonymize.report import AnonymizationReport

    qis = list(policy.quasi_identifiers)
    released_cols = set(measured.columns)
    sensitive = [c for c in (policy.sensitive or ()) if c in released_cols]
    k = policy.k
    found = linkable(measured, run.passthrough, partial(linkable_columns_spark, rows=run.rows))
    found = {c: why for c, why in found.items() if c in released_cols and c not in qis}
    ordered = ordered_flags({f.name: f.dataType for f in run.original.schema.fields}, sensitive)
    before = after = linked = loss = None
    if found:
        linked = measure_spark(
            measured, quasi_identifiers=[*qis, *found], sensitive=sensitive, k_target=k, ordered=ordered
        ).metrics
    gen = run.generalization
    if qis and gen is not None:
        before = measure_spark(
            run.original, quasi_identifiers=qis, sensitive=sensitive, k_target=k, ordered=ordered
        ).metrics
        measured_after = measure_spark(
            measured,
            quasi_identifiers=qis,
            sensitive=sensitive,
            k_target=k,
            suppressed=gen.suppressed,
            ordered=ordered,
            encoded=gen.encoded,
        )
        after, loss = measured_after.metrics, measured_after.information_loss
    rows_out = after.rows if after is not None else int(measured.count())
    return AnonymizationReport.from_measures(
        policy=policy,
        rows_in=run.rows,
        rows_out=rows_out,
        generalization=gen,
        key_id=key.key_id if key is not None else None,
        identifier_columns={r.column: r.transform for r in policy.identifiers},
        passthrough=run.passthrough,
        warnings=run.warnings,
        linkable=found,
        before=before,
        after=after,
        linked=linked,
        loss=loss,
        released_columns=[str(c) for c in measured.columns],
        dropped_columns=[str(c) for c in run.original.columns if c not in released_cols],
    )


def with_manifest(report: Any, params: Any, *, source: Any, released_sha256: str | None) -> Any:
    """``report`` with the run's manifest: the parameters (key_id only), the input's
    fingerprint (files, or the Spark table's shape) and the written release's digest
    (None for a lazy DataFrame, which has no bytes to hash yet)."""
    import dataclasses

    from privdl.manifest import RunManifest

    manifest = RunManifest.collect(
        config=params,
        data={"input": source},
        model_digests={"released table": released_sha256} if released_sha256 else {},
    )
    return dataclasses.replace(report, manifest=manifest.to_dict())


def subjects_of(measured: Any, policy: Any) -> Any:
    """The subject column's pseudonyms (streamed), or [] when the policy has none."""
    subject = policy.subject_column
    pseudonymized = {r.column for r in policy.identifiers if r.transform != "drop"}
    if subject is None or subject not in pseudonymized or subject not in measured.columns:
        return []
    return SparkSubjects(measured, subject)
