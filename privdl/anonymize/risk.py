"""Re-identification risk of a table, before or after anonymization.

:func:`assess_risk` groups the records by their quasi-identifiers once and reports
how exposed they are: prosecutor, journalist and marketer risk, the share of unique
records, k, l (distinct and entropy) and t per sensitive column, and the
distribution of equivalence-class sizes.

Example:
    >>> report = assess_risk(frame, quasi_identifiers=["age", "zip"])  # doctest: +SKIP
    >>> report.prosecutor_max, report.unique_share  # doctest: +SKIP
    (1.0, 0.465)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privdl.anonymize.metrics import TableMetrics, measure
from privdl.errors import InputError, RiskExceededError

if TYPE_CHECKING:
    import os

    import pandas as pd

__all__ = ["RiskReport", "assess_risk"]


@dataclass(frozen=True)
class RiskReport(TableMetrics):
    """Re-identification risk of one table (all :class:`TableMetrics` fields, plus context).

    Attributes:
        quasi_identifiers: the columns an attacker is assumed to know.
        sensitive: the columns checked for l-diversity and t-closeness.
        source: where the table came from (a path), if known.
    """

    quasi_identifiers: list[str] = field(default_factory=list)
    sensitive: list[str] = field(default_factory=list)
    source: str | None = None

    # to_dict / from_dict / to_json / from_json: privdl.serialize.JSONSerializable
    _json_kind = "risk report"
    _json_indent = 2
    _json_allow_nan = False

    def check(self, *, max_risk: float) -> None:
        """Raise :class:`~privdl.errors.RiskExceededError` when prosecutor max > ``max_risk``."""
        if self.prosecutor_max > max_risk:
            unique = round(self.unique_share * self.rows)
            raise RiskExceededError(
                f"{self.source or 'table'}: re-identification risk {self.prosecutor_max:.4f} "
                f"exceeds the limit {max_risk:g} (k={self.k}; {unique} of {self.rows} records "
                "are unique on the quasi-identifiers)"
            )

    def rows_for_display(self) -> list[tuple[str, str]]:
        """``(measure, value)`` pairs, as the CLI and the reports show them."""
        rows = [
            ("records", str(self.rows)),
            ("equivalence classes", str(self.classes)),
            ("k (smallest class)", str(self.k)),
            ("prosecutor risk, max", f"{self.prosecutor_max:.4f}"),
            ("prosecutor risk, average", f"{self.prosecutor_avg:.4f}"),
            ("journalist risk, max", f"{self.journalist_max:.4f}"),
            ("marketer risk", f"{self.marketer:.4f}"),
            ("unique records", f"{self.unique_share:.2%}"),
            ("records with risk > 20%", f"{self.high_risk_share:.2%}"),
        ]
        for col in self.sensitive:
            rows += [
                (f"l distinct ({col})", str(self.l_distinct[col])),
                (f"l entropy ({col})", f"{self.l_entropy[col]:.3f}"),
                (f"t, EMD ({col})", f"{self.t[col]:.4f}"),
            ]
        return rows

    def to_document(self) -> Any:
        """The report as a :class:`privdl.render.Document`."""
        from privdl import render

        blocks: list[Any] = [
            render.KeyValues(
                [
                    ("source", self.source or "—"),
                    ("quasi-identifiers", ", ".join(self.quasi_identifiers)),
                    ("sensitive", ", ".join(self.sensitive) or "—"),
                ]
            ),
            render.Table(["measure", "value"], [list(r) for r in self.rows_for_display()]),
            render.Table(["class size", "classes", "records"], self.class_sizes),
            render.Paragraph(
                "Risk models with the table itself as the population: prosecutor risk of a "
                "record is 1 / its class size; journalist max equals prosecutor max and "
                "marketer risk equals the average prosecutor risk."
            ),
        ]
        return render.Document("Re-identification risk", [render.Section("Risk", blocks)])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as ``.json``, ``.md`` or ``.html`` (by extension)."""
        from privdl import render

        return render.save(self.to_document(), path, self.to_dict())


def assess_risk(
    frame: pd.DataFrame,
    *,
    quasi_identifiers: Sequence[str],
    sensitive: Sequence[str] = (),
    hierarchies: Mapping[str, str] | None = None,
    source: str | None = None,
) -> RiskReport:
    """Measure how exposed the records of ``frame`` are on its quasi-identifiers.

    Args:
        frame: the table, raw or released.
        quasi_identifiers: columns an attacker may know (at least one).
        sensitive: columns checked for l-diversity (distinct, entropy) and t-closeness.
        hierarchies: optional column -> spec; a sensitive column with an ``interval``
            spec uses the ordered EMD for t even when stored as text (numeric dtypes
            always do).
        source: a label for the table (a path), kept in the report.

    Raises:
        InputError: no quasi-identifier, or a column not in the table.
    """
    qis = list(quasi_identifiers)
    sens = list(sensitive)
    if not qis:
        raise InputError("give at least one quasi-identifier column")
    absent = [c for c in [*qis, *sens] if c not in frame.columns]
    if absent:
        where = f" of {source}" if source else ""
        raise InputError(f"column(s) {absent} are not in the table{where}")
    specs = dict(hierarchies or {})
    ordered = {c: True for c in sens if str(specs.get(c, "")).startswith("interval")}
    metrics = measure(frame, quasi_identifiers=qis, sensitive=sens, ordered=ordered)
    return RiskReport(
        **{f.name: getattr(metrics, f.name) for f in fields(TableMetrics)},
        quasi_identifiers=qis,
        sensitive=sens,
        source=source,
    )
