"""RunFacts: the explicit record of a DP training run that a privacy report is built from.

A :class:`~privdl.budget.report.PrivacyReport` states what a run guarantees; every fact
it states comes from one :class:`RunFacts` value, never from reading a trainer's
attributes by name with a default (a renamed attribute would become a silent ``None``
in a privacy statement). :meth:`PrivateTrainer.run_facts
<privdl.PrivateTrainer.run_facts>` returns one; :meth:`RunFacts.of` builds one from any
object with a fitted trainer's attributes, reading each of them plainly so that a
missing one raises :class:`AttributeError`.

The exact training loss is not a fact of a run: it is computed from the training
records without noise and is never carried into a report (:class:`EpochFacts` has no
``loss``).

Example:
    >>> facts = RunFacts.of(trainer)                 # doctest: +SKIP
    >>> facts.steps, facts.accountant                # doctest: +SKIP
    (420, 'prv')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from privdl.errors import NotFittedError

__all__ = ["EpochFacts", "RunFacts"]


@dataclass(frozen=True)
class EpochFacts:
    """One epoch of a run as the trainer recorded it (no training loss: it is not DP).

    Attributes:
        epoch: 1-based epoch number.
        steps: cumulative steps of the current run at the end of the epoch, when known.
        epsilon: the trainer's own epsilon after the epoch (compared, not trusted).
        metric: the validation metric (computed without noise on the val= data).
        metric_name: its name (``"accuracy"``, ``"neg_mse"``).
    """

    epoch: int
    steps: int | None = None
    epsilon: float | None = None
    metric: float | None = None
    metric_name: str | None = None

    @classmethod
    def of(cls, row: Mapping[str, Any], index: int) -> EpochFacts:
        """From a trainer's ``history_`` row (``index`` is its 0-based position)."""
        steps, eps, metric = row.get("steps"), row.get("epsilon"), row.get("metric")
        return cls(
            epoch=int(row.get("epoch", index + 1)),
            steps=None if steps is None else int(steps),
            epsilon=None if eps is None else float(eps),
            metric=None if metric is None else float(metric),
            metric_name=row.get("metric_name"),
        )


@dataclass(frozen=True)
class RunFacts:
    """Every fact a privacy report reads from a fitted trainer.

    Attributes:
        accountant_history: ``(noise_multiplier, sample_rate, steps)`` segments of the
            run (earlier runs of the model and DP preprocessing included).
        delta: delta the run is accounted at.
        accountant: the accountant the run is calibrated, charged and reported under.
        epsilon: the trainer's own epsilon (recomputed by the report, only compared).
        target_epsilon: the epsilon asked for (a number or ``"remaining"``).
        noise_multiplier, sample_rate, max_grad_norm: the DP-SGD mechanism.
        epochs, batch_size: configuration.
        n_samples: number of training records.
        secure_mode: noise from a CSPRNG.
        replaced_modules: layers replaced to make the model DP-compatible.
        grad_sample_mode: the gradient engine used.
        task: ``"binary"``, ``"multiclass"`` or ``"regression"``.
        loss_given: a loss was named (``loss="bce"``), so the task was not inferred
            from the training targets.
        model_name: the model's class name.
        model_buffers: number of non-trainable buffers the model holds.
        history: per-epoch facts (no training loss).
        dataset_id, run_id: the ledger's dataset and run.
        ledger: the ledger the run was charged to (object or location), if any.
        checkpoints: the run wrote training checkpoints.
        val_overlap: the validation data shares rows with the training data (no count:
            that is a figure computed from the records without noise).
        has_encoder: a table encoder turned a frame into features.
        feature_names: the encoder's feature names, when known.
        domain_source: where the encoder's domains came from (``"policy"``, ``"dp"``,
            ``"learned-unprotected"``; ``None`` when not recorded).
        domain_epsilon: epsilon of a DP domain estimate on its own.
        data_dependent: what the encoder learned from the data without DP.
        screened: columns nobody named, screened on the training table without DP.
        privacy_unit: ``"record"``, or ``"user"`` for user-level DP-SGD (the epsilon is
            for one person with all their records).
        max_records_per_user: the per-user cap of a user-level run.
        n_users: the users a user-level run sampled from.
        search: a hyperparameter search the run was chosen by (``candidates``,
            ``distribution``, ``epsilon``, ``delta``), or ``None``.
        manifest: the run's RunManifest as a dict (``privdl.manifest``), when the
            trainer recorded one.
    """

    accountant_history: tuple[tuple[float, float, int], ...]
    delta: float
    accountant: str = "prv"
    epsilon: float | None = None
    target_epsilon: float | str | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    max_grad_norm: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    n_samples: int | None = None
    secure_mode: bool = False
    replaced_modules: tuple[str, ...] = ()
    grad_sample_mode: str | None = None
    task: str | None = None
    loss_given: bool = False
    model_name: str | None = None
    model_buffers: int = 0
    history: tuple[EpochFacts, ...] = ()
    dataset_id: str | None = None
    run_id: str | None = None
    ledger: Any = field(default=None, compare=False)
    checkpoints: bool = False
    val_overlap: bool = False
    has_encoder: bool = False
    feature_names: tuple[str, ...] = ()
    domain_source: str | None = None
    domain_epsilon: float | None = None
    data_dependent: tuple[str, ...] = ()
    screened: tuple[str, ...] = ()
    privacy_unit: str = "record"
    max_records_per_user: int | None = None
    n_users: int | None = None
    search: Mapping[str, Any] | None = field(default=None, compare=False)
    manifest: Mapping[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # normalized here so that a run_facts() built from lists compares equal
        hist = tuple((float(s), float(q), int(n)) for s, q, n in self.accountant_history)
        object.__setattr__(self, "accountant_history", hist)
        object.__setattr__(self, "replaced_modules", tuple(str(m) for m in self.replaced_modules))
        object.__setattr__(self, "feature_names", tuple(str(f) for f in self.feature_names))
        object.__setattr__(self, "data_dependent", tuple(str(x) for x in self.data_dependent))
        object.__setattr__(self, "screened", tuple(str(x) for x in self.screened))
        object.__setattr__(self, "history", tuple(self.history))

    @property
    def steps(self) -> int:
        """Steps in the whole accountant history."""
        return sum(n for _s, _q, n in self.accountant_history)

    @classmethod
    def of(cls, trainer: Any) -> RunFacts:
        """Read the facts of a fitted trainer (a PrivateTrainer or an object like it).

        Each attribute is read plainly: one that is missing raises
        :class:`AttributeError` rather than becoming an unknown in a privacy statement.
        The encoder's facts are read when the encoder records where its domains came
        from (``domain_source_``, as :class:`~privdl.TableEncoder` does); another
        encoder's are unknown.

        Raises:
            NotFittedError: the trainer has not been fitted (no accountant history).
        """
        history = trainer.accountant_history_
        if not history:
            raise NotFittedError("the trainer has not been fitted: no accountant history")
        # accountant_ exists once a ledger chose the dataset's accountant; before, the
        # accountant asked for is the one the run is calibrated under
        accountant = vars(trainer).get("accountant_") or trainer.accountant
        model = trainer.model_
        buffers = model.named_buffers if model is not None and hasattr(model, "named_buffers") else None
        encoder = trainer.encoder_
        source = trainer.domain_source_
        enc: dict[str, Any] = {}
        if encoder is not None and hasattr(encoder, "domain_source_"):
            own = encoder.domain_epsilon_
            enc = {
                "data_dependent": tuple(encoder.data_dependent_ or ()),
                "screened": tuple(encoder.screened_ or ()),
                "domain_epsilon": None if own is None else float(own),
            }
            source = source or encoder.domain_source_
        target = trainer.target_epsilon
        own = vars(trainer)  # a trainer-like object without user-level runs or searches
        unit = str(own.get("privacy_unit") or "record")
        manifest = own.get("manifest_")  # None for a trainer that records none
        return cls(
            accountant_history=tuple(history),
            delta=float(trainer.delta_),
            accountant=str(accountant),
            epsilon=_opt_float(trainer.epsilon),
            target_epsilon=target if target is None or isinstance(target, str) else float(target),
            noise_multiplier=_opt_float(trainer.noise_multiplier_),
            sample_rate=_opt_float(trainer.sample_rate_),
            max_grad_norm=_opt_float(trainer.max_grad_norm),
            epochs=_opt_int(trainer.epochs),
            # the expected batch size a fit resolved (a DataLoader's own, by default)
            batch_size=_opt_int(vars(trainer).get("batch_size_") or trainer.batch_size),
            n_samples=_opt_int(trainer.n_samples_),
            secure_mode=bool(trainer.secure_mode),
            replaced_modules=tuple(trainer.replaced_modules_ or ()),
            grad_sample_mode=trainer.grad_sample_mode_,
            task=trainer.task_,
            loss_given=isinstance(trainer.loss, str),
            model_name=None if model is None else type(model).__name__,
            model_buffers=sum(1 for _ in buffers()) if callable(buffers) else 0,
            history=_epochs(trainer.history_ or ()),
            dataset_id=trainer.dataset_id,
            run_id=trainer.run_id_,
            ledger=trainer.ledger_,
            checkpoints=trainer.checkpoint_dir is not None,
            val_overlap=bool(trainer.val_overlap_),
            has_encoder=encoder is not None,
            feature_names=tuple(trainer.feature_names_ or ()),
            domain_source=source,
            privacy_unit=unit,
            max_records_per_user=_opt_int(own.get("max_records_per_user")) if unit == "user" else None,
            n_users=_opt_int(own.get("n_users_")),
            search=own.get("search_"),
            manifest=None if manifest is None else manifest.to_dict(),
            **enc,
        )


def _epochs(rows: Sequence[Mapping[str, Any]]) -> tuple[EpochFacts, ...]:
    return tuple(EpochFacts.of(row, i) for i, row in enumerate(rows))


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
