"""The anonymization report: what was done to each column, and what it achieved.

Every privacy figure is recomputed from the *released* table (never copied from what
the algorithm aimed for) and set beside the same figure on the input, with the
information lost per column. The report names the key only by its ``key_id`` and
never contains a data value from an identifier column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privdl.anonymize.metrics import information_loss, measure

if TYPE_CHECKING:
    import os

    import pandas as pd

    from privdl.anonymize.engine import Generalization

__all__ = ["RECITAL_26", "AnonymizationReport"]

RECITAL_26 = (
    "This table is pseudonymized and/or generalized, not anonymous: under GDPR Recital 26 "
    "it remains personal data while anyone can reasonably re-identify a person in it, "
    "for example by linking it with other data. Keep it under the same protection as "
    "the source unless a risk assessment concludes otherwise."
)
_NCP_DEFINITION = (
    "Information loss is the normalized certainty penalty (NCP): a numeric value "
    "released as the range lo-hi costs (hi - lo) / (max - min) of the column; a "
    "hierarchy node costs (leaves under it - 1) / (all leaves - 1); '*' costs 1. The "
    "figure is the mean over released records and quasi-identifiers (0 = raw data, "
    "1 = every value '*'). Suppressed records are counted separately."
)


def _policy_params(policy: Any) -> dict[str, Any]:
    if hasattr(policy, "get_params"):
        return dict(policy.get_params())
    return {
        name: getattr(policy, name)
        for name in (
            "quasi_identifiers",
            "sensitive",
            "k",
            "l",
            "l_kind",
            "t",
            "max_suppression",
            "algorithm",
        )
        if hasattr(policy, name)
    }


def _jsonable(value: Any) -> Any:
    return json.loads(
        json.dumps(
            value,
            default=lambda o: (
                o.item() if hasattr(o, "item") else list(o) if isinstance(o, tuple | set) else str(o)
            ),
        )
    )


@dataclass(frozen=True)
class AnonymizationReport:
    """Facts about one anonymization run (a frozen value; build with :meth:`build`).

    Attributes:
        policy: the policy's parameters (no key material).
        key_id: public fingerprint of the key used, or None.
        algorithm: ``"mondrian"``, ``"global"`` or ``"none"`` (identifier-only run).
        rows_in / rows_out / suppressed: record counts.
        quasi_identifiers / sensitive: the columns in those roles.
        identifier_columns: identifier column -> transform applied.
        passthrough: columns released unchanged without a role (review them).
        before / after: :class:`~privdl.anonymize.metrics.TableMetrics` as dicts, on
            the input and on the released table (None without quasi-identifiers).
        information_loss: ``{"ncp", "per_column", "ncp_with_suppressed"}`` or None.
        algorithm_info: algorithm facts (classes, lattice node, hierarchies...).
        policy_met: per target (``k``, ``l``, ``t``) whether the released table meets it.
        warnings: lines a reviewer must read.
        notice: the GDPR Recital 26 reminder.
    """

    policy: dict[str, Any]
    key_id: str | None
    algorithm: str
    rows_in: int
    rows_out: int
    suppressed: int
    quasi_identifiers: list[str]
    sensitive: list[str]
    identifier_columns: dict[str, str]
    passthrough: list[str]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    information_loss: dict[str, Any] | None
    algorithm_info: dict[str, Any] = field(default_factory=dict)
    policy_met: dict[str, bool] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notice: str = RECITAL_26

    @classmethod
    def build(
        cls,
        *,
        policy: Any,
        original: pd.DataFrame,
        released: pd.DataFrame,
        generalization: Generalization | None,
        key_id: str | None,
        identifier_columns: Mapping[str, str],
        passthrough: Sequence[str],
        warnings: Sequence[str],
    ) -> AnonymizationReport:
        """Measure the input and the released table and assemble the report.

        Args:
            policy: the :class:`~privdl.anonymize.policy.Policy` applied.
            original: the input table (before any transform).
            released: the released table.
            generalization: what :func:`~privdl.anonymize.engine.generalize` returned,
                or None when the policy has no quasi-identifiers.
            key_id: the key's public fingerprint, or None.
            identifier_columns: identifier column -> transform.
            passthrough: columns released unchanged without a role.
            warnings: lines for the reviewer.
        """
        qis = list(getattr(policy, "quasi_identifiers", ()) or ())
        sensitive = [c for c in (getattr(policy, "sensitive", ()) or ()) if c in released]
        k = getattr(policy, "k", None)
        l_target = getattr(policy, "l", None)
        l_kind = getattr(policy, "l_kind", "distinct") or "distinct"
        t_target = getattr(policy, "t", None)
        suppressed = generalization.suppressed if generalization is not None else 0
        before = after = loss = None
        met: dict[str, bool] = {}
        info: dict[str, Any] = {}
        if qis and generalization is not None:
            from privdl.anonymize.engine import encode_for

            ordered = {c: _is_numeric(original[c]) for c in sensitive}
            before_m = measure(
                original, quasi_identifiers=qis, sensitive=sensitive, k_target=k, ordered=ordered
            )
            after_m = measure(
                released,
                quasi_identifiers=qis,
                sensitive=sensitive,
                k_target=k,
                suppressed=suppressed,
                ordered=ordered,
            )
            encoded, _ = encode_for(original, policy, algorithm=generalization.algorithm)
            loss = information_loss(released, encoded, suppressed=suppressed)
            before, after = before_m.to_json(), after_m.to_json()
            if k is not None:
                met["k"] = after_m.k >= k
            if l_target is not None:
                achieved = after_m.l_entropy if l_kind == "entropy" else after_m.l_distinct
                met["l"] = all(v >= l_target - 1e-9 for v in achieved.values())
            if t_target is not None:
                met["t"] = all(v <= t_target + 1e-9 for v in after_m.t.values())
            info = _jsonable(generalization.info)
        return cls(
            policy=_jsonable(_policy_params(policy)),
            key_id=key_id,
            algorithm=generalization.algorithm if generalization is not None else "none",
            rows_in=len(original),
            rows_out=len(released),
            suppressed=suppressed,
            quasi_identifiers=qis,
            sensitive=list(getattr(policy, "sensitive", ()) or ()),
            identifier_columns=dict(identifier_columns),
            passthrough=list(passthrough),
            before=before,
            after=after,
            information_loss=loss,
            algorithm_info=info,
            policy_met=met,
            warnings=list(warnings),
        )

    # ------------------------------------------------------------------ values
    def summary(self) -> dict[str, Any]:
        """The few figures that go into an audit record."""
        out: dict[str, Any] = {
            "algorithm": self.algorithm,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "suppressed": self.suppressed,
        }
        if self.after is not None:
            out["k"] = self.after["k"]
            if self.after["l_distinct"]:
                out["l_distinct"] = min(self.after["l_distinct"].values())
                out["l_entropy"] = min(self.after["l_entropy"].values())
                out["t"] = max(self.after["t"].values())
            out["prosecutor_max"] = self.after["prosecutor_max"]
        if self.information_loss is not None:
            out["ncp"] = self.information_loss["ncp"]
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (``from_json`` reads it back)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AnonymizationReport:
        """Rebuild a report from :meth:`to_json` output."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    # ------------------------------------------------------------------ rendering
    def to_document(self, *, figures: bool = True) -> Any:
        """The report as a :class:`privdl.render.Document`."""
        from privdl import render

        summary = [
            ("algorithm", self.algorithm),
            ("key_id", self.key_id or "none (no keyed transform)"),
            ("rows in", self.rows_in),
            ("rows released", self.rows_out),
            ("rows suppressed", self.suppressed),
        ]
        targets = self.policy
        if self.after is not None:
            summary.append(("k (target / achieved)", f"{targets.get('k')} / {self.after['k']}"))
            for col in self.after["l_distinct"]:
                summary.append(
                    (
                        f"l on {col} (distinct / entropy)",
                        f"{self.after['l_distinct'][col]} / {self.after['l_entropy'][col]:.3f}",
                    )
                )
                summary.append((f"t on {col} (EMD)", f"{self.after['t'][col]:.4f}"))
        if self.information_loss is not None:
            summary.append(("information loss (NCP)", f"{self.information_loss['ncp']:.2%}"))
        for name, ok in self.policy_met.items():
            summary.append((f"target {name} met", "yes" if ok else "NO"))
        head: list[Any] = [render.KeyValues(summary), render.Note(self.notice, "warning")]
        head += [render.Note(w, "warning") for w in self.warnings]
        sections = [render.Section("Summary", head)]
        sections.append(
            render.Section("Columns", [render.Table(["column", "role", "treatment"], self._column_rows())])
        )
        if self.before is not None and self.after is not None:
            sections.append(self._risk_section(render, figures))
        if self.information_loss is not None:
            sections.append(self._loss_section(render, figures))
        if self.algorithm_info:
            sections.append(
                render.Section(
                    "Algorithm",
                    [render.KeyValues([(k, _text(v)) for k, v in sorted(self.algorithm_info.items())])],
                )
            )
        sections.append(
            render.Section(
                "Policy", [render.KeyValues([(k, _text(v)) for k, v in sorted(self.policy.items())])]
            )
        )
        subtitle = f"{self.rows_in} rows in, {self.rows_out} released ({self.algorithm})"
        return render.Document("Anonymization report", sections, subtitle=subtitle)

    def _column_rows(self) -> list[list[str]]:
        rows = [[c, "identifier", t] for c, t in self.identifier_columns.items()]
        specs = self.algorithm_info.get("hierarchies", {})
        per_col = (self.information_loss or {}).get("per_column", {})
        for c in self.quasi_identifiers:
            ncp = per_col.get(c)
            loss = f", NCP {ncp:.2%}" if ncp is not None else ""
            rows.append([c, "quasi-identifier", f"generalized ({specs.get(c, 'default')}){loss}"])
        rows += [[c, "sensitive", "kept; checked for l / t"] for c in self.sensitive]
        rows += [[c, "no role", "passed through unchanged: review"] for c in self.passthrough]
        return rows

    def _risk_section(self, render: Any, figures: bool) -> Any:
        assert self.before is not None and self.after is not None
        b, a = self.before, self.after
        names = [
            ("records", "rows", "{}"),
            ("equivalence classes", "classes", "{}"),
            ("k (smallest class)", "k", "{}"),
            ("prosecutor risk, max", "prosecutor_max", "{:.4f}"),
            ("prosecutor risk, average", "prosecutor_avg", "{:.4f}"),
            ("journalist risk, max", "journalist_max", "{:.4f}"),
            ("marketer risk", "marketer", "{:.4f}"),
            ("unique records", "unique_share", "{:.2%}"),
            ("records with risk > 20%", "high_risk_share", "{:.2%}"),
            ("discernibility", "discernibility", "{:.4g}"),
            ("average class size / k", "avg_class_size", "{:.3f}"),
        ]
        rows = [[label, fmt.format(b[key]), fmt.format(a[key])] for label, key, fmt in names]
        for col in a["l_distinct"]:
            rows.append([f"l distinct ({col})", b["l_distinct"][col], a["l_distinct"][col]])
            rows.append([f"l entropy ({col})", f"{b['l_entropy'][col]:.3f}", f"{a['l_entropy'][col]:.3f}"])
            rows.append([f"t, EMD ({col})", f"{b['t'][col]:.4f}", f"{a['t'][col]:.4f}"])
        blocks: list[Any] = [
            render.Paragraph(
                "Risk models with the table itself as the population: prosecutor risk of "
                "a record is 1 / its class size; journalist max equals prosecutor max and "
                "marketer risk equals the average prosecutor risk."
            ),
            render.Table(["measure", "before", "after"], rows),
            render.Table(
                ["class size", "classes before", "records before", "classes after", "records after"],
                [
                    [bb[0], bb[1], bb[2], aa[1], aa[2]]
                    for bb, aa in zip(b["class_sizes"], a["class_sizes"], strict=True)
                ],
            ),
        ]
        if figures:
            blocks.append(render.Figure(_class_size_png(b, a), "Equivalence class sizes"))
        return render.Section("Re-identification risk", blocks)

    def _loss_section(self, render: Any, figures: bool) -> Any:
        loss = self.information_loss or {}
        per_col = loss.get("per_column", {})
        blocks: list[Any] = [
            render.Paragraph(_NCP_DEFINITION),
            render.Table(
                ["column", "NCP"],
                [[c, f"{v:.2%}"] for c, v in per_col.items()]
                + [
                    ["all quasi-identifiers", f"{loss.get('ncp', 0.0):.2%}"],
                    ["counting suppressed rows as lost", f"{loss.get('ncp_with_suppressed', 0.0):.2%}"],
                ],
            ),
        ]
        if figures and per_col:
            blocks.append(render.Figure(_loss_png(per_col), "Information loss per column"))
        return render.Section("Information loss", blocks)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as ``.json``, ``.md`` or self-contained ``.html`` (by extension).

        Raises:
            FormatError: another extension.
        """
        from privdl import render

        suffix = Path(path).suffix.lower()
        doc = self.to_document(figures=suffix in (".html", ".htm"))
        return render.save(doc, path, self.to_json())


def _is_numeric(series: pd.Series) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype))


def _text(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "—" if value is None else str(value)


def _class_size_png(before: Mapping[str, Any], after: Mapping[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    from privdl.render import figure_png

    labels = [row[0] for row in before["class_sizes"]]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(x - 0.2, [row[2] for row in before["class_sizes"]], 0.4, label="before")
    ax.bar(x + 0.2, [row[2] for row in after["class_sizes"]], 0.4, label="after")
    ax.set_xticks(x, labels)
    ax.set_xlabel("equivalence class size")
    ax.set_ylabel("records")
    ax.legend()
    return figure_png(fig)


def _loss_png(per_column: Mapping[str, float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from privdl.render import figure_png

    cols = list(per_column)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(cols) + 1))
    ax.barh(cols, [100 * per_column[c] for c in cols], color="#bf8700")
    ax.set_xlabel("information loss, NCP (%)")
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    return figure_png(fig)
