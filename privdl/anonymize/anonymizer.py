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

from typing import TYPE_CHECKING, Any

from privdl.anonymize.detect import linkable_columns, looks_like_identifiers
from privdl.anonymize.policy import Policy
from privdl.anonymize.pseudonymize import KEYED, apply_rule
from privdl.errors import KeyMissingError, PolicyError, UsageError
from privdl.keys import Secret

if TYPE_CHECKING:
    import pandas as pd

    from privdl.anonymize.report import AnonymizationReport

__all__ = ["ENGINES", "Anonymizer"]

ENGINES = ("pandas", "spark")


class Anonymizer:
    """Release a copy of a table under a policy (scikit-learn style transform).

    Args:
        policy: the column roles and targets.
        key: the master key for keyed transforms (pseudonymize, encrypt, shift_dates);
            only its ``key_id`` is ever recorded.
        engine: ``"pandas"`` (default) or ``"spark"`` for the generalization step.
        audit_log: an :class:`~privdl.audit.log.AuditLog` (or path) that receives one
            entry per :meth:`fit_transform`.

    Attributes:
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

    def get_params(self) -> dict[str, Any]:
        """What goes into audit records: the policy, the engine and the key's id only."""
        return {
            "policy": self.policy.get_params(),
            "engine": self.engine,
            "key_id": self.key.key_id if self.key is not None else None,
        }

    def fit_transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Return the released table; ``frame`` is never modified.

        Raises:
            PolicyError: a column named in the policy is missing, or a hierarchy problem.
            KeyMissingError: a keyed transform but no key.
            PolicyNotMetError: k / l / t cannot be met within ``max_suppression``.
        """
        if self.audit_log is None:
            return self._run(frame)
        from privdl.audit import operation

        params = self.get_params()
        # DataFrames are fingerprinted in memory (SHA-256 of the values, rows, columns)
        with operation(self.audit_log, "anonymize", params=params, inputs=[frame]) as op:
            released = self._run(frame)
            op.update(
                params={**params, "achieved": self.report_.summary()},
                outputs=[released],
                subjects=self.subjects_,
            )
        return released

    def _run(self, frame: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        policy = self.policy
        if self.engine not in ENGINES:
            raise UsageError(f"unknown engine {self.engine!r}; choose pandas or spark")
        policy.validate(frame.columns)
        if policy.needs_key and self.key is None:
            first = next(r.column for r in policy.identifiers if r.transform in KEYED)
            raise KeyMissingError(
                f"column {first!r} needs a key: pass key= (CLI: --key-env VAR or --key-file PATH)"
            )
        replaced: dict[str, pd.Series] = {}
        dropped = set(policy.drop)
        for rule in policy.identifiers:
            result = apply_rule(frame, rule.column, rule.transform, rule.options, self.key)
            if result is None:
                dropped.add(rule.column)
            else:
                replaced[rule.column] = result
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
            generalization = self._generalize(out)
            out = generalization.released
        linkable = self._linkable(out, passthrough)
        self.report_ = self._build_report(
            frame, out, generalization, passthrough, warnings, linkable, generalized_from
        )
        self.warnings_ = list(self.report_.warnings)
        return out

    def _linkable(self, released: pd.DataFrame, passthrough: list[str]) -> dict[str, str]:
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
        found = linkable_columns(released, [c for c in passthrough if c in released.columns])
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
                masked = linkable_columns(released, [rule.column])
                if rule.column in masked:
                    found[rule.column] = f"masked values that still show {masked[rule.column]}"
        return {c: found[c] for c in released.columns if c in found}

    def _generalize(self, frame: pd.DataFrame) -> Any:
        if self.engine == "spark":
            try:
                from privdl.anonymize.spark import generalize_spark
            except ImportError:
                raise UsageError(
                    "the spark engine is not available in this build; use --engine pandas"
                ) from None
            return generalize_spark(frame, self.policy)
        try:
            from privdl.anonymize.engine import generalize
        except ImportError:
            raise PolicyError("k-anonymity (quasi-identifiers, -k) is not available in this build") from None
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
