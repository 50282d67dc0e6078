"""The Anonymizer: apply a :class:`~privdl.anonymize.policy.Policy` to a table.

Order of work: check the policy against the columns; transform direct identifiers
(each from the *original* values, so a date shift keyed by ``user_id`` is computed
before ``user_id`` itself is pseudonymized); drop columns; generalize the
quasi-identifiers until k-anonymous (l-diverse, t-close) when the policy asks (a
``shift_dates`` column that is also a quasi-identifier is generalized after its
shift); find the released columns an attacker can link on that are not
quasi-identifiers; build the report from the released table, with the risk measured
on the quasi-identifiers alone and with those linkable columns added.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, ClassVar

from privdl import progress
from privdl.anonymize.detect import linkable_columns, looks_like_identifiers
from privdl.anonymize.policy import Policy
from privdl.anonymize.pseudonymize import KEYED, apply_rule
from privdl.errors import InputError, KeyMissingError, NotFittedError, UsageError
from privdl.estimator import EstimatorParams
from privdl.fingerprint import fingerprint
from privdl.keys import Secret
from privdl.manifest import RunManifest

if TYPE_CHECKING:
    import pandas as pd

    from privdl.anonymize.report import AnonymizationReport

__all__ = ["ENGINES", "Anonymizer"]

ENGINES = ("pandas", "spark")


class Anonymizer(EstimatorParams):
    """Release a copy of a table under a policy (a scikit-learn transformer).

    A scikit-learn estimator: ``get_params`` / ``set_params``, ``sklearn.base.clone``,
    and a ``Pipeline`` step (``fit`` / ``transform`` / ``fit_transform``,
    ``set_output(transform="pandas")``, ``get_feature_names_out``). Each ``transform``
    is a release of its own table: generalization is computed from the table being
    released (k holds in it), not learned in ``fit``, which checks the policy against
    the columns and records them.

    Args:
        policy: the column roles and targets.
        key: the master key for keyed transforms (pseudonymize, encrypt, shift_dates);
            only its ``key_id`` is ever recorded.
        engine: ``"pandas"`` (default) or ``"spark"``: a PySpark DataFrame is then
            anonymized on Spark end to end and a lazy PySpark DataFrame returned
            (:mod:`privdl.anonymize.spark_engine`); a pandas frame is generalized on
            Spark and returned as pandas.
        audit_log: an :class:`~privdl.audit.log.AuditLog` (or path) that receives one
            entry per :meth:`fit_transform`.

    Attributes:
        feature_names_in_, n_features_in_: the columns seen by ``fit``.
        report_: the :class:`~privdl.anonymize.report.AnonymizationReport` of the last run.
        warnings_: lines a reviewer must read: columns that look like direct identifiers
            but have no role, and released columns an attacker can link on that are not
            quasi-identifiers (each with the risk measured with it added).
        subjects_: the distinct pseudonyms of the subject column (for erasure requests).

    Example:
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"email": ["a@x.org", "b@x.org"], "plays": [3, 4]})
        >>> anonymizer = Anonymizer(Policy(identifiers=["email"]), key=Secret.generate())
        >>> released = anonymizer.fit_transform(frame)
        >>> released["email"].str.len().tolist()
        [32, 32]
    """

    def __init__(
        self,
        policy: Policy,
        *,
        key: Secret | None = None,
        engine: str = "pandas",
        audit_log: Any = None,
    ) -> None:
        self.policy = policy
        self.key = key
        self.engine = engine
        self.audit_log = audit_log

    def __repr__(self) -> str:
        key = self.key.key_id if self.key is not None else None
        return f"Anonymizer(policy=<{len(self.policy.named_columns)} columns>, key_id={key!r}, engine={self.engine!r})"

    def __getattr__(self, name: str) -> Any:
        # learned state (``report_``, ...) before a run: scikit-learn's NotFittedError
        if name.endswith("_") and not name.startswith("__"):
            raise NotFittedError(f"Anonymizer has no {name} yet: call fit_transform() (or fit, transform)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    _sklearn_kind: ClassVar[str] = "transformer"

    def __sklearn_is_fitted__(self) -> bool:
        return "feature_names_in_" in vars(self)

    def params_record(self) -> dict[str, Any]:
        """What goes into audit records: the policy, the engine and the key's id only
        (``get_params()`` is scikit-learn's: the constructor parameters as given)."""
        return {
            "policy": self.policy.get_params(),
            "engine": self.engine,
            "key_id": self.key.key_id if self.key is not None else None,
        }

    # -- scikit-learn's transformer --------------------------------------------------
    def fit(self, frame: pd.DataFrame, y: Any = None) -> Anonymizer:
        """Check the policy against the table's columns (and that a keyed transform has
        its key) and record them; nothing is released, so nothing is audited.

        Raises:
            PolicyError: a column named in the policy is missing.
            KeyMissingError: a keyed transform but no key.
        """
        del y  # unsupervised: the labels of a Pipeline pass by
        self._check(frame)
        self._fit_columns(frame)
        return self

    def _fit_columns(self, frame: Any) -> None:
        self.feature_names_in_ = [str(c) for c in frame.columns]
        self.n_features_in_ = len(self.feature_names_in_)

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Release ``frame`` (as :meth:`fit_transform`), after :meth:`fit` on a table
        with the same columns.

        Raises:
            NotFittedError: before :meth:`fit`.
            InputError: ``frame`` has other columns than the fitted table.
        """
        if not self.__sklearn_is_fitted__():
            raise NotFittedError("the Anonymizer is not fitted yet: call fit() or fit_transform() first")
        columns = [str(c) for c in frame.columns]
        if columns != self.feature_names_in_:
            missing = [c for c in self.feature_names_in_ if c not in columns]
            extra = [c for c in columns if c not in self.feature_names_in_]
            what = f"lacks column {missing[0]!r}" if missing else f"has a new column {extra[0]!r}" if extra else "has its columns in another order"
            raise InputError(f"the table to transform {what} (fitted on other columns)")
        return self._release(frame)

    def set_output(self, *, transform: str | None = None) -> Anonymizer:
        """scikit-learn's output container: released tables are pandas DataFrames
        (``"pandas"``, ``"default"`` or ``None``).

        Raises:
            UsageError: another container (``"polars"``).
        """
        if transform not in (None, "default", "pandas"):
            raise UsageError(f"Anonymizer releases pandas DataFrames, not {transform!r}")
        self._output = transform
        return self

    def get_feature_names_out(self, input_features: Any = None) -> Any:
        """The released columns: those of the last release, else the fitted columns
        without the dropped ones."""
        import numpy as np

        report = vars(self).get("report_")
        if report is not None and "released_columns_" in vars(self):
            return np.asarray(self.released_columns_, dtype=object)
        columns = list(input_features) if input_features is not None else self.feature_names_in_
        policy = self.policy
        dropped = set(policy.drop) | {r.column for r in policy.identifiers if r.transform == "drop"}
        return np.asarray([c for c in columns if c not in dropped], dtype=object)

    def fit_transform(self, frame: pd.DataFrame, y: Any = None) -> pd.DataFrame:
        """Return the released table; ``frame`` is never modified.

        With an ``audit_log``, one ``anonymize`` entry records the policy, the key's
        id, what was achieved, the subjects, and the input and released frames
        (fingerprinted in memory: SHA-256 of the values, rows, columns).

        Raises:
            PolicyError: a column named in the policy is missing, or a hierarchy problem.
            KeyMissingError: a keyed transform but no key.
            PolicyNotMetError: k / l / t cannot be met within ``max_suppression``.
        """
        del y  # unsupervised: the labels of a Pipeline pass by
        released = self._release(frame)  # checks the policy, inside the audited operation
        self._fit_columns(frame)
        return released

    def _release(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.audit_log is None:
            return self._run(frame)
        from privdl.audit import operation

        with operation(self.audit_log, "anonymize", params=self.params_record(), inputs=[frame]) as op:
            released = self._run(frame)
            self._record(op, outputs=[released])
        return released

    def release(
        self,
        data: pd.DataFrame | str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        report: str | os.PathLike[str] | None = None,
        sep: str | None = None,
        query: str | None = None,
        progress: bool = False,
    ) -> pd.DataFrame:
        """Anonymize a table and write the released table, and its report, all or nothing.

        Evidence first: with an ``audit_log``, the log is checked to take the entry
        before the input is read; the table and the report are written to staged files
        that take their names only once the ``anonymize`` entry (the same entry as
        :meth:`fit_transform` writes, with the files as inputs and outputs) is written.
        Whatever fails, neither file appears and the input is not modified.

        Args:
            data: a DataFrame, or a table location (file or ``sqlite:///`` URL, see
                :func:`privdl.io.read_table`).
            output: where the released table goes (format from the extension).
            report: also write :attr:`report_` here (``.json``, ``.md`` or ``.html``).
            sep: delimiter of a text input and output; by default an output of the
                input's format keeps the input's delimiter (``;`` stays ``;``).
            query: SQL query for a database input.
            progress: show a progress bar while reading a large input.

        Returns:
            The released table, as written.

        Raises:
            UsageError: ``output`` is the input file.
            FormatError / InputError: an unknown output or report format, a missing
                folder, an unreadable input.
            PolicyError, KeyMissingError, PolicyNotMetError: as :meth:`fit_transform`.

        Example:
            >>> anonymizer.release("users.csv", "released.csv", report="report.html")  # doctest: +SKIP
        """
        from privdl import io
        from privdl.anonymize.spark_session import is_spark_frame
        from privdl.audit import operation

        if self.engine == "spark" and (isinstance(data, str | os.PathLike) or is_spark_frame(data)):
            # read and written by Spark: a folder of part files (pyspark is an extra)
            from privdl.anonymize.spark_io import release_spark

            return release_spark(self, data, output, report=report, sep=sep)
        source = data if isinstance(data, str | os.PathLike) else None
        if source is not None:
            io.check_distinct_paths(source, output)
        io.check_output(output)
        inputs = [os.fspath(source) if source is not None else data]
        with operation(self.audit_log, "anonymize", params=self.params_record(), inputs=inputs) as op:
            frame = data if source is None else io.read_table(source, sep=sep, query=query, progress=progress)
            if source is not None:
                io.require_rows(frame, source)
            released = self._run(frame)  # type: ignore[arg-type]
            out_sep = sep
            if (
                source is not None
                and out_sep is None
                and io.parse_source(output).fmt == io.parse_source(source).fmt
            ):
                out_sep = io.text_delimiter(source)
            # staged: table and report appear together, and only once the entry is written
            io.write_table(released, op.stage_table(output), sep=out_sep)
            if report is not None:
                self.report_.save(op.stage(report))
            self._record(op)
        return released

    def _record(self, op: Any, *, outputs: list[Any] | None = None) -> None:
        """What the entry of a run records, from :meth:`fit_transform` or :meth:`release`."""
        op.update(
            params={
                **self.params_record(),
                "achieved": self.report_.summary(),
                "manifest_sha256": RunManifest.from_dict(self.report_.manifest).sha256(),
            },
            outputs=outputs,
            subjects=self.subjects_,
        )

    def _check(self, frame: pd.DataFrame) -> None:
        policy = self.policy
        if self.engine not in ENGINES:
            raise UsageError(f"unknown engine {self.engine!r}; choose pandas or spark")
        if self.engine == "spark" and _is_spark(frame):
            return  # checked on Spark by spark_engine.prepare, without collecting it
        policy.validate(frame.columns)
        _require_scalar_qis(frame, policy.quasi_identifiers)
        if policy.needs_key and self.key is None:
            first = next(r.column for r in policy.identifiers if r.transform in KEYED)
            raise KeyMissingError(
                f"column {first!r} needs a key: pass key= (CLI: --key-env VAR or --key-file PATH)"
            )

    def _run(self, frame: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        policy = self.policy
        if self.engine == "spark" and _is_spark(frame):
            return self._run_spark(frame)
        self._check(frame)
        replaced: dict[str, pd.Series] = {}
        dropped = set(policy.drop)
        with progress.step("pseudonymizing identifiers", total=len(policy.identifiers)) as bar:
            for rule in policy.identifiers:
                result = apply_rule(frame, rule.column, rule.transform, rule.options, self.key)
                if result is None:
                    dropped.add(rule.column)
                else:
                    replaced[rule.column] = result
                bar.advance()
        out = pd.DataFrame(
            {c: replaced.get(c, frame[c]) for c in frame.columns if c not in dropped},
            index=frame.index,
        )
        subject = policy.subject_column
        self.subjects_ = (
            sorted(set(replaced[subject].dropna())) if subject is not None and subject in replaced else []
        )
        passthrough = policy.passthrough(frame.columns)
        suspicious = looks_like_identifiers(frame, passthrough)
        warnings = [
            f"column {column!r} looks like {kind} but has no role;"
            f" add --id {column}, --drop {column} or --keep {column}"
            for column, kind in suspicious.items()
        ]
        generalization = None
        generalized_from = out
        if policy.quasi_identifiers:
            with progress.step(f"partitioning on {len(policy.quasi_identifiers)} quasi-identifiers"):
                generalization = self._generalize(out)
            out = generalization.released
        with progress.step("measuring the released table's risk"):
            linkable = self._linkable(out, passthrough)
            report = self._build_report(
                frame, out, generalization, passthrough, warnings, linkable, generalized_from
            )
        # the run's manifest: configuration (key_id only), fingerprints of the input and
        # of the released table, never a value
        manifest = RunManifest.collect(
            config=self.params_record(),
            data={"input": fingerprint(frame)},
            model_digests={"released table": fingerprint(out).get("sha256", "")},
        )
        self.report_ = dataclasses.replace(report, manifest=manifest.to_dict())
        self.warnings_ = list(self.report_.warnings)
        self.released_columns_ = [str(c) for c in out.columns]
        return out

    def _run_spark(self, frame: Any) -> Any:
        """Spark in, lazy Spark out; the report from Spark aggregations on the release."""
        from privdl.anonymize.spark_engine import prepare, report_for, subjects_of, with_manifest

        run = prepare(frame, self.policy, self.key)
        report = report_for(run, run.released, policy=self.policy, key=self.key, linkable=self._linkable)
        shape = {"kind": "spark table", "rows": run.rows, "columns": len(frame.columns)}
        self.report_ = with_manifest(report, self.params_record(), source=shape, released_sha256=None)
        self.warnings_ = list(self.report_.warnings)
        self.subjects_ = subjects_of(run.released, self.policy)
        self.released_columns_ = list(run.released.columns)
        return run.released

    def _linkable(self, released: pd.DataFrame, passthrough: list[str], detect: Any = None) -> dict[str, str]:
        """Released columns outside the quasi-identifiers that an attacker can link on.

        Passed-through columns are linkable when they hold dates, free text or
        high-cardinality values; masked identifiers when what the mask leaves shows
        the same; ``shift_dates`` columns always (a date moved by at most ``max_days``
        is still near-exact). ``keep`` columns are the user's assertion and are not
        inspected; pseudonymized and encrypted tokens are join keys, not background
        knowledge (the report says so), and are not added either.
        """
        policy = self.policy
        qis = set(policy.quasi_identifiers)
        detect = detect or linkable_columns  # the Spark engine passes its own detector
        found = detect(released, [c for c in passthrough if c in released.columns])
        for rule in policy.identifiers:
            if rule.column in qis or rule.column not in released.columns:
                continue
            if rule.transform == "shift_dates":
                days = int(rule.options.get("max_days", 30))
                found[rule.column] = (
                    f"dates shifted by at most {days} days (shift_dates is not generalization:"
                    " the shifted date is still near-exact)"
                )
            elif rule.transform == "mask":
                masked = detect(released, [rule.column])
                if rule.column in masked:
                    found[rule.column] = f"masked values that still show {masked[rule.column]}"
        return {c: found[c] for c in released.columns if c in found}

    def _generalize(self, frame: pd.DataFrame) -> Any:
        if self.engine == "spark":
            # pyspark is an extra: without it this raises the error naming its pip install
            from privdl.anonymize.spark import generalize_spark

            return generalize_spark(frame, self.policy)
        from privdl.anonymize.generalize import generalize

        return generalize(frame, self.policy)

    def _build_report(
        self,
        original: pd.DataFrame,
        released: pd.DataFrame,
        generalization: Any,
        passthrough: list[str],
        warnings: list[str],
        linkable: dict[str, str],
        generalized_from: pd.DataFrame,
    ) -> AnonymizationReport:
        from privdl.anonymize.report import AnonymizationReport

        return AnonymizationReport.build(
            policy=self.policy,
            original=original,
            released=released,
            generalization=generalization,
            key_id=self.key.key_id if self.key is not None else None,
            identifier_columns={r.column: r.transform for r in self.policy.identifiers},
            passthrough=passthrough,
            warnings=warnings,
            linkable=linkable,
            generalized_from=generalized_from,
        )


def _is_spark(frame: Any) -> bool:
    from privdl.anonymize.spark_session import is_spark_frame

    return is_spark_frame(frame)


def _require_scalar_qis(frame: pd.DataFrame, columns: Any) -> None:
    """Refuse a quasi-identifier holding lists, objects or arrays: generalization needs scalars.

    (Risk is still measured on such columns, grouping on their text; generalizing them
    would have no meaning, so an anonymization refuses them, naming the column only.)
    """
    from collections.abc import Hashable

    for column in columns:
        series = frame[column]
        if series.dtype != object:
            continue
        if any(not isinstance(v, Hashable) or isinstance(v, tuple | frozenset) for v in series):
            raise InputError(f"column {column!r} holds lists/objects: a quasi-identifier needs scalar values")
