"""PrivacyReport: what a DP training run (or a dataset's whole budget) guarantees.

Modelled on TF Privacy's ``compute_dp_sgd_privacy_statement``: the privacy unit and
adjacency, the trust model, the accountant and its assumptions, what is and is not
covered, and epsilon at delta, followed by the ledger's view of the dataset, utility
against a non-private baseline, a plot of epsilon and the validation metric per epoch,
and an empirical membership-inference test.

A report is a frozen value made of frozen values (:class:`PrivacyUnit`,
:class:`Training`, :class:`Epoch`, :class:`DatasetBudget`, :class:`LedgerRun`,
:class:`Utility`, :class:`~privdl.budget.membership.MembershipInference`,
:class:`CoverageItem`). A run's report is built from the explicit record of the run,
:class:`~privdl.budget.facts.RunFacts` (``trainer.run_facts()``), never by reading a
trainer's attributes with a default. Its Markdown and HTML sections live in
:mod:`privdl.budget.report_document`.

The ``coverage`` statement lists every item the report and the model folder release,
each marked DP-protected, public (not computed from the training records) or not
covered (computed from personal data without noise). Nothing computed from the
training records without noise is in a report as if covered: the exact training loss
is left out altogether (a trainer shows it live on its progress bar only).

Every epsilon in a report is recomputed here from the accountant history
(``(noise_multiplier, sample_rate, steps)`` segments); figures a trainer or ledger
reported are only compared with it (a disagreement becomes a warning in the report).

Serialization: ``to_dict()`` gives plain JSON-compatible data, ``to_json()`` a JSON
string, ``from_dict()`` / ``from_json()`` read them back (``from_json`` also takes the
parsed dict of a saved ``.json`` report, older ones included).

Example:
    >>> report = trainer.report()                 # doctest: +SKIP
    >>> report.training.noise_multiplier          # doctest: +SKIP
    1.1
    >>> report.save("privacy.html")               # doctest: +SKIP
    >>> PrivacyReport.from_ledger(BudgetLedger("budget.db"), "adult").save("adult.md")
    ... # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from privdl._version import __version__
from privdl.budget import report_document
from privdl.budget.accounting import epsilon_of, normalize_history
from privdl.budget.accounting import tuning as _tuning
from privdl.budget.accounting import units as _units
from privdl.budget.facts import RunFacts
from privdl.budget.membership import MembershipInference, loss_threshold_test
from privdl.errors import InputError, UsageError
from privdl.serialize import JSONSerializable, ReadByName

__all__ = [
    "CoverageItem",
    "DatasetBudget",
    "Epoch",
    "LedgerRun",
    "PrivacyReport",
    "PrivacyUnit",
    "Training",
    "Utility",
    "coverage_items",
    "group_privacy",
]

# Trainer-reported and recomputed figures may differ by the accountants' own error
# margins (PRV: eps_error=0.01 absolute); more than this is reported as a disagreement.
_AGREE_RTOL = 0.01
_AGREE_ATOL = 0.011

Segment = tuple[float, float, int]


# group_privacy: the one definition is in the accounting (re-exported here)
group_privacy = _units.group_privacy


# -- the values ---------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-compatible data of a value (nested values, tuples and mappings included)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


class _Value(ReadByName, JSONSerializable):
    """A frozen report value: ``to_dict()`` / ``to_json()``; read access by name too
    (``value["name"]``, ``value.get("name")``, ``"name" in value``), for code written
    when the report's blocks were dicts.
    """

    # to_json / from_json: privdl.serialize.JSONSerializable
    _json_indent = 2
    _json_allow_nan = False

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON-compatible data."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


def _segments(history: Iterable[Sequence[Any]]) -> tuple[Segment, ...]:
    return tuple((float(s), float(q), int(n)) for s, q, n in history)


@dataclass(frozen=True)
class PrivacyUnit(_Value):
    """What one unit of privacy protects, and the user-level guarantee when it applies.

    Attributes:
        unit: ``"record"`` or ``"user"``.
        max_records_per_user: at most this many records belong to one person (unit user).
        epsilon, delta: the guarantee for that unit (by group privacy for a user).
        method: how the user-level guarantee holds: ``"user-level DP-SGD"`` (users
            sampled and clipped as units: epsilon is the accountant's), ``"group
            privacy"`` (a record-level run, multiplied out) or ``""`` (record level).
    """

    unit: str
    max_records_per_user: int | None
    epsilon: float
    delta: float
    method: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyUnit:
        return cls(**dict(data))


@dataclass(frozen=True)
class Training(_Value):
    """The hyperparameters of a run that matter for privacy."""

    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    sample_rate: float | None = None
    steps: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    n_samples: int | None = None
    secure_mode: bool = False
    target_epsilon: float | str | None = None
    replaced_modules: tuple[str, ...] = ()
    model: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Training:
        d = dict(data)
        d["replaced_modules"] = tuple(d.get("replaced_modules") or ())
        return cls(**d)


@dataclass(frozen=True)
class Epoch(_Value):
    """One epoch: the validation metric (not covered by DP) and epsilon recomputed.

    The exact training loss is never included: it is not DP.

    Attributes:
        epoch: 1-based epoch number.
        metric: the validation metric.
        epsilon: recomputed from the accountant history up to the end of the epoch.
        epsilon_reported: the trainer's own figure.
        steps: steps of the run (or of the whole history) at the end of the epoch.
        metric_name: the metric's name.
    """

    epoch: int
    metric: float | None
    epsilon: float
    epsilon_reported: float | None
    steps: int
    metric_name: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Epoch:
        # older reports held the exact training loss (not DP): it is not carried on
        return cls(**{k: v for k, v in dict(data).items() if k != "loss"})


@dataclass(frozen=True)
class DatasetBudget(_Value):
    """The ledger's view of a dataset's budget (every epsilon composed, recomputed).

    Attributes:
        total_epsilon, delta: the dataset's budget.
        spent_before: composed over every run but this one (scope run).
        spent_after: composed over every run.
        naive_sum: the runs' epsilons added up (looser than the composition).
        remaining: ``total_epsilon - spent_after``, at least 0.
        runs: number of runs (scope dataset).
    """

    total_epsilon: float | None
    delta: float | None
    spent_before: float | None
    spent_after: float | None
    naive_sum: float | None
    remaining: float | None
    runs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.runs is None:  # a run's report has no run count (as it always had)
            out.pop("runs")
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetBudget:
        return cls(**dict(data))


@dataclass(frozen=True)
class LedgerRun(_Value):
    """One run charged to a dataset, with its epsilon recomputed."""

    run_id: str
    created_at: str
    status: str
    model_name: str | None
    accountant: str
    delta: float
    epsilon: float
    epsilon_at_dataset_delta: float
    requested_epsilon: float | None
    composed_after: float
    history: tuple[Segment, ...]
    privdl_version: str | None = None
    opacus_version: str | None = None

    @property
    def steps(self) -> int:
        """Steps of the run's history."""
        return sum(n for _s, _q, n in self.history)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerRun:
        d = dict(data)
        d["history"] = _segments(d.get("history") or ())
        return cls(**d)


@dataclass(frozen=True)
class Utility(_Value):
    """The private model's validation metric against a non-private baseline (not DP)."""

    metric: str
    private: float | None
    baseline: float
    difference: float | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Utility:
        return cls(**dict(data))


@dataclass(frozen=True)
class CoverageItem(_Value):
    """One item a report or model folder releases, and whether DP covers it.

    Attributes:
        item: what is released.
        released_in: ``"report"``, ``"model folder"``, ``"checkpoint"``.
        dp_protected: released through DP and counted in epsilon.
        data_dependent: computed from personal data.
        note: why.
    """

    item: str
    released_in: tuple[str, ...]
    dp_protected: bool
    data_dependent: bool
    note: str

    @property
    def covered(self) -> bool:
        """False for an item computed from personal data without DP."""
        return self.dp_protected or not self.data_dependent

    @property
    def protection(self) -> str:
        """``"DP"``, ``"public"`` or ``"NOT covered"``."""
        if self.dp_protected:
            return "DP"
        return "NOT covered" if self.data_dependent else "public"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CoverageItem:
        d = dict(data)
        d["released_in"] = tuple(d.get("released_in") or ())
        return cls(**d)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"privdl": __version__, "python": platform.python_version()}
    for name in ("opacus", "torch", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _hist(history: Iterable[Sequence[Any]]) -> tuple[Segment, ...]:
    return _segments(normalize_history(history))


def _prefix(history: Sequence[Sequence[Any]], steps: int) -> list[Segment]:
    """The first ``steps`` steps of a history."""
    out: list[Segment] = []
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
    if isinstance(status, Mapping):
        return dict(status)
    if hasattr(status, "to_dict"):
        return dict(status.to_dict())
    raise UsageError("ledger_before / ledger_after must be a BudgetStatus or a mapping")


@dataclass(frozen=True)
class PrivacyReport(_Value):
    """The privacy statement of one DP training run, or of a dataset's whole budget.

    Build one with :meth:`from_trainer`, :meth:`from_facts` or :meth:`from_ledger`;
    serialize with :meth:`to_dict` / :meth:`to_json`, load with :meth:`from_dict` /
    :meth:`from_json`, write with :meth:`save`.

    Attributes:
        scope: ``"run"`` (one training run) or ``"dataset"`` (every run on a dataset).
        dataset_id: the ledger's dataset id, when known.
        accountant: ``"prv"`` or ``"rdp"``.
        delta: delta at which ``epsilon`` is stated.
        epsilon: recomputed from ``history``: the run's epsilon (scope run) or the
            composition of every run on the dataset (scope dataset).
        history: ``(noise_multiplier, sample_rate, steps)`` segments behind ``epsilon``.
        privacy_unit: the unit (record or user) and the user-level guarantee.
        training: hyperparameters that matter for privacy (scope run; else None).
        epochs: per epoch, the validation metric and epsilon, recomputed.
        dataset: the ledger's dataset budget, when a ledger is known.
        runs: scope dataset: every run with its recomputed epsilon.
        utility: against a non-private baseline, when one is given.
        membership_inference: the loss-threshold test, when membership data was given.
        preprocessing: data-dependent preprocessing that DP does not cover.
        versions: privdl, opacus, torch, numpy, python.
        warnings: things the reader must know (disagreements, uncovered steps).
        created_at: ISO-8601 UTC time.
        coverage: every item the report and the model folder release.
        manifest: the RunManifest (``privdl.manifest``) of the run, or of the ledger
            read for a dataset report, as a dict; shown in the report and read back
            by ``privdl diff``.
    """

    scope: str
    dataset_id: str | None
    accountant: str
    delta: float
    epsilon: float
    history: tuple[Segment, ...]
    privacy_unit: PrivacyUnit
    training: Training | None = None
    epochs: tuple[Epoch, ...] = ()
    dataset: DatasetBudget | None = None
    runs: tuple[LedgerRun, ...] = ()
    utility: Utility | None = None
    membership_inference: MembershipInference | None = None
    preprocessing: tuple[str, ...] = ()
    versions: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    created_at: str = ""
    coverage: tuple[CoverageItem, ...] = ()
    manifest: Mapping[str, Any] | None = None

    _json_kind = "privacy report"

    # -- construction -----------------------------------------------------------

    @classmethod
    def from_trainer(
        cls,
        trainer: Any,
        *,
        baseline: float | Mapping[str, Any] | None = None,
        membership_data: tuple[Any, Any] | None = None,
        ledger_before: Any = None,
        ledger_after: Any = None,
        max_records_per_user: int | None = None,
        audit_data: tuple[Any, Any] | None = None,
    ) -> PrivacyReport:
        """The report of a fitted :class:`~privdl.PrivateTrainer`.

        The facts come from ``trainer.run_facts()`` (or :meth:`RunFacts.of
        <privdl.budget.facts.RunFacts.of>` for an object without it); the
        membership-inference test, when asked for, uses ``trainer.loss_per_sample``.

        Args:
            trainer: a fitted trainer.
            baseline: the validation metric of a non-private model on the same data, as
                a number or ``{"metric": name, "value": v}``.
            membership_data: ``(members, non_members)``, each ``(X, y)``: records the
                model was trained on and records it never saw, for the
                membership-inference test.
            ledger_before: the dataset's BudgetStatus before the run.
            ledger_after: the dataset's BudgetStatus after the run.
            max_records_per_user: at most this many records belong to one person; the
                report then also states user-level epsilon by group privacy.
            audit_data: the former name of ``membership_data``.

        Raises:
            NotFittedError: the trainer has not been fitted.
            UsageError: both ``membership_data`` and ``audit_data`` are given.
        """
        if audit_data is not None:
            if membership_data is not None:
                raise UsageError("give membership_data= or its former name audit_data=, not both")
            membership_data = audit_data
        facts = trainer.run_facts() if hasattr(trainer, "run_facts") else RunFacts.of(trainer)
        return cls.from_facts(
            facts,
            baseline=baseline,
            membership_data=membership_data,
            loss_per_sample=trainer.loss_per_sample if membership_data is not None else None,
            ledger_before=ledger_before,
            ledger_after=ledger_after,
            max_records_per_user=max_records_per_user,
        )

    @classmethod
    def from_facts(
        cls,
        facts: RunFacts,
        *,
        baseline: float | Mapping[str, Any] | None = None,
        membership_data: tuple[Any, Any] | None = None,
        loss_per_sample: Callable[[Any, Any], Any] | None = None,
        ledger_before: Any = None,
        ledger_after: Any = None,
        max_records_per_user: int | None = None,
    ) -> PrivacyReport:
        """The report of a run from its :class:`~privdl.budget.facts.RunFacts`.

        Args:
            facts: the run's record.
            baseline, ledger_before, ledger_after, max_records_per_user: as in
                :meth:`from_trainer`.
            membership_data: as in :meth:`from_trainer`; needs ``loss_per_sample``.
            loss_per_sample: ``f(X, y)`` -> the model's loss on each record.
        """
        hist = _hist(facts.accountant_history)
        accountant = facts.accountant
        delta = float(facts.delta)
        epsilon = epsilon_of(hist, delta=delta, accountant=accountant)
        warnings: list[str] = []
        search = facts.search
        if search is not None:
            # the released model is the best of a random-count search: its guarantee is
            # the whole search's, recomputed from every candidate's recorded history
            delta = float(search["delta"])
            own = epsilon_of(hist, delta=delta, accountant=accountant)
            epsilon = _tuning.recorded_search_epsilon(search)
            if not _agree(float(search["epsilon"]), epsilon):
                warnings.append(
                    f"the search reported epsilon={float(search['epsilon']):.4g}, the recomputation "
                    f"from its candidates' histories gives {epsilon:.4g}; this report uses the latter"
                )
            facts = replace(facts, epsilon=own)

        reported = facts.epsilon if search is None else None
        if reported is not None and not _agree(float(reported), epsilon):
            warnings.append(
                f"the trainer reported epsilon={float(reported):.4g}, the recomputation from "
                f"its accountant history gives {epsilon:.4g}; this report uses the latter"
            )

        training = Training(
            noise_multiplier=_float(facts.noise_multiplier),
            max_grad_norm=_float(facts.max_grad_norm),
            sample_rate=_float(facts.sample_rate),
            steps=int(sum(seg[2] for seg in hist)),
            epochs=facts.epochs,
            batch_size=facts.batch_size,
            n_samples=facts.n_samples,
            secure_mode=facts.secure_mode,
            target_epsilon=facts.target_epsilon,
            replaced_modules=facts.replaced_modules,
            model=facts.model_name,
        )
        epochs = _epoch_rows(facts, hist, delta, accountant)
        for row in epochs:
            rep = row.epsilon_reported
            if rep is not None and not _agree(rep, row.epsilon):
                warnings.append(
                    f"epoch {row.epoch}: trainer reported epsilon={rep:.4g}, recomputed {row.epsilon:.4g}"
                )
                break

        dataset = _dataset_block(
            facts.ledger,
            facts.dataset_id,
            ledger_before,
            ledger_after,
            accountant,
            run_id=facts.run_id,
        )
        utility = _utility(epochs, baseline)
        membership = None
        if membership_data is not None:
            if loss_per_sample is None:
                raise UsageError("membership_data needs loss_per_sample=, the model's per-record loss")
            membership = _membership(loss_per_sample, membership_data, epsilon, delta)
        if not training.secure_mode:
            warnings.append(
                "secure_mode is off: the noise comes from a non-cryptographic random number "
                "generator, which floating-point attacks on the Gaussian mechanism can exploit"
            )
        if facts.privacy_unit == "user":
            unit = _unit(epsilon, delta, facts.max_records_per_user, user_method="user-level DP-SGD")
        else:
            unit = _unit(epsilon, delta, max_records_per_user)
        warnings += _unit_warnings(unit)
        if facts.val_overlap:
            # no count: it is a figure computed from the records without noise
            warnings.append(
                "the validation data shares rows with the training data: the validation "
                "metric is computed partly on training records, without DP"
            )
        if facts.domain_source == "learned-unprotected":
            warnings.append(
                "the encoder's domains were learned from the training data without DP (domains="
                '"learned-unprotected"): encoder.json and the feature names are not covered'
            )
        coverage = _coverage(facts, utility=utility, membership=membership, dataset=dataset)
        if search is not None:
            coverage = (
                *coverage,
                _item(
                    f"the hyperparameter search over {int(search['candidates'])} candidates",
                    ("report", "model folder"),
                    dp=True,
                    data=True,
                    note=(
                        f"a random number of candidates ({search['distribution']}, mean "
                        f"{float(search['mean_runs']):g}), each DP, chosen by a DP score; the "
                        "Papernot-Steinke bound of the whole search is this report's epsilon"
                    ),
                ),
            )
        return cls(
            scope="run",
            dataset_id=facts.dataset_id,
            accountant=accountant,
            delta=delta,
            epsilon=epsilon,
            history=hist,
            privacy_unit=unit,
            training=training,
            epochs=epochs,
            dataset=dataset,
            utility=utility,
            membership_inference=membership,
            preprocessing=facts.data_dependent,
            versions=_versions(),
            warnings=tuple(warnings),
            created_at=_now(),
            coverage=coverage,
            manifest=facts.manifest,
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
        composed = _units.compose([(r.history, r.charge) for r in runs], delta=delta, accountant=accountant)
        warnings: list[str] = []
        run_rows: list[LedgerRun] = []
        cumulative: list[tuple[Any, Any]] = []
        for r in runs:
            own = (
                float(r.charge.epsilon)
                if r.charge is not None
                else epsilon_of(r.history, delta=r.delta, accountant=r.accountant)
            )
            cumulative.append((r.history, r.charge))
            run_rows.append(
                LedgerRun(
                    run_id=r.run_id,
                    created_at=r.created_at,
                    status=r.status,
                    model_name=r.model_name,
                    accountant=r.accountant,
                    delta=r.delta,
                    epsilon=own,
                    epsilon_at_dataset_delta=own
                    if r.charge is not None
                    else epsilon_of(r.history, delta=delta, accountant=accountant),
                    requested_epsilon=r.requested_epsilon,
                    composed_after=_units.compose(cumulative, delta=delta, accountant=accountant),
                    history=_hist(r.history),
                    privdl_version=r.privdl_version,
                    opacus_version=r.opacus_version,
                )
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
        naive = sum(row.epsilon_at_dataset_delta for row in run_rows)
        if status.privacy_unit == "user":
            # a user-level budget: every run was charged at user level (group privacy
            # for record-level runs, by the ledger)
            unit = _unit(composed, delta, status.max_records_per_user, user_method="user-level budget")
        else:
            unit = _unit(composed, delta, max_records_per_user)
        warnings += _unit_warnings(unit)
        dataset = DatasetBudget(
            total_epsilon=total,
            delta=delta,
            spent_before=None,
            spent_after=composed,
            naive_sum=naive,
            remaining=max(0.0, total - composed),
            runs=len(runs),
        )
        return cls(
            scope="dataset",
            dataset_id=dataset_id,
            accountant=accountant,
            delta=delta,
            epsilon=composed,
            history=_hist(all_hist),
            privacy_unit=unit,
            dataset=dataset,
            runs=tuple(run_rows),
            versions=_versions(),
            warnings=tuple(warnings),
            created_at=_now(),
            coverage=_ledger_coverage(),
            manifest=_ledger_manifest(dataset_id, accountant, total, delta, runs),
        )

    # -- serialization ----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-compatible data (what ``.json`` files hold)."""
        out = super().to_dict()
        if self.training is None:  # the saved shape of a dataset report
            out["training"] = {}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyReport:
        """Load from :meth:`to_dict` output (or a saved ``.json`` report, older ones included).

        Raises:
            InputError: not a privacy report.
        """
        try:
            d = dict(data)
            training = d.get("training") or None
            dataset = d.get("dataset")
            utility = d.get("utility")
            membership = d.get("membership_inference")
            return cls(
                scope=d["scope"],
                dataset_id=d["dataset_id"],
                accountant=d["accountant"],
                delta=d["delta"],
                epsilon=d["epsilon"],
                history=_segments(d.get("history") or ()),
                privacy_unit=PrivacyUnit.from_dict(d["privacy_unit"]),
                training=None if training is None else Training.from_dict(training),
                epochs=tuple(Epoch.from_dict(e) for e in d.get("epochs") or ()),
                dataset=None if dataset is None else DatasetBudget.from_dict(dataset),
                runs=tuple(LedgerRun.from_dict(r) for r in d.get("runs") or ()),
                utility=None if utility is None else Utility.from_dict(utility),
                membership_inference=None
                if membership is None
                else MembershipInference.from_dict(membership),
                preprocessing=tuple(d.get("preprocessing") or ()),
                versions=dict(d.get("versions") or {}),
                warnings=tuple(d.get("warnings") or ()),
                created_at=d.get("created_at", ""),
                coverage=tuple(CoverageItem.from_dict(c) for c in d.get("coverage") or ()),
                manifest=d.get("manifest"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("not a privdl privacy report") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report: ``.json`` (data), ``.md`` or self-contained ``.html``."""
        from privdl.render import save

        with_figures = Path(path).suffix.lower() in (".html", ".htm")
        return save(self.document(figures=with_figures), path, self.to_dict())

    # -- rendering (privdl.budget.report_document) --------------------------------

    def statement(self) -> str:
        """The privacy statement in plain words (the report's first paragraph)."""
        return report_document.statement(self)

    def document(self, *, figures: bool = True) -> Any:
        """The report as a :class:`privdl.render.Document` (``figures=False`` skips plots)."""
        return report_document.document(self, figures=figures)


# -- building blocks ----------------------------------------------------------------


def _ledger_manifest(
    dataset_id: str, accountant: str, total: float, delta: float, runs: Sequence[Any]
) -> dict[str, Any]:
    """The manifest of a dataset report: its configuration, and a fingerprint of the
    ledger runs it composes (ids, status, accountant histories: no data)."""
    import hashlib
    import json

    from privdl.manifest import RunManifest

    record = [[r.run_id, r.status, r.accountant, r.delta, [list(s) for s in r.history]] for r in runs]
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()
    return RunManifest.collect(
        config={
            "report": "dataset budget",
            "dataset_id": dataset_id,
            "accountant": accountant,
            "total_epsilon": total,
            "delta": delta,
        },
        data={"ledger runs": {"kind": "ledger runs", "sha256": digest, "rows": len(runs)}},
    ).to_dict()



def _agree(a: float, b: float) -> bool:
    return abs(a - b) <= max(_AGREE_ATOL, _AGREE_RTOL * abs(b))


def _float(value: Any) -> float | None:
    # NaN / inf (a diverged loss) cannot go into strict JSON: recorded as unknown
    if value is None:
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _unit(epsilon: float, delta: float, k: int | None, *, user_method: str | None = None) -> PrivacyUnit:
    """The privacy unit of a guarantee: with ``user_method`` (how it was obtained),
    (epsilon, delta) is already per person; else it is per record, and with ``k``
    records per person also stated per person by group privacy."""
    if user_method is not None:
        return PrivacyUnit(unit="user", max_records_per_user=k, epsilon=epsilon, delta=delta, method=user_method)
    if k is None:
        return PrivacyUnit(unit="record", max_records_per_user=None, epsilon=epsilon, delta=delta)
    user_eps, user_delta = group_privacy(epsilon, delta, int(k))
    return PrivacyUnit(
        unit="user", max_records_per_user=int(k), epsilon=user_eps, delta=user_delta, method="group privacy"
    )


def _unit_warnings(unit: PrivacyUnit) -> list[str]:
    if unit.unit == "user" and unit.delta >= 1e-3:
        return [
            f"the user-level guarantee is vacuous (delta={unit.delta:.3g}): group privacy "
            f"over {unit.max_records_per_user} records per person multiplies delta by "
            "e^((k-1) epsilon); train at user level instead (PrivateTrainer(..., "
            'privacy_unit="user", max_records_per_user=k)), which samples and clips people, '
            "not records"
        ]
    return []


def _epoch_rows(
    facts: RunFacts,
    hist: Sequence[Segment],
    delta: float,
    accountant: str,
) -> tuple[Epoch, ...]:
    """Per-epoch rows with epsilon recomputed from the history prefix of each epoch.

    The rows belong to the last segment of the history (the trainer's current run;
    earlier runs and any DP preprocessing come before it). An epoch ends at the
    cumulative ``steps`` of that run the trainer recorded for it; without that,
    epoch ``e`` of ``E`` ends after ``round(e / E * steps)`` steps of the whole history
    (Poisson sampling runs ``1/q`` steps per epoch, so the steps split evenly).
    """
    rows: list[Epoch] = []
    total_steps = int(sum(int(s[2]) for s in hist))
    n = len(facts.history)
    for i, entry in enumerate(facts.history):
        # the trainer's cumulative step count when it gives one, else an even split
        if entry.steps is not None and hist:
            steps = entry.steps
            *before, (sigma, q, _n) = hist
            prefix = [*before, (sigma, q, steps)] if steps > 0 else list(before)
        else:
            steps = round((i + 1) / n * total_steps)
            prefix = _prefix(hist, steps)
        eps = epsilon_of(prefix, delta=delta, accountant=accountant) if prefix else 0.0
        rows.append(
            Epoch(
                epoch=entry.epoch,
                metric=_float(entry.metric),
                epsilon=eps,
                epsilon_reported=_float(entry.epsilon),
                steps=steps,
                metric_name=entry.metric_name,
            )
        )
    return tuple(rows)


def _utility(epochs: Sequence[Epoch], baseline: Any) -> Utility | None:
    if baseline is None:
        return None
    if isinstance(baseline, Mapping):
        name, value = str(baseline.get("metric", "validation metric")), float(baseline["value"])
    else:
        named = [e.metric_name for e in epochs if e.metric_name]
        name, value = (str(named[-1]) if named else "validation metric"), float(baseline)
    private = next((e.metric for e in reversed(epochs) if e.metric is not None), None)
    return Utility(
        metric=name,
        private=private,
        baseline=value,
        difference=None if private is None else private - value,
    )


def _membership(
    loss_per_sample: Callable[[Any, Any], Any], data: Any, epsilon: float, delta: float
) -> MembershipInference:
    try:
        members, non_members = data
        (xm, ym), (xn, yn) = members, non_members
    except (TypeError, ValueError) as exc:
        raise UsageError("membership_data must be ((X_members, y_members), (X_non, y_non))") from exc
    return loss_threshold_test(loss_per_sample(xm, ym), loss_per_sample(xn, yn), epsilon=epsilon, delta=delta)


def _item(item: str, released_in: Sequence[str], *, dp: bool, data: bool, note: str) -> CoverageItem:
    return CoverageItem(
        item=item, released_in=tuple(released_in), dp_protected=dp, data_dependent=data, note=note
    )


def coverage_items(
    facts: RunFacts | Any,
    *,
    utility: Any = None,
    membership: Any = None,
    dataset: Any = None,
) -> list[dict[str, Any]]:
    """What a run's report and model folder release, each item classified, as plain data.

    ``dp_protected``: released through DP-SGD (or another DP release in the run's
    history) and so counted in epsilon. ``data_dependent``: computed from personal
    data. An item that is data-dependent and not DP-protected is *not covered*.
    (A report holds the same items as :class:`CoverageItem` values.)

    Args:
        facts: the run's :class:`~privdl.budget.facts.RunFacts`, or a fitted trainer
            (its ``run_facts()`` is used).
        utility, membership, dataset: the report's blocks, when it has them (the model
            folder has none of them).
    """
    if not isinstance(facts, RunFacts):
        facts = facts.run_facts() if hasattr(facts, "run_facts") else RunFacts.of(facts)
    items = _coverage(facts, utility=utility, membership=membership, dataset=dataset)
    return [c.to_dict() for c in items]


def _coverage(
    facts: RunFacts,
    *,
    utility: Any = None,
    membership: Any = None,
    dataset: Any = None,
) -> tuple[CoverageItem, ...]:
    folder = ("model folder", "checkpoint") if facts.checkpoints else ("model folder",)
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
    if facts.model_buffers:
        items.append(
            _item(
                f"model buffers ({facts.model_buffers}: non-trainable state)",
                folder,
                dp=False,
                data=True,
                note="not trained by DP-SGD: covered only if no layer updates them from the "
                "training data, which privdl does not check",
            )
        )
    if facts.checkpoints:
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
        if facts.privacy_unit == "user":
            items.append(
                _item(
                    "user-level resume state (number of users, one random key per record, "
                    "SHA-256 of the records' grouping into users)",
                    ("checkpoint",),
                    dp=False,
                    data=True,
                    note="the keys that chose each user's kept records are random and independent "
                    "of the data; the number of users is released exactly and the digest "
                    "identifies the grouping without holding a user id",
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
    task_note = (
        "fixed by loss="
        if facts.loss_given
        else "inferred from the training targets (their type and whether every value is "
        "whole); pass loss= to fix it in advance"
    )
    items.append(
        _item(
            "task (binary, multiclass or regression)",
            folder,
            dp=False,
            data=not facts.loss_given,
            note=task_note,
        )
    )
    if facts.has_encoder or facts.feature_names:
        items.append(_encoder_item(facts, folder))
        if facts.screened:
            items.append(
                _item(
                    "choice of feature columns among those nobody named",
                    folder,
                    dp=False,
                    data=True,
                    note=f"{len(facts.screened)} column(s) screened on the training table without DP "
                    "(identifier-like or not, numbers or text); only names and kinds are kept",
                )
            )
    if any(row.metric is not None for row in facts.history):
        note = (
            "computed on the val= data without noise: DP covers the training records, "
            "not the validation records"
        )
        if facts.val_overlap:
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
    return tuple(items)


def _encoder_item(facts: RunFacts, folder: Sequence[str]) -> CoverageItem:
    """The encoder's domains (encoder.json, feature names) by where they came from."""
    learned = facts.data_dependent
    where = ("report", *folder) if learned else tuple(folder)
    item = "feature names and encoder domains (encoder.json)"
    # "policy", "dp" or "learned-unprotected" (the trainer's record, else the encoder's)
    source = facts.domain_source
    if source == "learned-unprotected" or learned:
        note = "learned from the training data without noise"
        if learned:
            note += " (listed under preprocessing not covered by DP)"
        return _item(item, where, dp=False, data=True, note=note)
    if source == "dp":
        own = facts.domain_epsilon
        alone = f" (epsilon {float(own):.3g} on its own)" if own is not None else ""
        return _item(
            item,
            where,
            dp=True,
            data=True,
            note=f"estimated with DP{alone}; the release is a segment of the run's history and "
            "counted in the run's epsilon",
        )
    if source == "policy" or (source is None and facts.has_encoder):
        return _item(
            item, where, dp=False, data=False, note="from the policy, its hierarchies or given bounds"
        )
    return _item(
        item, where, dp=False, data=True, note="origin not recorded: treated as learned from the data"
    )


def _ledger_coverage() -> tuple[CoverageItem, ...]:
    return (
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
    )


def _dataset_block(
    ledger: Any,
    dataset_id: str | None,
    before: Any,
    after: Any,
    accountant: str,
    *,
    run_id: str | None = None,
) -> DatasetBudget | None:
    b, a = _status_dict(before), _status_dict(after)
    if ledger is None and a is None and b is None:
        return None
    known = a or b or {}
    out: dict[str, Any] = {
        "total_epsilon": known.get("epsilon"),
        "delta": known.get("delta"),
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
        composed = _units.compose([(r.history, r.charge) for r in runs], delta=delta, accountant=accountant)
        out.update(
            total_epsilon=total,
            delta=delta,
            spent_after=composed,
            naive_sum=sum(
                float(r.charge.epsilon)
                if r.charge is not None
                else epsilon_of(r.history, delta=delta, accountant=accountant)
                for r in runs
            ),
            remaining=max(0.0, total - composed),
        )
        if run_id is not None and any(r.run_id == run_id for r in runs):
            out["spent_before"] = _units.compose(
                [(r.history, r.charge) for r in runs if r.run_id != run_id],
                delta=delta,
                accountant=accountant,
            )
    return DatasetBudget(**out)
