"""PrivacyReport: what a DP training run (or a dataset's whole budget) guarantees.

Modelled on TF Privacy's ``compute_dp_sgd_privacy_statement``: the privacy unit and
adjacency, the trust model, the accountant and its assumptions, what is and is not
covered, and epsilon at delta, followed by the ledger's view of the dataset, utility
against a non-private baseline, a plot of epsilon and the validation metric per epoch,
and an empirical membership-inference audit.

The ``coverage`` statement lists every item the report and the model folder release,
each marked DP-protected, public (not computed from the training records) or not
covered (computed from personal data without noise). Nothing computed from the
training records without noise is in a report as if covered: the exact training loss
is left out altogether (a trainer shows it live on its progress bar only).

Every epsilon in a report is recomputed here from the accountant history
(``(noise_multiplier, sample_rate, steps)`` segments) with
:func:`privdl.train.calibrate.epsilon_of`; figures a trainer or ledger reported are
only compared with it (a disagreement becomes a warning in the report).

Example:
    >>> report = trainer.report()                 # doctest: +SKIP
    >>> report.save("privacy.html")               # doctest: +SKIP
    >>> PrivacyReport.from_ledger(BudgetLedger("budget.db"), "adult").save("adult.md")
    ... # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from privdl.budget.accounting import epsilon_of, normalize_history
from privdl.budget.mia import MembershipAudit, dp_advantage_bound, loss_threshold_audit
from privdl.errors import InputError, UsageError

__all__ = ["PrivacyReport", "coverage_items", "group_privacy"]

# Trainer-reported and recomputed figures may differ by the accountants' own error
# margins (PRV: eps_error=0.01 absolute); more than this is reported as a disagreement.
_AGREE_RTOL = 0.01
_AGREE_ATOL = 0.011


def group_privacy(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """(epsilon, delta) for groups of ``k`` records from record-level (epsilon, delta)-DP.

    The standard group-privacy bound: ``(k epsilon, k e^{(k-1) epsilon} delta)``.
    """
    if k < 1:
        raise UsageError("max_records_per_user must be >= 1")
    if k == 1:
        return epsilon, delta
    exponent = (k - 1) * epsilon
    user_delta = math.inf if exponent > 700 else k * math.exp(exponent) * delta
    return k * epsilon, min(1.0, user_delta)


def _versions() -> dict[str, str]:
    from importlib import metadata

    import privdl

    out = {"privdl": privdl.__version__, "python": platform.python_version()}
    for name in ("opacus", "torch", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _hist_lists(history: Iterable[Sequence[Any]]) -> list[list[Any]]:
    return [[s, q, n] for s, q, n in normalize_history(history)]


def _prefix(history: Sequence[Sequence[Any]], steps: int) -> list[tuple[float, float, int]]:
    """The first ``steps`` steps of a history."""
    out: list[tuple[float, float, int]] = []
    left = steps
    for sigma, q, n in history:
        if left <= 0:
            break
        take = min(int(n), left)
        out.append((float(sigma), float(q), take))
        left -= take
    return out


def _status_dict(status: Any) -> dict[str, Any] | None:
    if status is None:
        return None
    if hasattr(status, "to_json"):
        return dict(json.loads(status.to_json()))
    if isinstance(status, Mapping):
        return dict(status)
    raise UsageError("ledger_before / ledger_after must be a BudgetStatus or a mapping")


@dataclass(frozen=True)
class PrivacyReport:
    """The privacy statement of one DP training run, or of a dataset's whole budget.

    Build one with :meth:`from_trainer` or :meth:`from_ledger`; serialize with
    :meth:`to_json`, load with :meth:`from_json`, write with :meth:`save`.

    Attributes:
        scope: ``"run"`` (one training run) or ``"dataset"`` (every run on a dataset).
        dataset_id: the ledger's dataset id, when known.
        accountant: ``"prv"`` or ``"rdp"``.
        delta: delta at which ``epsilon`` is stated.
        epsilon: recomputed from ``history``: the run's epsilon (scope run) or the
            composition of every run on the dataset (scope dataset).
        history: ``[noise_multiplier, sample_rate, steps]`` segments behind ``epsilon``.
        privacy_unit: ``unit`` ("record" or "user"), ``max_records_per_user`` and the
            user-level ``epsilon``/``delta`` from group privacy when it applies.
        training: hyperparameters that matter for privacy (sigma, C, q, steps, epochs,
            batch size, n, secure_mode, target epsilon, replaced modules).
        epochs: per epoch: ``epoch``, ``metric`` (validation, not covered by DP),
            ``epsilon`` (recomputed) and ``epsilon_reported`` (the trainer's figure). The
            exact training loss is never included: it is not DP.
        dataset: the ledger's dataset budget: ``total_epsilon``, ``delta``,
            ``spent_before``, ``spent_after`` (composed, recomputed), ``naive_sum``,
            ``remaining``.
        runs: scope dataset: every run with its recomputed epsilon.
        utility: ``metric``, ``private``, ``baseline``, ``difference`` when a baseline is given.
        membership_inference: the loss-threshold audit, when audit data was given.
        preprocessing: data-dependent preprocessing that DP does not cover.
        versions: privdl, opacus, torch, numpy, python.
        warnings: things the reader must know (disagreements, uncovered steps).
        created_at: ISO-8601 UTC time.
        coverage: every item the report and the model folder release: ``item``,
            ``released_in`` (``"report"``, ``"model folder"``, ``"checkpoint"``),
            ``dp_protected``, ``data_dependent`` (computed from personal data) and a
            ``note``; an item that is data-dependent and not DP-protected is not covered.
    """

    scope: str
    dataset_id: str | None
    accountant: str
    delta: float
    epsilon: float
    history: list[list[Any]]
    privacy_unit: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    dataset: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    utility: dict[str, Any] | None = None
    membership_inference: dict[str, Any] | None = None
    preprocessing: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    created_at: str = ""
    coverage: list[dict[str, Any]] = field(default_factory=list)

    # -- construction -----------------------------------------------------------

    @classmethod
    def from_trainer(
        cls,
        trainer: Any,
        *,
        baseline: float | Mapping[str, Any] | None = None,
        audit_data: tuple[Any, Any] | None = None,
        ledger_before: Any = None,
        ledger_after: Any = None,
        max_records_per_user: int | None = None,
    ) -> PrivacyReport:
        """The report of a fitted :class:`~privdl.PrivateTrainer`.

        Args:
            trainer: a fitted trainer (``accountant_history_``, ``delta_``, ...).
            baseline: the validation metric of a non-private model on the same data, as
                a number or ``{"metric": name, "value": v}``.
            audit_data: ``(members, non_members)``, each ``(X, y)``: records the model
                was trained on and records it never saw, for the membership audit.
            ledger_before: the dataset's BudgetStatus before the run.
            ledger_after: the dataset's BudgetStatus after the run.
            max_records_per_user: at most this many records belong to one person; the
                report then also states user-level epsilon by group privacy.

        Raises:
            UsageError: the trainer has not been fitted.
        """
        history = getattr(trainer, "accountant_history_", None)
        if history is None:
            raise UsageError("the trainer has not been fitted: no accountant history")
        hist = _hist_lists(history)
        # the fitted accountant (the ledger's for the dataset), else the one asked for
        accountant = str(getattr(trainer, "accountant_", None) or getattr(trainer, "accountant", "prv"))
        delta = float(trainer.delta_)
        epsilon = epsilon_of(hist, delta=delta, accountant=accountant)
        warnings: list[str] = []

        reported = getattr(trainer, "epsilon", None)
        if reported is not None and not _agree(float(reported), epsilon):
            warnings.append(
                f"the trainer reported epsilon={float(reported):.4g}, the recomputation from "
                f"its accountant history gives {epsilon:.4g}; this report uses the latter"
            )

        steps = int(sum(seg[2] for seg in hist))
        training = {
            "noise_multiplier": _float(getattr(trainer, "noise_multiplier_", None)),
            "max_grad_norm": _float(getattr(trainer, "max_grad_norm", None)),
            "sample_rate": _float(getattr(trainer, "sample_rate_", None)),
            "steps": steps,
            "epochs": _int(getattr(trainer, "epochs", None)),
            "batch_size": _int(getattr(trainer, "batch_size", None)),
            "n_samples": _int(getattr(trainer, "n_samples_", None)),
            "secure_mode": bool(getattr(trainer, "secure_mode", False)),
            "target_epsilon": _target(getattr(trainer, "target_epsilon", None)),
            "replaced_modules": [str(m) for m in (getattr(trainer, "replaced_modules_", None) or [])],
            "model": type(getattr(trainer, "model_", None)).__name__
            if getattr(trainer, "model_", None) is not None
            else None,
        }
        epochs = _epoch_rows(getattr(trainer, "history_", None) or [], hist, delta, accountant)
        for row in epochs:
            rep = row.get("epsilon_reported")
            if rep is not None and not _agree(rep, row["epsilon"]):
                warnings.append(
                    f"epoch {row['epoch']}: trainer reported epsilon={rep:.4g}, recomputed "
                    f"{row['epsilon']:.4g}"
                )
                break

        dataset_id = getattr(trainer, "dataset_id", None)
        dataset = _dataset_block(
            getattr(trainer, "ledger_", None),
            dataset_id,
            ledger_before,
            ledger_after,
            accountant,
            run_id=getattr(trainer, "run_id_", None),
        )
        utility = _utility(epochs, baseline)
        mia = None
        if audit_data is not None:
            mia = _membership(trainer, audit_data, epsilon, delta)
        preprocessing = _preprocessing(trainer)
        if not training["secure_mode"]:
            warnings.append(
                "secure_mode is off: the noise comes from a non-cryptographic random number "
                "generator, which floating-point attacks on the Gaussian mechanism can exploit"
            )
        unit = _unit(epsilon, delta, max_records_per_user)
        warnings += _unit_warnings(unit)
        if getattr(trainer, "val_overlap_", None):
            # no count: it is a figure computed from the records without noise
            warnings.append(
                "the validation data shares rows with the training data: the validation "
                "metric is computed partly on training records, without DP"
            )
        encoder = getattr(trainer, "encoder_", None)
        source = getattr(trainer, "domain_source_", None) or getattr(encoder, "domain_source_", None)
        if source == "learned-unprotected":
            warnings.append(
                "the encoder's domains were learned from the training data without DP (domains="
                '"learned-unprotected"): encoder.json and the feature names are not covered'
            )
        coverage = coverage_items(trainer, utility=utility, membership=mia, dataset=dataset)
        return cls(
            scope="run",
            dataset_id=dataset_id,
            accountant=accountant,
            delta=delta,
            epsilon=epsilon,
            history=hist,
            privacy_unit=unit,
            training=training,
            epochs=epochs,
            dataset=dataset,
            utility=utility,
            membership_inference=mia,
            preprocessing=preprocessing,
            versions=_versions(),
            warnings=warnings,
            created_at=_now(),
            coverage=coverage,
        )

    @classmethod
    def from_ledger(
        cls,
        ledger: Any,
        dataset_id: str,
        *,
        max_records_per_user: int | None = None,
    ) -> PrivacyReport:
        """The report of every run charged to one dataset in a ledger.

        Args:
            ledger: a :class:`~privdl.BudgetLedger` or its location.
            dataset_id: the dataset.
            max_records_per_user: as in :meth:`from_trainer`.
        """
        from privdl.budget.ledger import BudgetLedger

        led = ledger if isinstance(ledger, BudgetLedger) else BudgetLedger(ledger, create=False)
        total, delta = led.budget(dataset_id)
        status = led.status(dataset_id)
        runs = led.runs(dataset_id)
        accountant = status.accountant
        all_hist = [seg for r in runs for seg in r.history]
        composed = epsilon_of(all_hist, delta=delta, accountant=accountant)
        warnings: list[str] = []
        run_rows: list[dict[str, Any]] = []
        cumulative: list[tuple[float, float, int]] = []
        for r in runs:
            own = epsilon_of(r.history, delta=r.delta, accountant=r.accountant)
            cumulative.extend(r.history)
            run_rows.append(
                {
                    "run_id": r.run_id,
                    "created_at": r.created_at,
                    "status": r.status,
                    "model_name": r.model_name,
                    "accountant": r.accountant,
                    "delta": r.delta,
                    "epsilon": own,
                    "epsilon_at_dataset_delta": epsilon_of(r.history, delta=delta, accountant=accountant),
                    "requested_epsilon": r.requested_epsilon,
                    "composed_after": epsilon_of(cumulative, delta=delta, accountant=accountant),
                    "history": _hist_lists(r.history),
                    "privdl_version": r.privdl_version,
                    "opacus_version": r.opacus_version,
                }
            )
            if not _agree(r.epsilon, own):
                warnings.append(
                    f"run {r.run_id[:12]}: the ledger's stored epsilon={r.epsilon:.4g} differs "
                    f"from the recomputation {own:.4g}"
                )
        reserved = [r for r in runs if r.status == "reserved"]
        if reserved:
            warnings.append(
                f"{len(reserved)} run(s) are still reserved (running or crashed); their planned "
                "history is counted in full"
            )
        naive = sum(row["epsilon_at_dataset_delta"] for row in run_rows)
        unit = _unit(composed, delta, max_records_per_user)
        warnings += _unit_warnings(unit)
        dataset = {
            "total_epsilon": total,
            "delta": delta,
            "spent_before": None,
            "spent_after": composed,
            "naive_sum": naive,
            "remaining": max(0.0, total - composed),
            "runs": len(runs),
        }
        return cls(
            scope="dataset",
            dataset_id=dataset_id,
            accountant=accountant,
            delta=delta,
            epsilon=composed,
            history=_hist_lists(all_hist),
            privacy_unit=unit,
            dataset=dataset,
            runs=run_rows,
            versions=_versions(),
            warnings=warnings,
            created_at=_now(),
            coverage=_ledger_coverage(),
        )

    # -- serialization ----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-compatible data (what ``.json`` files hold)."""
        return asdict(self)

    def to_json(self) -> str:
        """Serialize to a JSON string (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> PrivacyReport:
        """Load from :meth:`to_json` output (a string or the parsed dict).

        Raises:
            InputError: not a privacy report.
        """
        try:
            data = dict(json.loads(text) if isinstance(text, str) else text)
            # older reports held the exact training loss (not DP): it is not carried on
            data["epochs"] = [
                {k: v for k, v in dict(row).items() if k != "loss"} for row in data.get("epochs") or []
            ]
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise InputError("not a privdl privacy report") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report: ``.json`` (data), ``.md`` or self-contained ``.html``."""
        from privdl import render

        with_figures = Path(path).suffix.lower() in (".html", ".htm")
        return render.save(self.document(figures=with_figures), path, self.to_dict())

    # -- rendering --------------------------------------------------------------

    def statement(self) -> str:
        """The privacy statement in plain words (the report's first paragraph)."""
        acc = {"prv": "PRV (privacy loss random variable)", "rdp": "RDP (Rényi DP)"}.get(
            self.accountant, self.accountant
        )
        t = self.training
        if self.scope == "run":
            mech = (
                f"DP-SGD with Poisson sampling (sampling rate q={_g(t.get('sample_rate'))}), "
                f"per-example gradients clipped to norm C={_g(t.get('max_grad_norm'))} and "
                f"Gaussian noise with multiplier sigma={_g(t.get('noise_multiplier'))}, "
                f"over {t.get('steps')} steps ({_g(t.get('epochs'))} epochs)"
            )
            what = "This training run"
        else:
            mech = f"the composition of all {len(self.runs)} DP-SGD runs charged to the dataset"
            what = f"Dataset {self.dataset_id!r}"
        unit = self.privacy_unit
        text = (
            f"{what} satisfies ({self.epsilon:.4g}, {self.delta:.3g})-differential privacy "
            f"for {mech}, by the {acc} accountant. Privacy unit: one record; adjacency: "
            f"add or remove one record (unbounded). Trust model: central DP, the party "
            f"that trains sees the raw records; the guarantee covers the trained weights "
            f"of the released model and of every intermediate model and checkpoint of "
            f"the run(s). The coverage statement lists what else is released and whether "
            f"DP covers it."
        )
        if unit.get("unit") == "user":
            text += (
                f" With at most {unit['max_records_per_user']} records per person, group "
                f"privacy gives user-level ({unit['epsilon']:.4g}, {unit['delta']:.3g})-DP."
            )
        return text

    def document(self, *, figures: bool = True) -> Any:
        """The report as a :class:`privdl.render.Document` (``figures=False`` skips plots)."""
        from privdl import render as r

        sections: list[Any] = []
        assumptions: list[Any] = [
            r.Paragraph(self.statement()),
            r.Note(
                "Assumptions: records are sampled with Poisson sampling at rate q at every "
                "step, exactly as the accountant models it; the accountant's figure is an "
                "upper bound on the privacy loss. NOT covered: hyperparameter tuning (every "
                "trial on the same data spends budget of its own), preprocessing fitted on "
                "the data unless it was done with DP, and any use of the data outside these "
                "runs.",
                kind="info",
            ),
        ]
        uncovered = [c["item"] for c in self.coverage if c["data_dependent"] and not c["dp_protected"]]
        if uncovered:
            assumptions.append(
                r.Note(
                    "Released here or in the model folder but NOT covered by the DP guarantee "
                    "(computed from personal data without noise): " + "; ".join(uncovered) + ".",
                    kind="warning",
                )
            )
        if self.preprocessing:
            assumptions.append(
                r.Note(
                    "Preprocessing not covered by DP (learned from the training data): "
                    + "; ".join(self.preprocessing),
                    kind="warning",
                )
            )
        for w in self.warnings:
            assumptions.append(r.Note(w, kind="warning"))
        sections.append(r.Section("Privacy statement", assumptions))

        rows: list[tuple[str, Any]] = [
            ("scope", self.scope),
            ("dataset", self.dataset_id or "—"),
            ("epsilon", self.epsilon),
            ("delta", self.delta),
            ("accountant", self.accountant),
            ("privacy unit", self.privacy_unit.get("unit")),
        ]
        if self.privacy_unit.get("unit") == "user":
            rows += [
                ("max records per user", self.privacy_unit.get("max_records_per_user")),
                ("user-level epsilon", self.privacy_unit.get("epsilon")),
                ("user-level delta", self.privacy_unit.get("delta")),
            ]
        labels = {
            "noise_multiplier": "noise multiplier (sigma)",
            "max_grad_norm": "clipping norm (C)",
            "sample_rate": "sampling rate (q)",
            "target_epsilon": "target epsilon",
            "n_samples": "training records",
            "batch_size": "expected batch size",
        }
        for key, value in self.training.items():
            if key == "replaced_modules":
                value = ", ".join(value) if value else "none"
            rows.append((labels.get(key, key.replace("_", " ")), value))
        sections.append(r.Section("Parameters", [r.KeyValues(rows)]))

        if self.dataset is not None:
            d = self.dataset
            drows = [
                ("total budget (epsilon)", d.get("total_epsilon")),
                ("delta", d.get("delta")),
                ("spent before this run (composed)", d.get("spent_before")),
                ("spent now (composed)", d.get("spent_after")),
                ("naive sum of run epsilons", d.get("naive_sum")),
                ("remaining", d.get("remaining")),
            ]
            if self.scope == "dataset":
                drows = [x for x in drows if x[0] != "spent before this run (composed)"]
            sections.append(
                r.Section(
                    "Budget ledger",
                    [
                        r.KeyValues(drows),
                        r.Paragraph(
                            "Spent budget is the composition of every run's accountant history "
                            "on this dataset, recomputed for this report; it is tighter than "
                            "the naive sum of the runs' epsilons."
                        ),
                    ],
                )
            )
        if self.runs:
            sections.append(
                r.Section(
                    "Runs",
                    [
                        r.Table(
                            [
                                "run",
                                "time (UTC)",
                                "status",
                                "model",
                                "epsilon",
                                "delta",
                                "composed after",
                                "steps",
                            ],
                            [
                                [
                                    row["run_id"][:12],
                                    row["created_at"][:19].replace("T", " "),
                                    row["status"],
                                    row["model_name"] or "—",
                                    row["epsilon"],
                                    row["delta"],
                                    row["composed_after"],
                                    sum(int(s[2]) for s in row["history"]),
                                ]
                                for row in self.runs
                            ],
                        )
                    ],
                )
            )
        if self.coverage:
            sections.append(
                r.Section(
                    "Coverage: what is released",
                    [
                        r.Table(
                            ["item", "released in", "protection", "why"],
                            [
                                [c["item"], ", ".join(c["released_in"]), _protection(c), c["note"]]
                                for c in self.coverage
                            ],
                        ),
                        r.Paragraph(
                            "DP: released through the differentially private mechanism and "
                            "counted in epsilon. Public: not computed from the training "
                            "records. NOT covered: computed from personal data without noise. "
                            "The exact training loss is neither saved nor reported (the "
                            "trainer shows it live on its own progress bar only)."
                        ),
                    ],
                )
            )
        if self.epochs:
            blocks: list[Any] = [
                r.Table(
                    ["epoch", "validation metric (not covered by DP)", "epsilon"],
                    [[e["epoch"], e.get("metric"), e["epsilon"]] for e in self.epochs],
                )
            ]
            if figures:
                blocks.append(r.Figure(self._epoch_plot(), "epsilon and validation metric per epoch"))
            sections.append(r.Section("Training progress", blocks))
        elif figures and len(self.runs) > 0:
            sections.append(
                r.Section(
                    "Budget over time",
                    [r.Figure(self._runs_plot(), "composed epsilon after each run")],
                )
            )
        if self.utility is not None:
            u = self.utility
            sections.append(
                r.Section(
                    "Utility",
                    [
                        r.Paragraph(
                            "Not covered by DP: the private model's validation metric and the "
                            "non-private baseline are computed without noise."
                        ),
                        r.KeyValues(
                            [
                                ("metric", u.get("metric")),
                                ("private model", u.get("private")),
                                ("non-private baseline", u.get("baseline")),
                                ("difference", u.get("difference")),
                            ]
                        ),
                    ],
                )
            )
        if self.membership_inference is not None:
            m = self.membership_inference
            sections.append(
                r.Section(
                    "Membership-inference audit",
                    [
                        r.Paragraph(
                            "Loss-threshold attack: guess 'member' when a record's loss is "
                            "below a threshold, on held-out training records (members) and "
                            "records never trained on (non-members). AUC 0.5 and advantage 0 "
                            "mean the attack does no better than guessing. The DP bound is "
                            "the largest advantage any attack can have under the stated "
                            "(epsilon, delta). An empirical audit can find leaks; it cannot "
                            "prove their absence. Not covered by DP: these figures are "
                            "computed without noise from the audit records, whose members "
                            "are training records."
                        ),
                        r.KeyValues(
                            [
                                ("attack AUC", m.get("auc")),
                                ("attacker advantage (TPR - FPR)", m.get("advantage")),
                                ("DP bound on advantage", m.get("dp_bound")),
                                (
                                    "members / non-members",
                                    f"{m.get('n_members')} / {m.get('n_non_members')}",
                                ),
                            ]
                        ),
                    ],
                )
            )
        sections.append(
            r.Section(
                "Reproducibility",
                [
                    r.KeyValues(sorted(self.versions.items())),
                    r.Table(
                        ["noise multiplier", "sampling rate", "steps"],
                        [list(s) for s in self.history],
                    ),
                ],
            )
        )
        title = (
            "Privacy report: DP training run"
            if self.scope == "run"
            else f"Privacy report: dataset {self.dataset_id}"
        )
        return r.Document(title, sections, subtitle=f"created {self.created_at}")

    def _epoch_plot(self) -> bytes:
        from privdl.render import figure_png

        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
        xs = [e["epoch"] for e in self.epochs]
        ax.plot(xs, [e["epsilon"] for e in self.epochs], marker="o", color="#0969da")
        ax.set_xlabel("epoch")
        ax.set_ylabel("epsilon", color="#0969da")
        metrics = [e.get("metric") for e in self.epochs]
        if any(v is not None for v in metrics):
            ax2 = ax.twinx()
            ax2.plot(xs, [math.nan if v is None else v for v in metrics], marker="s", color="#bf8700")
            ax2.set_ylabel("validation metric", color="#bf8700")
        fig.tight_layout()
        return figure_png(fig)

    def _runs_plot(self) -> bytes:
        from privdl.render import figure_png

        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
        xs = list(range(1, len(self.runs) + 1))
        ax.step(
            xs,
            [row["composed_after"] for row in self.runs],
            where="post",
            marker="o",
            label="composed (accountant)",
        )
        naive = []
        total = 0.0
        for row in self.runs:
            total += row["epsilon_at_dataset_delta"]
            naive.append(total)
        ax.step(xs, naive, where="post", linestyle="--", label="naive sum")
        if self.dataset is not None:
            ax.axhline(self.dataset["total_epsilon"], color="#cf222e", label="budget")
        ax.set_xlabel("run")
        ax.set_ylabel(f"epsilon at delta={self.delta:.3g}")
        ax.legend()
        fig.tight_layout()
        return figure_png(fig)


# -- helpers ------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _agree(a: float, b: float) -> bool:
    return abs(a - b) <= max(_AGREE_ATOL, _AGREE_RTOL * abs(b))


def _float(value: Any) -> float | None:
    # NaN / inf (a diverged loss) cannot go into strict JSON: recorded as unknown
    if value is None:
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _target(value: Any) -> float | str | None:
    if value is None or isinstance(value, str):
        return value
    return float(value)


def _g(value: Any) -> str:
    return "?" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _unit(epsilon: float, delta: float, k: int | None) -> dict[str, Any]:
    if k is None:
        return {"unit": "record", "max_records_per_user": None, "epsilon": epsilon, "delta": delta}
    user_eps, user_delta = group_privacy(epsilon, delta, int(k))
    return {
        "unit": "user",
        "max_records_per_user": int(k),
        "epsilon": user_eps,
        "delta": user_delta,
    }


def _unit_warnings(unit: Mapping[str, Any]) -> list[str]:
    if unit.get("unit") == "user" and unit["delta"] >= 1e-3:
        return [
            f"the user-level guarantee is vacuous (delta={unit['delta']:.3g}): group privacy "
            f"over {unit['max_records_per_user']} records per person multiplies delta by "
            "e^((k-1) epsilon); lower epsilon or limit the records per person"
        ]
    return []


def _epoch_rows(
    per_epoch: Sequence[Mapping[str, Any]],
    hist: Sequence[Sequence[Any]],
    delta: float,
    accountant: str,
) -> list[dict[str, Any]]:
    """Per-epoch rows with epsilon recomputed from the history prefix of each epoch.

    The rows belong to the last segment of the history (the trainer's current run;
    earlier runs and any DP preprocessing come before it). An epoch ends at the
    cumulative ``steps`` of that run the trainer recorded for it; without that,
    epoch ``e`` of ``E`` ends after ``round(e / E * steps)`` steps of the whole history
    (Poisson sampling runs ``1/q`` steps per epoch, so the steps split evenly).

    The exact training loss a trainer keeps per epoch is not carried over: it is
    computed from the training records without noise.
    """
    rows: list[dict[str, Any]] = []
    total_steps = int(sum(int(s[2]) for s in hist))
    n = len(per_epoch)
    for i, entry in enumerate(per_epoch):
        epoch = int(entry.get("epoch", i + 1))
        # the trainer's cumulative step count when it gives one, else an even split
        given = entry.get("steps")
        if given is not None and hist:
            steps = int(given)
            *before, (sigma, q, _n) = hist
            prefix = [*before, (sigma, q, steps)] if steps > 0 else list(before)
        else:
            steps = round((i + 1) / n * total_steps)
            prefix = _prefix(hist, steps)
        eps = epsilon_of(prefix, delta=delta, accountant=accountant) if prefix else 0.0
        rep = entry.get("epsilon")
        rows.append(
            {
                "epoch": epoch,
                "metric": _float(entry.get("metric")),
                "epsilon": eps,
                "epsilon_reported": _float(rep),
                "steps": steps,
                "metric_name": entry.get("metric_name"),
            }
        )
    return rows


def _utility(epochs: list[dict[str, Any]], baseline: Any) -> dict[str, Any] | None:
    if baseline is None:
        return None
    if isinstance(baseline, Mapping):
        name, value = str(baseline.get("metric", "validation metric")), float(baseline["value"])
    else:
        named = [e.get("metric_name") for e in epochs if e.get("metric_name")]
        name, value = (str(named[-1]) if named else "validation metric"), float(baseline)
    private = next((e["metric"] for e in reversed(epochs) if e.get("metric") is not None), None)
    return {
        "metric": name,
        "private": private,
        "baseline": value,
        "difference": None if private is None else private - value,
    }


def _membership(trainer: Any, audit_data: Any, epsilon: float, delta: float) -> dict[str, Any]:
    try:
        members, non_members = audit_data
        (xm, ym), (xn, yn) = members, non_members
    except (TypeError, ValueError) as exc:
        raise UsageError("audit_data must be ((X_members, y_members), (X_non, y_non))") from exc
    audit: MembershipAudit = loss_threshold_audit(
        trainer.loss_per_sample(xm, ym),
        trainer.loss_per_sample(xn, yn),
        epsilon=epsilon,
        delta=delta,
    )
    out = asdict(audit)
    # the mean loss on the members is the exact training loss of those records: left out
    for name in ("mean_loss_members", "mean_loss_non_members"):
        out.pop(name, None)
    out["dp_bound"] = dp_advantage_bound(epsilon, delta)
    return out


def _item(item: str, released_in: Sequence[str], *, dp: bool, data: bool, note: str) -> dict[str, Any]:
    return {
        "item": item,
        "released_in": list(released_in),
        "dp_protected": dp,
        "data_dependent": data,
        "note": note,
    }


def _protection(entry: Mapping[str, Any]) -> str:
    if entry.get("dp_protected"):
        return "DP"
    return "NOT covered" if entry.get("data_dependent") else "public"


def coverage_items(
    trainer: Any,
    *,
    utility: Mapping[str, Any] | None = None,
    membership: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """What a fitted trainer's report and model folder release, each item classified.

    ``dp_protected``: released through DP-SGD (or another DP release in the run's
    history) and so counted in epsilon. ``data_dependent``: computed from personal
    data. An item that is data-dependent and not DP-protected is *not covered*.

    Args:
        trainer: a fitted :class:`~privdl.PrivateTrainer` (or an object with its attributes).
        utility, membership, dataset: the report's blocks, when it has them (the model
            folder has none of them).
    """
    checkpoints = getattr(trainer, "checkpoint_dir", None) is not None
    folder = ("model folder", "checkpoint") if checkpoints else ("model folder",)
    everywhere = ("report", *folder)
    items = [
        _item(
            "model weights (trainable parameters)",
            folder,
            dp=True,
            data=True,
            note="the output of DP-SGD; every intermediate model is covered too",
        )
    ]
    model = getattr(trainer, "model_", None)
    named_buffers = getattr(model, "named_buffers", None)
    buffers = [name for name, _ in named_buffers()] if callable(named_buffers) else []
    if buffers:
        items.append(
            _item(
                f"model buffers ({len(buffers)}: non-trainable state)",
                folder,
                dp=False,
                data=True,
                note="not trained by DP-SGD: covered only if no layer updates them from the "
                "training data, which privdl does not check",
            )
        )
    if checkpoints:
        items.append(
            _item(
                "optimizer state and training progress (epoch, steps)",
                ("checkpoint",),
                dp=True,
                data=True,
                note="computed from the noisy gradients only (post-processing); the steps "
                "per epoch follow from n",
            )
        )
    items += [
        _item(
            "epsilon, delta, accountant history (noise multiplier, sampling rate, steps), "
            "clipping norm, per-epoch epsilon and steps",
            everywhere,
            dp=False,
            data=False,
            note="parameters of the DP mechanism; epsilon is computed from them (the sampling "
            "rate and a default delta are derived from the number of records)",
        ),
        _item(
            "number of training records (n)",
            everywhere,
            dp=False,
            data=True,
            note="released exactly (it is also implied by the sampling rate and a default "
            "delta of 1/(10 n)); add-or-remove-one-record DP does not hide it",
        ),
        _item(
            "training configuration (hyperparameters, target epsilon, secure mode, whether a seed was given)",
            everywhere,
            dp=False,
            data=False,
            note="chosen by the user, not computed from the records",
        ),
        _item(
            "model architecture (layers, replaced modules, gradient engine)",
            everywhere,
            dp=False,
            data=False,
            note="from the model given, not from the records",
        ),
        _item(
            "dataset id, run id, software versions, creation time",
            everywhere,
            dp=False,
            data=False,
            note="identifiers and metadata, not computed from the records",
        ),
    ]
    fixed = isinstance(getattr(trainer, "loss", None), str)
    task_note = (
        "fixed by loss="
        if fixed
        else "inferred from the training targets (their type and whether every value is "
        "whole); pass loss= to fix it in advance"
    )
    items.append(
        _item("task (binary, multiclass or regression)", folder, dp=False, data=not fixed, note=task_note)
    )
    encoder = getattr(trainer, "encoder_", None)
    if encoder is not None or getattr(trainer, "feature_names_", None):
        items.append(_encoder_item(trainer, encoder, folder))
        screened = list(getattr(encoder, "screened_", None) or [])
        if screened:
            items.append(
                _item(
                    "choice of feature columns among those nobody named",
                    folder,
                    dp=False,
                    data=True,
                    note=f"{len(screened)} column(s) screened on the training table without DP "
                    "(identifier-like or not, numbers or text); only names and kinds are kept",
                )
            )
    per_epoch = getattr(trainer, "history_", None) or []
    if any(row.get("metric") is not None for row in per_epoch):
        note = (
            "computed on the val= data without noise: DP covers the training records, "
            "not the validation records"
        )
        if getattr(trainer, "val_overlap_", None):
            note += "; the validation data shares rows with the training data"
        items.append(_item("validation metric per epoch", everywhere, dp=False, data=True, note=note))
    if utility is not None:
        items.append(
            _item(
                "non-private baseline and utility difference",
                ("report",),
                dp=False,
                data=True,
                note="given by the caller; a model trained without DP on the same data",
            )
        )
    if membership is not None:
        items.append(
            _item(
                "membership-inference audit (AUC, advantage, record counts)",
                ("report",),
                dp=False,
                data=True,
                note="computed without noise from the per-record losses of the audit "
                "records, whose members are training records",
            )
        )
    if dataset is not None:
        items.append(
            _item(
                "dataset budget (total, spent, remaining)",
                ("report",),
                dp=False,
                data=False,
                note="composed from the runs' accountant histories in the ledger",
            )
        )
    return items


def _encoder_item(trainer: Any, encoder: Any, folder: Sequence[str]) -> dict[str, Any]:
    """The encoder's domains (encoder.json, feature names) by where they came from."""
    learned = _preprocessing(trainer)
    where = ("report", *folder) if learned else tuple(folder)
    item = "feature names and encoder domains (encoder.json)"
    # the trainer's (or encoder's) record: "policy", "dp" or "learned-unprotected"
    source = getattr(trainer, "domain_source_", None) or getattr(encoder, "domain_source_", None)
    if source == "learned-unprotected" or learned:
        note = "learned from the training data without noise"
        if learned:
            note += " (listed under preprocessing not covered by DP)"
        return _item(item, where, dp=False, data=True, note=note)
    if source == "dp":
        own = getattr(encoder, "domain_epsilon_", None)
        alone = f" (epsilon {float(own):.3g} on its own)" if own is not None else ""
        return _item(
            item,
            where,
            dp=True,
            data=True,
            note=f"estimated with DP{alone}; the release is a segment of the run's history and "
            "counted in the run's epsilon",
        )
    if source == "policy" or (source is None and encoder is not None):
        return _item(
            item, where, dp=False, data=False, note="from the policy, its hierarchies or given bounds"
        )
    return _item(
        item, where, dp=False, data=True, note="origin not recorded: treated as learned from the data"
    )


def _ledger_coverage() -> list[dict[str, Any]]:
    return [
        _item(
            "epsilon, delta and accountant history of every run",
            ("report",),
            dp=False,
            data=False,
            note="parameters of the DP mechanisms, composed by the accountant",
        ),
        _item(
            "runs (ids, times, status, model names, software versions) and the dataset budget",
            ("report",),
            dp=False,
            data=False,
            note="ledger records, not computed from the training records",
        ),
    ]


def _preprocessing(trainer: Any) -> list[str]:
    encoder = getattr(trainer, "encoder_", None)
    learned = getattr(encoder, "data_dependent_", None) if encoder is not None else None
    return [str(x) for x in learned] if learned else []


def _dataset_block(
    ledger: Any,
    dataset_id: str | None,
    before: Any,
    after: Any,
    accountant: str,
    *,
    run_id: str | None = None,
) -> dict[str, Any] | None:
    b, a = _status_dict(before), _status_dict(after)
    if ledger is None and a is None and b is None:
        return None
    out: dict[str, Any] = {
        "total_epsilon": (a or b or {}).get("epsilon"),
        "delta": (a or b or {}).get("delta"),
        "spent_before": None if b is None else b.get("spent"),
        "spent_after": None if a is None else a.get("spent"),
        "naive_sum": None if a is None else a.get("naive_sum"),
        "remaining": None if a is None else a.get("remaining"),
    }
    if ledger is not None and dataset_id is not None:
        from privdl.budget.ledger import BudgetLedger

        led = ledger if isinstance(ledger, BudgetLedger) else BudgetLedger(ledger, create=False)
        total, delta = led.budget(dataset_id)
        runs = led.runs(dataset_id)
        composed = epsilon_of([seg for r in runs for seg in r.history], delta=delta, accountant=accountant)
        out.update(
            total_epsilon=total,
            delta=delta,
            spent_after=composed,
            naive_sum=sum(epsilon_of(r.history, delta=delta, accountant=accountant) for r in runs),
            remaining=max(0.0, total - composed),
        )
        if run_id is not None and any(r.run_id == run_id for r in runs):
            out["spent_before"] = epsilon_of(
                [seg for r in runs if r.run_id != run_id for seg in r.history],
                delta=delta,
                accountant=accountant,
            )
    return out
