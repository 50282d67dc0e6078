"""BudgetLedger: the per-dataset privacy budget, kept across runs and processes.

The ledger stores, for each ``dataset_id``, a total ``(epsilon, delta)`` and every
run's accountant history (``(noise_multiplier, sample_rate, steps)`` segments) with its
time, model name and privdl/opacus versions. Spent budget is *recomputed* from those
histories by composing them under the accountant, never copied from what a run
claimed, so the ledger is the single source of truth. Every reservation, settlement
and status of a dataset is composed under the accountant set for it with
:meth:`BudgetLedger.set_budget`: a run that names another accountant is re-accounted
under the dataset's (its history does not depend on the accountant, so this is exact).

A run reserves its planned history before its first step; the reservation is checked
and written in one transaction (``BEGIN IMMEDIATE`` on SQLite, a row lock on
PostgreSQL), so two processes charging the same dataset at once can never overspend.
A run that would exceed the total is refused with
:class:`~privdl.errors.BudgetExceededError`; it is never silently shrunk. After
training the run settles with its actual history. A run that crashes keeps its
reservation: spent budget is never lost.

Storage (:mod:`privdl.budget.store`): a SQLite file (stdlib ``sqlite3``, WAL journal,
full fsync) for a path or a ``sqlite:///`` URL; PostgreSQL (SQLAlchemy + psycopg,
``pip install 'privdl[postgres]'``) for a ``postgresql://`` URL.

Example:
    >>> ledger = BudgetLedger("budget.db")                       # doctest: +SKIP
    >>> ledger.set_budget("retention-2026-11", epsilon=8.0, delta=1e-5)  # doctest: +SKIP
    >>> run = ledger.reserve("retention-2026-11", history=[(1.1, 0.01, 3000)],
    ...                      delta=1e-5, accountant="prv", model_name="mlp",
    ...                      epsilon=3.0)                         # doctest: +SKIP
    >>> ledger.settle(run, history=[(1.1, 0.01, 3000)])          # doctest: +SKIP
    >>> ledger.remaining("retention-2026-11")                    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from privdl.audit.operation import operation
from privdl.budget.accounting import (
    History,
    check_accountant,
    check_delta,
    check_epsilon,
    epsilon_of,
    naive_epsilon_sum,
    noise_multiplier_for,
)
from privdl.budget.accounting.remaining import RemainingTarget, largest_converted_target
from privdl.budget.accounting.units import Charge, check_unit, compose, fixed_part, unit_charge
from privdl.budget.store import RUN_COLUMNS, Store, Transaction, open_store
from privdl.errors import (
    BudgetExceededError,
    InputError,
    PolicyError,
    PrivacyParameterError,
    UsageError,
)
from privdl.serialize import JSONSerializable

__all__ = ["MAX_DELTA", "BudgetLedger", "BudgetStatus", "RunRecord", "check_budget"]

# Composition is computed in floating point twice (calibration, then the check); a run
# calibrated to spend exactly what is left must not be refused for rounding.
_REL_TOL = 1e-9
# A dataset's delta above this is refused unless forced: delta is the probability the
# epsilon guarantee fails outright, and must be far below 1/n (usually 1e-5 or less).
MAX_DELTA = 1e-3


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _versions() -> tuple[str, str]:
    from importlib import metadata

    from privdl._version import __version__

    try:
        opacus_version = metadata.version("opacus")
    except metadata.PackageNotFoundError:
        opacus_version = "not installed"
    return __version__, opacus_version


@dataclass(frozen=True)
class RunRecord(JSONSerializable):
    """One run charged to a dataset.

    Attributes:
        run_id: identifier returned by :meth:`BudgetLedger.reserve`.
        dataset_id: the dataset charged.
        created_at: ISO-8601 UTC time of the reservation.
        settled_at: ISO-8601 UTC time of settlement, ``None`` while reserved.
        status: ``"reserved"`` (planned or crashed run; counted in full) or ``"settled"``.
        model_name: name the run gave its model.
        privdl_version: privdl version that wrote the record.
        opacus_version: Opacus version installed when the record was written.
        accountant: the accountant the ledger composed and recorded the run under:
            the dataset's, whatever the run named.
        delta: the run's own delta.
        requested_epsilon: the epsilon the run asked for (``None`` if it gave none).
        epsilon: the run's own epsilon at ``delta`` under ``accountant``, computed by the
            ledger from ``history``.
        history: the run's :class:`~privdl.budget.accounting.History`
            (``(noise_multiplier, sample_rate, steps)`` segments).
        privacy_unit: the unit the run is accounted in (``"record"`` or ``"user"``).
        charge: the fixed ``(epsilon, delta)`` charged in the budget's unit when the run
            is not composed by its history (a run in the other unit, by group privacy;
            a hyperparameter search), else ``None``
            (see :mod:`privdl.budget.accounting.units`).
    """

    run_id: str
    dataset_id: str
    created_at: str
    settled_at: str | None
    status: str
    model_name: str
    privdl_version: str
    opacus_version: str
    accountant: str
    delta: float
    requested_epsilon: float | None
    epsilon: float
    history: History = field(default_factory=History)
    privacy_unit: str = "record"
    charge: Charge | None = None

    # to_json / from_json: privdl.serialize.JSONSerializable
    _json_kind = "ledger run record"

    def __post_init__(self) -> None:
        # a record built by hand from (sigma, q, steps) tuples holds the same validated value
        object.__setattr__(self, "history", History(self.history))

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON-compatible data (``history`` as ``[sigma, q, steps]`` lists)."""
        data = asdict(self)
        data["history"] = [list(seg) for seg in self.history]
        data["charge"] = None if self.charge is None else self.charge.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """Load from :meth:`to_dict` output."""
        data = dict(data)
        data["history"] = History(data.get("history", ()))
        data["charge"] = Charge.from_dict(data.get("charge"))
        return cls(**data)


@dataclass(frozen=True)
class BudgetStatus(JSONSerializable):
    """A snapshot of one dataset's budget, as the ledger computes it.

    Attributes:
        dataset_id: the dataset.
        epsilon: total epsilon of the budget.
        delta: delta of the budget; every spent figure is at this delta.
        accountant: accountant used to compose the runs.
        spent: epsilon of the composition of every run's history (reserved and settled),
            never negative.
        naive_sum: the runs' own epsilons added up (basic composition, for comparison).
        remaining: ``max(0, epsilon - spent)``, never above ``epsilon``.
        runs: number of runs charged.
        reserved: number of those still reserved (running or crashed).
        taken_at: ISO-8601 UTC time of the snapshot.
        privacy_unit: what the budget protects: ``"record"`` or ``"user"`` (a person
            with all their records).
        max_records_per_user: the declared maximum of records per person (group
            privacy for record-level runs on a user-level budget), or ``None``.
    """

    dataset_id: str
    epsilon: float
    delta: float
    accountant: str
    spent: float
    naive_sum: float
    remaining: float
    runs: int
    reserved: int
    taken_at: str
    privacy_unit: str = "record"
    max_records_per_user: int | None = None

    # to_dict / from_dict / to_json / from_json: privdl.serialize.JSONSerializable
    _json_kind = "budget status"


def _run_from_row(row: Sequence[Any]) -> RunRecord:
    values = list(row)
    values[12] = History(json.loads(values[12]))
    values[13] = str(values[13] or "record")
    values[14] = None if values[14] is None else Charge.from_dict(json.loads(values[14]))
    return RunRecord(*values)


def _parts(runs: Iterable[RunRecord]) -> list[tuple[History, Charge | None]]:
    return [(r.history, r.charge) for r in runs]


def _own_epsilon(run: RunRecord, delta: float, accountant: str) -> float:
    if run.charge is not None:
        return float(run.charge.epsilon)
    return float(epsilon_of(run.history, delta=delta, accountant=accountant))


class BudgetLedger:
    """Per-dataset privacy budgets and every run charged to them.

    Args:
        url_or_path: a SQLite file path, ``sqlite:///PATH``, or ``postgresql://...``.
        create: create the ledger when it does not exist yet (``False`` for readers
            such as ``privdl budget show``, which must not create files).

    Raises:
        InputError: the file is not a privdl ledger (foreign SQLite, corrupt bytes,
            other schema version), or cannot be opened.
        MissingDependencyError: a PostgreSQL URL without ``privdl[postgres]``.

    Example:
        >>> ledger = BudgetLedger("budget.db")                        # doctest: +SKIP
        >>> ledger.set_budget("adult", epsilon=3.0, delta=1e-5)         # doctest: +SKIP
        >>> ledger.spent("adult"), ledger.remaining("adult")            # doctest: +SKIP
        (0.0, 3.0)
    """

    def __init__(self, url_or_path: str | os.PathLike[str], *, create: bool = True) -> None:
        self._store: Store = open_store(url_or_path, create=create)
        self.location = self._store.location

    def __sklearn_clone__(self) -> BudgetLedger:
        """``sklearn.base.clone`` of an estimator holding this ledger shares it: every clone
        charges the same budget (a copy would not be one)."""
        return self

    def __repr__(self) -> str:
        return f"BudgetLedger({self.location!r})"

    def close(self) -> None:
        """Close the connection (also done when the object is garbage-collected)."""
        self._store.close()

    def __enter__(self) -> BudgetLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- budgets --------------------------------------------------------------

    def set_budget(
        self,
        dataset_id: str,
        *,
        epsilon: float,
        delta: float,
        accountant: str | None = None,
        force: bool = False,
        audit_log: Any = None,
        privacy_unit: str | None = None,
        max_records_per_user: int | None = None,
    ) -> BudgetStatus:
        """Create or change a dataset's total budget.

        Lowering a budget below what the dataset has already spent is refused:
        spent budget cannot be given back. The accountant set here is the one every
        reservation, settlement and status of the dataset is composed under.

        Args:
            dataset_id: the dataset's identifier (not personal data).
            epsilon: total epsilon, > 0.
            delta: total delta, in (0, 1e-3]; a larger one (up to 1) needs ``force``.
            accountant: accountant used to compose the runs (``"prv"`` or ``"rdp"``);
                ``None`` keeps an existing dataset's accountant (``"prv"`` for a new one).
            force: accept a delta above 1e-3 (with a warning; recorded in the audit entry).
            audit_log: an AuditLog, a path, or None; receives one ``budget.set`` entry.
            privacy_unit: what the budget protects, ``"record"`` or ``"user"`` (a person
                with all their records); ``None`` keeps an existing dataset's
                (``"record"`` for a new one). A run in the other unit is charged by
                group privacy (:mod:`privdl.budget.accounting.units`).
            max_records_per_user: the most records one person has in the dataset: a
                record-level run on a user-level budget is charged by group privacy
                over it, and refused while it is not declared. ``None`` keeps the
                existing value.

        Returns:
            The dataset's status after the change.

        Raises:
            PrivacyParameterError: epsilon or delta out of range (or above 1e-3 without
                ``force``), unknown accountant.
            PolicyError: a malformed ``dataset_id``.
            BudgetExceededError: the new total is below what is already spent.
            PolicyError: the unit or the maximum records per user of a dataset with
                runs would change (its runs were charged under them).
        """
        _check_dataset_id(dataset_id)
        if privacy_unit is not None:
            check_unit(privacy_unit)
        if max_records_per_user is not None and not (
            isinstance(max_records_per_user, int) and not isinstance(max_records_per_user, bool)
            and max_records_per_user >= 1
        ):
            raise UsageError("max_records_per_user must be a positive integer")
        check_budget(epsilon=epsilon, delta=delta, force=force)
        if accountant is not None:
            check_accountant(accountant)
        if delta > MAX_DELTA:
            warnings.warn(
                f"a dataset budget with delta={delta:g} (above {MAX_DELTA:.0e}) was forced; "
                "the trainer still refuses a delta at or above 1/n",
                UserWarning,
                stacklevel=2,
            )
        params: dict[str, Any] = {
            "dataset_id": dataset_id,
            "epsilon": epsilon,
            "delta": delta,
            "accountant": accountant,
            "ledger": self.location,
        }
        if force:
            params["force"] = True
        if privacy_unit is not None:
            params["privacy_unit"] = privacy_unit
        if max_records_per_user is not None:
            params["max_records_per_user"] = max_records_per_user
        # the entry is written inside the transaction: if it cannot be, the change rolls back
        with (
            self._store.transaction(write=True) as tx,
            operation(audit_log, "budget.set", params=params) as op,
        ):
            existing = tx.rows(self._store.lock_dataset_sql(), {"d": dataset_id})
            now = _now()
            if accountant is None:
                accountant = str(existing[0][2]) if existing else "prv"
                op.update(params={"accountant": accountant})
            old_unit, old_k = self._unit(tx, dataset_id) if existing else ("record", None)
            unit = privacy_unit or old_unit
            k = max_records_per_user if max_records_per_user is not None else old_k
            if existing:
                runs = self._runs(tx, dataset_id)
                if runs and (unit != old_unit or k != old_k):
                    raise PolicyError(
                        f"dataset {dataset_id!r} has runs charged as {old_unit}-level"
                        f"{'' if old_k is None else f' with max_records_per_user={old_k}'}: its "
                        "privacy unit and max_records_per_user cannot change"
                    )
                spent = compose(_parts(runs), delta=delta, accountant=accountant)
                if spent > epsilon * (1 + _REL_TOL):
                    raise BudgetExceededError(
                        f"dataset {dataset_id!r} has already spent epsilon={spent:.4g} at "
                        f"delta={delta:g}; its budget cannot be set to {epsilon:g}",
                        requested=float(epsilon),
                        remaining=0.0,
                        dataset_id=dataset_id,
                    )
                tx.rows(
                    "UPDATE privdl_datasets SET epsilon = :e, delta = :dl, accountant = :a, "
                    "updated_at = :t, privacy_unit = :u, max_records_per_user = :k WHERE dataset_id = :d",
                    {
                        "e": float(epsilon),
                        "dl": float(delta),
                        "a": accountant,
                        "t": now,
                        "d": dataset_id,
                        "u": unit,
                        "k": k,
                    },
                )
            else:
                tx.rows(
                    "INSERT INTO privdl_datasets (dataset_id, epsilon, delta, accountant, "
                    "created_at, updated_at, privacy_unit, max_records_per_user) "
                    "VALUES (:d, :e, :dl, :a, :t, :t, :u, :k)",
                    {
                        "e": float(epsilon),
                        "dl": float(delta),
                        "a": accountant,
                        "t": now,
                        "d": dataset_id,
                        "u": unit,
                        "k": k,
                    },
                )
        return self.status(dataset_id)

    def budget(self, dataset_id: str) -> tuple[float, float]:
        """The dataset's total ``(epsilon, delta)``.

        Raises:
            PolicyError: no budget is set for ``dataset_id``.
        """
        with self._store.transaction(write=False) as tx:
            eps, delta, _ = self._dataset(tx, dataset_id)
        return eps, delta

    def accountant(self, dataset_id: str) -> str:
        """The accountant the dataset's runs are composed, charged and reported under.

        A trainer charging this dataset should account its own run under it too, so
        that its reported epsilon is the ledger's figure.

        Raises:
            PolicyError: no budget is set for ``dataset_id``.
        """
        with self._store.transaction(write=False) as tx:
            _, _, accountant = self._dataset(tx, dataset_id)
        return accountant

    def datasets(self) -> list[str]:
        """Identifiers of every dataset with a budget, sorted."""
        with self._store.transaction(write=False) as tx:
            rows = tx.rows("SELECT dataset_id FROM privdl_datasets ORDER BY dataset_id")
        return [r[0] for r in rows]

    # -- reading --------------------------------------------------------------

    def runs(self, dataset_id: str) -> list[RunRecord]:
        """Every run charged to the dataset, oldest first."""
        with self._store.transaction(write=False) as tx:
            self._dataset(tx, dataset_id)
            return self._runs(tx, dataset_id)

    def run(self, run_id: str) -> RunRecord:
        """One run by its id (e.g. to resume a checkpointed run on its reservation).

        Raises:
            InputError: no such run.
        """
        with self._store.transaction(write=False) as tx:
            return self._run(tx, run_id)

    def history(self, dataset_id: str) -> History:
        """All segments of every run (settled and reserved) on the dataset, oldest first."""
        return _concat(self.runs(dataset_id))

    def spent(self, dataset_id: str, *, accountant: str | None = None) -> float:
        """Epsilon spent on the dataset: composition of all run histories at its delta.

        Args:
            dataset_id: the dataset.
            accountant: a what-if view under another accountant; the budget itself is
                always charged under the dataset's (:meth:`accountant`).
        """
        return self.status(dataset_id, accountant=accountant).spent

    def naive_sum(self, dataset_id: str) -> float:
        """The runs' own epsilons added up (basic composition; looser than :meth:`spent`)."""
        return self.status(dataset_id).naive_sum

    def remaining(self, dataset_id: str, *, accountant: str | None = None) -> float:
        """Epsilon still available: ``max(0, total - spent)``, never above the total."""
        return self.status(dataset_id, accountant=accountant).remaining

    def status(self, dataset_id: str, *, accountant: str | None = None) -> BudgetStatus:
        """A consistent snapshot of the dataset's budget, spent and remaining epsilon.

        Composed under the dataset's accountant unless ``accountant`` names another
        (a what-if view: reservations are always checked under the dataset's).
        """
        with self._store.transaction(write=False) as tx:
            eps, delta, ds_accountant = self._dataset(tx, dataset_id)
            unit, k = self._unit(tx, dataset_id)
            runs = self._runs(tx, dataset_id)
        acc = check_accountant(accountant or ds_accountant)
        spent = compose(_parts(runs), delta=delta, accountant=acc)
        return BudgetStatus(
            dataset_id=dataset_id,
            epsilon=eps,
            delta=delta,
            accountant=acc,
            spent=spent,
            naive_sum=naive_epsilon_sum(_own_epsilon(r, delta, acc) for r in runs),
            remaining=min(eps, max(0.0, eps - spent)),
            runs=len(runs),
            reserved=sum(r.status == "reserved" for r in runs),
            taken_at=_now(),
            privacy_unit=unit,
            max_records_per_user=k,
        )

    # -- charging -------------------------------------------------------------

    def reserve(
        self,
        dataset_id: str,
        *,
        history: Iterable[Sequence[Any]],
        delta: float,
        accountant: str | None = None,
        model_name: str = "",
        epsilon: float | None = None,
        audit_log: Any = None,
        privacy_unit: str = "record",
        charge: Charge | None = None,
    ) -> str:
        """Reserve a run's planned history before its first step, atomically.

        The planned history is composed with every recorded run of the dataset under
        the dataset's accountant at the dataset's delta; if that exceeds the dataset's
        total epsilon the run is refused and nothing is written.

        Args:
            dataset_id: the dataset to charge.
            history: the run's planned ``(noise_multiplier, sample_rate, steps)`` segments.
            delta: the run's own delta (its own epsilon is reported at this delta).
            accountant: the accountant the run used, ``"prv"`` or ``"rdp"`` (checked, and
                kept in the audit entry). The run is composed, charged and recorded
                under the dataset's accountant (:meth:`accountant`) whatever it names:
                the history is the same under both, so re-accounting it is exact.
            model_name: a name for the model, kept in the record.
            epsilon: the epsilon the run asked for (for the record and the refusal).
            audit_log: an AuditLog, a path, or None; receives one ``budget.reserve`` entry.
            privacy_unit: the unit the run is accounted in; a run in the other unit than
                the dataset's budget is charged by group privacy
                (:func:`~privdl.budget.accounting.units.unit_charge`).
            charge: the run's fixed ``(epsilon, delta)`` guarantee in its own unit, for
                a run that is not composed by its history (a hyperparameter search);
                ``history`` is then kept for the record only.

        Returns:
            The new run's id, for :meth:`settle`.

        Raises:
            BudgetExceededError: the run would exceed the dataset's budget
                (``.requested``, ``.remaining``, ``.dataset_id`` set).
            PolicyError: unknown dataset.
            PrivacyParameterError: malformed history, delta out of range, unknown
                accountant.
            PolicyError: a record-level run on a user-level budget without a declared
                maximum of records per user.
        """
        hist = History(history)
        check_unit(privacy_unit)
        if accountant is not None:
            check_accountant(accountant)
        check_delta(delta)
        privdl_version, opacus_version = _versions()
        run_id = uuid.uuid4().hex
        params: dict[str, Any] = {
            "dataset_id": dataset_id,
            "run_id": run_id,
            "history": hist,
            "delta": delta,
            "accountant": accountant,
            "model_name": model_name,
            "epsilon": epsilon,
            "ledger": self.location,
            "privacy_unit": privacy_unit,
        }
        if charge is not None:
            params["charge"] = charge.to_dict()
        with operation(audit_log, "budget.reserve", params=params) as op:
            # Composition under PRV can take seconds for many distinct runs, so it is
            # computed on a snapshot outside the write lock; under the lock the snapshot
            # is compared with the ledger and only recomputed if another run got in
            # (or the dataset's budget or accountant changed).
            with self._store.transaction(write=False) as tx:
                snapshot = self._snapshot(tx, dataset_id)
            own = self._run_charge(snapshot, hist, delta, privacy_unit, charge)
            figures = self._compose(snapshot, hist, own)
            run_eps = own.epsilon if own is not None else epsilon_of(hist, delta=delta, accountant=snapshot[2])
            with self._store.transaction(write=True) as tx:
                current = self._snapshot(tx, dataset_id, lock=True)
                if current != snapshot:
                    own = self._run_charge(current, hist, delta, privacy_unit, charge)
                    figures = self._compose(current, hist, own)
                ds_accountant = current[2]
                if ds_accountant != snapshot[2] or current != snapshot:
                    run_eps = (
                        own.epsilon if own is not None else epsilon_of(hist, delta=delta, accountant=ds_accountant)
                    )
                total, ds_delta, before, after = figures
                requested = float(epsilon) if epsilon is not None else run_eps
                if after > total * (1 + _REL_TOL):
                    raise BudgetExceededError(
                        f"run refused: dataset {dataset_id!r} would spend epsilon>={after:.4g} "
                        f"of {total:g} at delta={ds_delta:g} (requested {requested:.4g}, "
                        f"remaining {max(0.0, total - before):.4g})",
                        requested=requested,
                        remaining=max(0.0, total - before),
                        dataset_id=dataset_id,
                    )
                tx.rows(
                    f"INSERT INTO privdl_runs ({RUN_COLUMNS}) VALUES (:r, :d, :t, NULL, "  # noqa: S608
                    "'reserved', :m, :pv, :ov, :a, :dl, :req, :e, :h, :u, :c)",
                    {
                        "r": run_id,
                        "d": dataset_id,
                        "t": _now(),
                        "m": model_name,
                        "pv": privdl_version,
                        "ov": opacus_version,
                        "a": ds_accountant,
                        "dl": float(delta),
                        "req": None if epsilon is None else float(epsilon),
                        "e": run_eps,
                        "h": json.dumps(hist),
                        "u": privacy_unit,
                        "c": None if own is None else json.dumps(own.to_dict()),
                    },
                )
            op.update(
                params={
                    "spent_before": before,
                    "spent_after": after,
                    "total": total,
                    "dataset_accountant": ds_accountant,
                    "dataset_privacy_unit": current[3],
                    "charged": None if own is None else own.to_dict(),
                }
            )
        return run_id

    def settle(
        self,
        run_id: str,
        *,
        history: Iterable[Sequence[Any]],
        audit_log: Any = None,
        charge: Charge | None = None,
    ) -> RunRecord:
        """Replace a reservation by the run's actual history (after training).

        A run that stopped early settles with fewer steps and gives the rest back.
        A run that took *more* than it reserved is recorded truthfully (spent budget
        is never hidden) and, if the dataset is then over budget,
        :class:`~privdl.errors.BudgetExceededError` is raised after recording. The run's
        epsilon is recomputed under the dataset's accountant. A run charged by a fixed
        guarantee (``charge=``, in the run's own unit, or a run in the other unit than
        the budget's) has that charge recomputed from what it settles with.

        Raises:
            InputError: unknown run.
            UsageError: the run is already settled.
            BudgetExceededError: the recorded history takes the dataset over its total.
        """
        hist = History(history)
        with operation(
            audit_log,
            "budget.settle",
            params={"run_id": run_id, "history": hist, "ledger": self.location},
        ) as op:
            with self._store.transaction(write=True) as tx:
                run = self._run(tx, run_id)
                if run.status != "reserved":
                    raise UsageError(f"run {run_id!r} is already settled")
                _, _, ds_accountant = self._dataset(tx, run.dataset_id, lock=True)
                unit, k = self._unit(tx, run.dataset_id)
                own = unit_charge(
                    run_unit=run.privacy_unit,
                    budget_unit=unit,
                    max_records_per_user=k,
                    history=hist,
                    delta=run.delta,
                    accountant=ds_accountant,
                    charge=charge,
                )
                run_eps = (
                    own.epsilon if own is not None else epsilon_of(hist, delta=run.delta, accountant=ds_accountant)
                )
                tx.rows(
                    "UPDATE privdl_runs SET status = 'settled', settled_at = :t, history = :h, "
                    "epsilon = :e, accountant = :a, charge = :c WHERE run_id = :r",
                    {
                        "t": _now(),
                        "h": json.dumps(hist),
                        "e": run_eps,
                        "a": ds_accountant,
                        "c": None if own is None else json.dumps(own.to_dict()),
                        "r": run_id,
                    },
                )
            # The over-budget check needs the whole composition: done after the commit,
            # outside the write lock (the record is written truthfully either way).
            with self._store.transaction(write=False) as tx:
                total, ds_delta, ds_accountant = self._dataset(tx, run.dataset_id)
                all_runs = self._runs(tx, run.dataset_id)
            after = compose(_parts(all_runs), delta=ds_delta, accountant=ds_accountant)
            op.update(params={"dataset_id": run.dataset_id, "spent_after": after, "total": total})
            if after > total * (1 + _REL_TOL):
                raise BudgetExceededError(
                    f"run {run_id!r} spent more than it reserved: dataset {run.dataset_id!r} is "
                    f"now at epsilon={after:.4g} of {total:g} (recorded)",
                    requested=run_eps,
                    remaining=0.0,
                    dataset_id=run.dataset_id,
                )
        return self.run(run_id)

    def calibrate_remaining(
        self,
        dataset_id: str,
        *,
        sample_rate: float,
        steps: int,
        accountant: str | None = None,
    ) -> float:
        """Noise multiplier so that a run of ``steps`` at ``sample_rate`` spends what is left.

        The result composed with every recorded run stays within the dataset's total
        (``epsilon="remaining"`` in the trainer). The run must still :meth:`reserve`:
        another process may have charged the dataset in between. The calibration is
        under the dataset's accountant (the one :meth:`reserve` checks against);
        ``accountant``, if given, is only checked to be a known name.

        Raises:
            BudgetExceededError: nothing is left on the dataset.
        """
        if accountant is not None:
            check_accountant(accountant)
        with self._store.transaction(write=False) as tx:
            total, ds_delta, ds_accountant = self._dataset(tx, dataset_id)
            runs = self._runs(tx, dataset_id)
        spent = compose(_parts(runs), delta=ds_delta, accountant=ds_accountant)
        # runs charged by a fixed guarantee take their share off the total and delta
        eps_f, delta_f = fixed_part(r.charge for r in runs)
        prior = _concat(r for r in runs if r.charge is None)
        if spent >= total * (1 - 1e-6) or delta_f >= ds_delta:
            raise BudgetExceededError(
                f"dataset {dataset_id!r} has no budget left (spent {spent:.4g} of {total:g})",
                requested=None,
                remaining=max(0.0, total - spent),
                dataset_id=dataset_id,
            )
        return noise_multiplier_for(
            epsilon=total - eps_f,
            delta=ds_delta - delta_f,
            sample_rate=sample_rate,
            steps=steps,
            accountant=ds_accountant,
            prior=prior,
        )

    def plan_remaining(
        self, dataset_id: str, *, privacy_unit: str = "record", delta: float | None = None
    ) -> RemainingTarget | None:
        """``epsilon="remaining"`` for a run in ``privacy_unit``: its own target.

        ``None`` for a run in the budget's unit (:meth:`calibrate_remaining` spends
        what is left by composition). For a run in the other unit: the largest own
        target epsilon (and the run's delta: ``delta``, or one chosen for it) whose
        converted charge fits what is left (see
        :mod:`privdl.budget.accounting.remaining`). The run must still :meth:`reserve`.

        Raises:
            PolicyError: unknown dataset; a record-level run on a user-level budget
                without a declared maximum of records per user.
            BudgetExceededError: nothing is left.
        """
        check_unit(privacy_unit)
        with self._store.transaction(write=False) as tx:
            total, ds_delta, ds_accountant = self._dataset(tx, dataset_id)
            unit, k = self._unit(tx, dataset_id)
            runs = self._runs(tx, dataset_id)
        if unit == privacy_unit:
            return None
        try:
            return largest_converted_target(
                runs=_parts(runs),
                total=total,
                delta=ds_delta,
                accountant=ds_accountant,
                run_unit=privacy_unit,
                budget_unit=unit,
                max_records_per_user=k,
                run_delta=delta,
            )
        except BudgetExceededError as exc:
            exc.dataset_id = dataset_id
            raise

    # -- internals ------------------------------------------------------------

    def _snapshot(self, tx: Transaction, dataset_id: str, *, lock: bool = False) -> tuple[Any, ...]:
        """(total, delta, accountant, every run's history) of a dataset; with ``lock``,
        under the row lock."""
        total, delta, accountant = self._dataset(tx, dataset_id, lock=lock)
        unit, k = self._unit(tx, dataset_id)
        runs = self._runs(tx, dataset_id)
        return total, delta, accountant, unit, k, tuple((r.run_id, r.history, r.charge) for r in runs)

    @staticmethod
    def _run_charge(
        snapshot: tuple[Any, ...], hist: History, delta: float, unit: str, charge: Charge | None
    ) -> Charge | None:
        """A new run's fixed charge on the snapshot's budget (``None``: by its history)."""
        return unit_charge(
            run_unit=unit,
            budget_unit=snapshot[3],
            max_records_per_user=snapshot[4],
            history=hist,
            delta=delta,
            accountant=snapshot[2],
            charge=charge,
        )

    @staticmethod
    def _compose(
        snapshot: tuple[Any, ...], hist: History, charge: Charge | None = None
    ) -> tuple[float, float, float, float]:
        """(total, delta, spent before, spent after) under the snapshot's accountant."""
        total, delta, accountant, _unit, _k, runs = snapshot
        prior = [(h, c) for _, h, c in runs]
        before = compose(prior, delta=delta, accountant=accountant)
        # Composition never spends less than its parts: a run that alone exceeds the
        # total is refused without composing (composition at huge epsilon is slow).
        alone = compose([(hist, charge)], delta=delta, accountant=accountant)
        if alone > total * (1 + _REL_TOL):
            return total, delta, before, alone
        after = compose([*prior, (hist, charge)], delta=delta, accountant=accountant)
        return total, delta, before, after

    def _unit(self, tx: Transaction, dataset_id: str) -> tuple[str, int | None]:
        """(privacy unit, max records per user) of a dataset's budget."""
        rows = tx.rows(
            "SELECT privacy_unit, max_records_per_user FROM privdl_datasets WHERE dataset_id = :d",
            {"d": dataset_id},
        )
        if not rows:
            raise PolicyError(f"dataset {dataset_id!r} has no budget in {self.location}")
        unit, k = rows[0]
        return str(unit or "record"), None if k is None else int(k)

    def _dataset(self, tx: Transaction, dataset_id: str, *, lock: bool = False) -> tuple[float, float, str]:
        """(total, delta, accountant) of a dataset; with ``lock``, under its write lock."""
        sql = (
            self._store.lock_dataset_sql()
            if lock
            else "SELECT epsilon, delta, accountant FROM privdl_datasets WHERE dataset_id = :d"
        )
        rows = tx.rows(sql, {"d": dataset_id})
        if not rows:
            raise PolicyError(f"dataset {dataset_id!r} has no budget in {self.location}")
        return float(rows[0][0]), float(rows[0][1]), str(rows[0][2])

    def _run(self, tx: Transaction, run_id: str) -> RunRecord:
        rows = tx.rows(
            f"SELECT {RUN_COLUMNS} FROM privdl_runs WHERE run_id = :r",  # noqa: S608 (constant)
            {"r": run_id},
        )
        if not rows:
            raise InputError(f"ledger {self.location} has no run {run_id!r}")
        return _run_from_row(rows[0])

    def _runs(self, tx: Transaction, dataset_id: str) -> list[RunRecord]:
        rows = tx.rows(
            f"SELECT {RUN_COLUMNS} FROM privdl_runs WHERE dataset_id = :d "  # noqa: S608
            "ORDER BY created_at, run_id",
            {"d": dataset_id},
        )
        try:
            return [_run_from_row(r) for r in rows]
        except (ValueError, TypeError) as exc:
            raise InputError(f"ledger {self.location}: a run record is unreadable") from exc


def _concat(runs: Iterable[RunRecord]) -> History:
    return History(seg for run in runs for seg in run.history)


def _check_dataset_id(dataset_id: str) -> None:
    if not isinstance(dataset_id, str) or not dataset_id.strip():
        raise PolicyError("dataset_id must be a non-empty string")


def check_budget(*, epsilon: float, delta: float, force: bool = False) -> None:
    """Refuse a total budget that :meth:`BudgetLedger.set_budget` would refuse.

    For callers that check before opening (or creating) a ledger, such as the CLI.

    Raises:
        PrivacyParameterError: epsilon not positive and finite, delta not in (0, 1), or
            delta above :data:`MAX_DELTA` (1e-3) without ``force``.
    """
    check_epsilon(epsilon)
    if check_delta(delta) > MAX_DELTA and not force:
        raise PrivacyParameterError(
            f"delta={delta:g} is above {MAX_DELTA:.0e}: delta is the chance that the epsilon "
            "guarantee fails outright and must be far below 1/n (1e-5 or less is usual); "
            "pass force=True (CLI: --force) to set it anyway"
        )
