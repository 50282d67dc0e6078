"""The anonymization report: what was done to each column, and what it achieved.

Every privacy figure is recomputed from the *released* table (never copied from what
the algorithm aimed for) and set beside the same figure on the input, with the
information lost per column. The report names the key only by its ``key_id`` and
never contains a data value from an identifier column.

Released columns outside the quasi-identifiers that an attacker can link on (dates,
free text, high-cardinality columns, date-shifted and masked identifiers; see
:mod:`privdl.anonymize.detect`) are measured too: the report computes k, unique
records and prosecutor risk with them added to the quasi-identifiers, and its headline
figures (:meth:`AnonymizationReport.summary`, the document's summary) are the worse of
the two measures. A shifted date is measured as an exact quasi-identifier: that is
the risk for anyone who holds the shifted value (every table shifted with the same key
carries the same per-person shift), and an upper bound for an attacker who knows only
the true date and must search the ``2 * max_days`` window around it. It is not a loose
one: on ``examples/data/users.csv`` the true birth date, sex and city still single out
more than half of the people through a 30-day shift (``tests/anonymize/test_linkable.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privdl.anonymize.metrics import TableMetrics, information_loss, measure
from privdl.serialize import JSONSerializable

if TYPE_CHECKING:
    import os

    import pandas as pd

    from privdl.anonymize.generalize import Generalization

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
class AnonymizationReport(JSONSerializable):
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
        policy_met: per target (``k``, ``l``, ``t``) whether the released table meets it,
            counting the linkable columns as quasi-identifiers.
        warnings: lines a reviewer must read.
        notice: the GDPR Recital 26 reminder.
        linkable: released column -> why an attacker can link on it (not a
            quasi-identifier, so not generalized).
        linkable_risk: :class:`~privdl.anonymize.metrics.TableMetrics` as a dict,
            measured on the released table with the linkable columns added to the
            quasi-identifiers (None when no column is linkable).
        released_columns: the released table's columns, in its order.
        dropped_columns: the input's columns that are not in the released table.
        manifest: the run's RunManifest (``privdl.manifest``) as a dict: the policy and
            key_id, fingerprints of the input and of the released table.
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
    linkable: dict[str, str] = field(default_factory=dict)
    linkable_risk: dict[str, Any] | None = None
    released_columns: list[str] = field(default_factory=list)
    dropped_columns: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    # to_dict / from_dict / to_json / from_json: privdl.serialize.JSONSerializable
    _json_kind = "anonymization report"
    _json_indent = 2
    _json_allow_nan = False

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
        linkable: Mapping[str, str] | None = None,
        generalized_from: pd.DataFrame | None = None,
    ) -> AnonymizationReport:
        """Measure the input and the released table and assemble the report.

        Args:
            policy: the :class:`~privdl.anonymize.policy.Policy` applied.
            original: the input table (before any transform).
            released: the released table.
            generalization: what :func:`~privdl.anonymize.generalize.generalize` returned,
                or None when the policy has no quasi-identifiers.
            key_id: the key's public fingerprint, or None.
            identifier_columns: identifier column -> transform.
            passthrough: columns released unchanged without a role.
            warnings: lines for the reviewer.
            linkable: released column -> why an attacker can link on it; measured with
                the quasi-identifiers and named in a warning each.
            generalized_from: the table the algorithm generalized (identifier
                transforms applied, e.g. dates shifted); information loss is measured
                against it. Defaults to ``original``.
        """
        qis = list(getattr(policy, "quasi_identifiers", ()) or ())
        sensitive = [c for c in (getattr(policy, "sensitive", ()) or ()) if c in released]
        k = getattr(policy, "k", None)
        suppressed = generalization.suppressed if generalization is not None else 0
        before_m = after_m = linked_m = loss = None
        ordered = {c: _is_numeric(original[c]) for c in sensitive}
        linkable = {c: why for c, why in (linkable or {}).items() if c in released.columns and c not in qis}
        if linkable:
            linked_m = measure(
                released,
                quasi_identifiers=[*qis, *linkable],
                sensitive=sensitive,
                k_target=k,
                suppressed=suppressed,
                ordered=ordered,
            )
        if qis and generalization is not None:
            from privdl.anonymize.generalize import encode_for

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
            source = original if generalized_from is None else generalized_from
            encoded, _ = encode_for(source, policy, algorithm=generalization.algorithm)
            loss = information_loss(released, encoded, suppressed=suppressed)
        return cls.from_measures(
            policy=policy,
            rows_in=len(original),
            rows_out=len(released),
            generalization=generalization,
            key_id=key_id,
            identifier_columns=identifier_columns,
            passthrough=passthrough,
            warnings=warnings,
            linkable=linkable,
            before=before_m,
            after=after_m,
            linked=linked_m,
            loss=loss,
            released_columns=[str(c) for c in released.columns],
            dropped_columns=[str(c) for c in original.columns if c not in released.columns],
        )

    @classmethod
    def from_measures(
        cls,
        *,
        policy: Any,
        rows_in: int,
        rows_out: int,
        generalization: Any,
        key_id: str | None,
        identifier_columns: Mapping[str, str],
        passthrough: Sequence[str],
        warnings: Sequence[str],
        linkable: Mapping[str, str],
        before: TableMetrics | None,
        after: TableMetrics | None,
        linked: TableMetrics | None,
        loss: dict[str, Any] | None,
        released_columns: Sequence[str] = (),
        dropped_columns: Sequence[str] = (),
    ) -> AnonymizationReport:
        """Assemble the report from figures measured on the input and the released table
        (by :meth:`build` with pandas, or by Spark aggregations); judges the targets.

        ``generalization`` needs ``algorithm``, ``suppressed`` and ``info`` (None: no
        quasi-identifiers); ``linked`` is measured with the ``linkable`` columns added.
        """
        qis = list(getattr(policy, "quasi_identifiers", ()) or ())
        k = getattr(policy, "k", None)
        l_target = getattr(policy, "l", None)
        l_kind = getattr(policy, "l_kind", "distinct") or "distinct"
        t_target = getattr(policy, "t", None)
        suppressed = generalization.suppressed if generalization is not None else 0
        met: dict[str, bool] = {}
        info: dict[str, Any] = {}
        linked_d = asdict(linked) if linked is not None else None
        before_d = after_d = None
        if after is not None and before is not None and generalization is not None:
            before_d, after_d = asdict(before), asdict(after)
            # targets are judged on the honest measure: linkable columns count as QIs
            judged = [after] if linked is None else [after, linked]
            if k is not None:
                met["k"] = all(m.k >= k for m in judged)
            if l_target is not None:
                met["l"] = all(
                    v >= l_target - 1e-9
                    for m in judged
                    for v in (m.l_entropy if l_kind == "entropy" else m.l_distinct).values()
                )
            if t_target is not None:
                met["t"] = all(v <= t_target + 1e-9 for m in judged for v in m.t.values())
            info = _jsonable(generalization.info)
        return cls(
            policy=_jsonable(_policy_params(policy)),
            key_id=key_id,
            algorithm=generalization.algorithm if generalization is not None else "none",
            rows_in=rows_in,
            rows_out=rows_out,
            suppressed=suppressed,
            quasi_identifiers=qis,
            sensitive=list(getattr(policy, "sensitive", ()) or ()),
            identifier_columns=dict(identifier_columns),
            passthrough=list(passthrough),
            before=before_d,
            after=after_d,
            information_loss=loss,
            algorithm_info=info,
            policy_met=met,
            warnings=[*warnings, *_linkable_warnings(linkable, linked_d, after_d)],
            linkable=dict(linkable),
            linkable_risk=linked_d,
            released_columns=list(released_columns),
            dropped_columns=list(dropped_columns),
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
        measured = [m for m in (self.after, self.linkable_risk) if m is not None]
        if measured:
            # the headline is the honest figure: the worse of the declared and linkable sets
            out["k"] = min(m["k"] for m in measured)
            if measured[0]["l_distinct"]:
                out["l_distinct"] = min(v for m in measured for v in m["l_distinct"].values())
                out["l_entropy"] = min(v for m in measured for v in m["l_entropy"].values())
                out["t"] = max(v for m in measured for v in m["t"].values())
            out["prosecutor_max"] = max(m["prosecutor_max"] for m in measured)
            out["unique_share"] = max(m["unique_share"] for m in measured)
        if self.linkable_risk is not None:
            out["linkable"] = list(self.linkable)
            if self.after is not None:
                out["k_declared"] = self.after["k"]
        if self.information_loss is not None:
            out["ncp"] = self.information_loss["ncp"]
        return out

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
        # the headline figures are the honest ones: with the linkable columns when any
        head_m = self.linkable_risk if self.linkable_risk is not None else self.after
        if head_m is not None:
            counted = self.linkable_risk is not None
            with_linkable = " (linkable columns counted)" if counted else ""
            if self.after is not None:
                label = (
                    "k (target / achieved, linkable columns counted)" if counted else "k (target / achieved)"
                )
                summary.append((label, f"{targets.get('k')} / {head_m['k']}"))
            else:
                summary.append(("k (no quasi-identifiers declared; linkable columns)", head_m["k"]))
            if self.linkable_risk is not None:
                if self.after is not None:
                    summary.append(("k on the declared quasi-identifiers alone", self.after["k"]))
                summary.append(("linkable columns (not generalized)", ", ".join(self.linkable)))
            summary.append(("prosecutor risk, max" + with_linkable, f"{head_m['prosecutor_max']:.4f}"))
            summary.append(("unique records" + with_linkable, f"{head_m['unique_share']:.2%}"))
            for col in head_m["l_distinct"]:
                summary.append(
                    (
                        f"l on {col} (distinct / entropy)",
                        f"{head_m['l_distinct'][col]} / {head_m['l_entropy'][col]:.3f}",
                    )
                )
                summary.append((f"t on {col} (EMD)", f"{head_m['t'][col]:.4f}"))
        if self.information_loss is not None:
            summary.append(("information loss (NCP)", f"{self.information_loss['ncp']:.2%}"))
        for name, ok in self.policy_met.items():
            summary.append((f"target {name} met", "yes" if ok else "NO"))
        head: list[Any] = [render.KeyValues(summary), render.Note(self.notice, "warning")]
        head += [render.Note(w, "warning") for w in self.warnings]
        sections = [render.Section("Summary", head)]
        sections.append(
            render.Section(
                "Columns",
                [
                    *self._released_paragraphs(render),
                    render.Table(["column", "role", "treatment", "in the release"], self._column_rows()),
                ],
            )
        )
        if self.before is not None and self.after is not None:
            sections.append(self._risk_section(render, figures))
        sections.append(self._linkable_section(render))
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
        from privdl.manifest import manifest_section

        sections.append(manifest_section(self.manifest))
        subtitle = f"{self.rows_in} rows in, {self.rows_out} released ({self.algorithm})"
        return render.Document("Anonymization report", sections, subtitle=subtitle)

    def _column_rows(self) -> list[list[str]]:
        """One row per input column: released (under which treatment) or dropped."""
        qis = set(self.quasi_identifiers)
        linked = "; linkable: counted in the risk"
        dropped = set(self.dropped_columns) | set(self.policy.get("drop") or ())
        dropped |= {c for c, t in self.identifier_columns.items() if t == "drop"}
        rows = [
            [c, "identifier", "removed" if c in dropped else t + (linked if c in self.linkable else "")]
            for c, t in self.identifier_columns.items()
            if c not in qis
        ]
        specs = self.algorithm_info.get("hierarchies", {})
        per_col = (self.information_loss or {}).get("per_column", {})
        for c in self.quasi_identifiers:
            ncp = per_col.get(c)
            loss = f", NCP {ncp:.2%}" if ncp is not None else ""
            treatment = f"generalized ({specs.get(c, 'default')}){loss}"
            if c in self.identifier_columns:
                rows.append(
                    [c, "identifier, quasi-identifier", f"{self.identifier_columns[c]}, then {treatment}"]
                )
            else:
                rows.append([c, "quasi-identifier", treatment])
        rows += [[c, "sensitive", "kept; checked for l / t"] for c in self.sensitive]
        rows += [
            [c, "keep", "released unchanged; the user asserts it is not linkable"]
            for c in self.policy.get("keep") or ()
        ]
        rows += [
            [c, "no role", "passed through unchanged" + (linked if c in self.linkable else ": review")]
            for c in self.passthrough
        ]
        named = {r[0] for r in rows}
        for c in [*(self.policy.get("drop") or ()), *self.dropped_columns]:
            if c not in named:
                named.add(c)
                rows.append([c, "drop", "removed"])
        released = set(self.released_columns)
        for row in rows:
            if self.released_columns:
                row.append("released" if row[0] in released else "dropped")
            else:  # a report saved before the released columns were recorded
                row.append("dropped" if row[0] in dropped else "released")
        return rows

    def _released_paragraphs(self, render: Any) -> list[Any]:
        """Every released and every dropped column, named, before the table."""
        if not self.released_columns and not self.dropped_columns:
            return []
        out = [
            render.Paragraph(
                f"Released ({len(self.released_columns)} columns): {', '.join(self.released_columns) or 'none'}."
            )
        ]
        if self.dropped_columns:
            out.append(
                render.Paragraph(
                    f"Dropped, not in the release ({len(self.dropped_columns)} columns): "
                    f"{', '.join(self.dropped_columns)}."
                )
            )
        return out

    def _linkable_section(self, render: Any) -> Any:
        blocks: list[Any] = [
            render.Paragraph(
                "Released columns that are not quasi-identifiers but that an attacker who knows "
                "a person (birth date, sign-up day, address...) can link on: dates and timestamps, "
                "free text, high-cardinality columns, and date-shifted or masked identifiers. "
                "The risk below adds them to the quasi-identifiers. A shifted date is measured "
                "as an exact value: exact for anyone holding the shifted value (tables shifted "
                "with the same key carry the same shift), an upper bound for an attacker who "
                "knows only the true date. shift_dates is not generalization: a date moved by at "
                "most 30 days still singles most people out."
            )
        ]
        if self.linkable:
            blocks.append(
                render.Table(["column", "why it is linkable"], [[c, w] for c, w in self.linkable.items()])
            )
        else:
            blocks.append(render.Paragraph("No linkable column was found outside the quasi-identifiers."))
        risk = self.linkable_risk
        if risk is not None:
            names = [
                ("records", "rows", "{}"),
                ("equivalence classes", "classes", "{}"),
                ("k (smallest class)", "k", "{}"),
                ("unique records", "unique_share", "{:.2%}"),
                ("prosecutor risk, max", "prosecutor_max", "{:.4f}"),
                ("prosecutor risk, average", "prosecutor_avg", "{:.4f}"),
                ("records with risk > 20%", "high_risk_share", "{:.2%}"),
            ]
            if self.after is not None:
                a = self.after
                rows = [[label, fmt.format(a[key]), fmt.format(risk[key])] for label, key, fmt in names]
                head = ["measure (released table)", "declared quasi-identifiers", "with linkable columns"]
            else:
                rows = [[label, fmt.format(risk[key])] for label, key, fmt in names]
                head = ["measure (released table)", "linkable columns"]
            blocks.append(render.Table(head, rows))
        notes = []
        keep = list(self.policy.get("keep") or ())
        if keep:
            notes.append(
                f"Not counted, on the user's assertion that they are not linkable (keep): {', '.join(keep)}."
            )
        tokens = [c for c, t in self.identifier_columns.items() if t in ("pseudonymize", "encrypt")]
        if tokens:
            notes.append(
                "Not counted: pseudonymized or encrypted identifiers ("
                + ", ".join(tokens)
                + "). Each token is unique per person, but it is a join key for whoever holds other "
                "tables with the same key, not a value an attacker knows from background knowledge; "
                "a table released with the same tokens elsewhere links on them exactly."
            )
        unflagged = [c for c in self.passthrough if c not in self.linkable]
        if unflagged:
            notes.append(
                "Passed through without a role and not found linkable by the detector (few "
                f"distinct values, no dates or text): {', '.join(unflagged)}. An attacker may still "
                "know them; give every column a role (strict policy) to decide it explicitly."
            )
        blocks += [render.Paragraph(n) for n in notes]
        return render.Section("Risk with linkable columns", blocks)

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
                "On the declared quasi-identifiers; the next section adds the linkable "
                "columns. Risk models with the table itself as the population: prosecutor risk of "
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
        return render.save(doc, path, self.to_dict())


def _hint(column: str, why: str) -> str:
    if why.startswith("masked"):
        return f"mask all of it (--id {column}:mask:keep_last=0) or drop it"
    if why.startswith("dates shifted"):
        return f"generalize the shifted dates (--qi {column} --hierarchy {column}=date) or drop it"
    if why in ("dates", "timestamps"):
        return f"generalize it (--qi {column} --hierarchy {column}=date), drop it,"
    return f"generalize it (--qi {column}), drop it,"


def _linkable_warnings(
    linkable: Mapping[str, str], linked: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> list[str]:
    """One line per linkable column, then the risk measured with all of them (no values)."""
    lines = []
    for column, why in linkable.items():
        hint = _hint(column, why)
        tail = "" if hint.endswith("drop it") else f" or assert it is not linkable (--keep {column})"
        lines.append(
            f"column {column!r} is released with {why} and is not a quasi-identifier: an attacker"
            f" can link on it; {hint}{tail}"
        )
    if linked is not None:
        names = ", ".join(repr(c) for c in linkable)
        declared = f" (declared quasi-identifiers alone: k={after['k']})" if after is not None else ""
        lines.append(
            f"re-identification risk with the linkable column(s) {names} counted as quasi-identifiers:"
            f" k={linked['k']}, {linked['unique_share']:.1%} of records unique, prosecutor risk"
            f" {linked['prosecutor_max']:.2f}{declared}"
        )
    return lines


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
