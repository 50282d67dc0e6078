"""A training run as typed values: the plan fixed before the first step, and its state.

:class:`RunPlan` is what is decided before any record is touched by DP-SGD: the delta,
the sample rate ``q = 1 / steps_per_epoch``, the planned steps, the noise multiplier
calibrated for them (with this run's DP domain estimate composed in) and the ledger
reservation. :class:`TrainingRun` is a run in progress: the plan, the DP step, the data
on its device, the Poisson sampler and the epoch reached. :class:`ResumePoint` is where
a checkpointed run goes on from.

The functions here make the plan: :func:`resolve_delta` (never ``>= 1/n``),
:func:`calibrate` (sigma for the planned run), :func:`reserve` (the ledger charge before
the first step) and :func:`charge_domains` (a DP domain estimate as its own ledger run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from privdl.budget.accounting import check_delta, epsilon_of, noise_multiplier_for
from privdl.train.data import IndexedData, PoissonSampler, TensorData, to_device

if TYPE_CHECKING:
    from privdl.train.dp_step import DPStep

__all__ = [
    "ResumePoint",
    "RunPlan",
    "TrainingRun",
    "calibrate",
    "charge_domains",
    "domain_charger",
    "fit_table_encoder",
    "open_ledger",
    "plan_run",
    "remaining_target",
    "reserve",
    "resolve_delta",
    "start_run",
]

# one accountant segment: (noise multiplier, sample rate, steps), as
# privdl.budget.accounting.Segment reads it
Segment = tuple[float, float, int]


@dataclass(frozen=True)
class RunPlan:
    """The run as planned before its first step.

    Attributes:
        n_samples: training records.
        delta: the delta the run is accounted at.
        per_epoch: steps per epoch (the sample rate is its inverse).
        planned_steps: steps of the whole run.
        noise_multiplier: sigma, calibrated for the planned run.
        accountant: ``"prv"`` or ``"rdp"`` (the dataset's, with a ledger).
        prior: the segments before this run's own: earlier runs of the model, then this
            run's DP domain estimate.
        run_id: the ledger reservation, or ``None``.
    """

    n_samples: int
    delta: float
    per_epoch: int
    planned_steps: int
    noise_multiplier: float
    accountant: str
    prior: tuple[Segment, ...] = ()
    run_id: str | None = None

    @property
    def sample_rate(self) -> float:
        return 1.0 / self.per_epoch

    @property
    def expected_batch_size(self) -> int:
        return max(1, round(self.n_samples * self.sample_rate))

    def segment(self, steps: int) -> Segment:
        """This run's own segment after ``steps`` steps."""
        return (float(self.noise_multiplier), float(self.sample_rate), int(steps))

    def history(self, steps: int) -> list[Segment]:
        """The accountant's exact record after ``steps`` steps of this run."""
        return [*self.prior, self.segment(steps)] if steps else list(self.prior)


@dataclass(frozen=True)
class ResumePoint:
    """Where a checkpointed run goes on: epochs and steps done, the optimizer state.

    Attributes:
        epoch: epochs completed.
        steps: steps taken in this run.
        per_epoch: steps per epoch (the run keeps its sample rate).
        optimizer: the torch optimizer's ``state_dict``.
        history: the saved per-epoch rows.
        privacy_unit: the unit the checkpointed run trains in.
        users: a user-level run's :class:`~privdl.train.user_level.UserDraw` (its kept
            records), else ``None``.
    """

    epoch: int
    steps: int
    per_epoch: int
    optimizer: dict[str, Any] = field(compare=False)
    history: tuple[dict[str, Any], ...] = ()
    privacy_unit: str = "record"
    users: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class TrainingRun:
    """A run in progress.

    Attributes:
        plan: the :class:`RunPlan`.
        dp_step: the :class:`~privdl.train.dp_step.DPStep` that trains the model.
        data: the training data (on the device when in memory).
        val: the validation data, or ``None``.
        sampler: the Poisson sampler over the training records.
        device: the torch device.
        max_physical_batch_size: split each batch into chunks of at most this size.
        epoch: epochs completed.
        streams: ``(offset, generator)`` of the seeded sampler (0) and noise (1)
            generators (``None`` when not seeded), reseeded per epoch by a trainer that
            writes checkpoints.
    """

    plan: RunPlan
    dp_step: DPStep
    data: TensorData | IndexedData
    val: TensorData | IndexedData | None
    sampler: PoissonSampler
    device: Any
    max_physical_batch_size: int | None = None
    epoch: int = 0
    streams: tuple[tuple[int, Any], ...] = ()

    def step(self, idx: Any) -> Any:
        """One DP-SGD step on the Poisson batch ``idx`` (record indices); the summed loss."""
        chunk = self.max_physical_batch_size
        if len(idx) == 0:
            chunks: list[Any] = []
        elif chunk is None or len(idx) <= chunk:
            chunks = [idx]
        else:
            chunks = list(idx.split(chunk))
        return self.dp_step.step(chunks, self._load)

    def _load(self, part: Any) -> tuple[Any, Any]:
        xb, yb = self.data.batch(part)
        return to_device(xb, self.device), to_device(yb, self.device)


def resolve_delta(delta: float | None, n: int, ledger: Any, dataset_id: str | None) -> float:
    """The run's delta: the one given, else the ledger's, else ``1 / (10 n)``.

    Raises:
        PrivacyParameterError: it is not below ``1 / n`` (such a delta allows releasing
            a record outright).
    """
    if delta is None:
        delta = ledger.budget(dataset_id)[1] if ledger is not None else 1.0 / (10 * n)
    return check_delta(delta, records=n)


def remaining_target(
    ledger: Any, dataset_id: str | None, *, privacy_unit: str, delta: float | None, n: int
) -> tuple[float | str, float]:
    """``epsilon="remaining"``: the run's target and delta.

    A run in the budget's unit keeps ``"remaining"`` (:func:`calibrate` asks the ledger
    for the noise that spends what is left) at :func:`resolve_delta`'s delta. A run in
    the other unit gets the largest own epsilon whose converted charge fits what is
    left, at ``delta`` or at one chosen for it
    (:meth:`~privdl.BudgetLedger.plan_remaining`); the reservation then checks it.

    Raises:
        PolicyError: a record-level run on a user-level budget without its maximum
            records per user.
        BudgetExceededError: nothing is left.
    """
    if delta is not None:
        check_delta(delta, records=n)
    target = ledger.plan_remaining(str(dataset_id), privacy_unit=privacy_unit, delta=delta)
    if target is None:
        return "remaining", resolve_delta(delta, n, ledger, dataset_id)
    return float(target.epsilon), check_delta(target.delta, records=n)


def calibrate(
    *,
    target_epsilon: float | str,
    delta: float,
    per_epoch: int,
    planned_steps: int,
    accountant: str,
    domain: list[Segment],
    ledger: Any = None,
    dataset_id: str | None = None,
) -> float:
    """Sigma for the whole planned run (prior runs are the ledger's job); this run's DP
    domain estimate, made before training, is composed in: domains and training together
    meet the target epsilon (``"remaining"``: what the ledger has left)."""
    q = 1.0 / per_epoch
    if target_epsilon == "remaining":
        return float(
            ledger.calibrate_remaining(dataset_id, sample_rate=q, steps=planned_steps, accountant=accountant)
        )
    return float(
        noise_multiplier_for(
            epsilon=float(target_epsilon),
            delta=delta,
            sample_rate=q,
            steps=planned_steps,
            accountant=accountant,
            prior=domain,
        )
    )


def reserve(
    plan: RunPlan,
    ledger: Any,
    dataset_id: str,
    *,
    target_epsilon: float | str,
    model_name: str,
    privacy_unit: str = "record",
) -> str:
    """Reserve the planned run on the ledger (before its first step); the run id.

    Raises:
        BudgetExceededError: the dataset's budget cannot take it.
    """
    own = [plan.segment(plan.planned_steps)]
    if target_epsilon == "remaining":
        # what the run asked for: its calibrated own epsilon
        asked = epsilon_of(own, delta=plan.delta, accountant=plan.accountant)
    else:
        asked = float(target_epsilon)
    return str(
        ledger.reserve(
            dataset_id,
            history=own,
            delta=plan.delta,
            accountant=plan.accountant,
            model_name=model_name,
            epsilon=asked,
            privacy_unit=privacy_unit,
        )
    )


def charge_domains(
    ledger: Any,
    dataset_id: str,
    history: list[Segment],
    *,
    delta: float | None,
    accountant: str,
    epsilon: float | None = None,
) -> str:
    """Record a DP domain estimate as its own, settled ledger run (before its release
    when the trainer fits the encoder): the training run is then composed with it."""
    delta = float(delta or 0)
    if not 0 < delta < 1:
        delta = ledger.budget(dataset_id)[1]
    run_id = ledger.reserve(
        dataset_id,
        history=history,
        delta=delta,
        accountant=accountant,
        model_name="TableEncoder domains",
        epsilon=epsilon,
    )
    ledger.settle(run_id, history=history)
    return str(run_id)


def domain_charger(
    ledger: Any, dataset_id: str, encoder: Any, accountant: str
) -> Callable[[list[Segment], float, float], None]:
    """The ``charge=`` callback of a TableEncoder fit: charges its DP domain estimate
    before the noise is drawn and records the ledger run on the encoder."""

    def charge(history: list[Segment], epsilon: float, delta: float) -> None:
        encoder.domain_run_id_ = charge_domains(
            ledger, dataset_id, history, delta=delta, accountant=accountant, epsilon=epsilon
        )

    return charge


def plan_run(
    *,
    n: int,
    per_epoch: int,
    epochs: int,
    delta: float,
    target_epsilon: float | str,
    accountant: str,
    prior: list[Segment],
    domain: list[Segment],
    ledger: Any,
    dataset_id: str | None,
    model_name: str,
    resumed: tuple[float, str | None] | None = None,
    privacy_unit: str = "record",
) -> RunPlan:
    """Calibrate and reserve the run (``resumed``: the checkpointed run's sigma and
    reservation, which it keeps; ``privacy_unit``: the unit the ledger records).

    Raises:
        BudgetExceededError: the ledger refuses the run (before any step).
    """
    planned = per_epoch * int(epochs)
    if resumed is not None:
        sigma, run_id = float(resumed[0]), resumed[1]
    else:
        sigma, run_id = (
            calibrate(
                target_epsilon=target_epsilon,
                delta=delta,
                per_epoch=per_epoch,
                planned_steps=planned,
                accountant=accountant,
                domain=domain,
                ledger=ledger,
                dataset_id=dataset_id,
            ),
            None,
        )
    plan = RunPlan(
        n_samples=n,
        delta=delta,
        per_epoch=per_epoch,
        planned_steps=planned,
        noise_multiplier=sigma,
        accountant=accountant,
        prior=(*prior, *domain),
        run_id=run_id,
    )
    if ledger is not None and resumed is None:
        run_id = reserve(
            plan,
            ledger,
            str(dataset_id),
            target_epsilon=target_epsilon,
            model_name=model_name,
            privacy_unit=privacy_unit,
        )
        plan = replace(plan, run_id=run_id)
    return plan


def fit_table_encoder(
    encoder: Any,
    frame: Any,
    target: str,
    *,
    ledger: Any,
    dataset_id: str | None,
    delta: float | None,
    target_epsilon: float | str,
    domain_epsilon: float | None,
    accountant: str,
) -> list[Segment]:
    """Fit ``encoder`` on the training table (unless fitted), charging a DP domain
    estimate to the ledger before its noise is drawn; the estimate's segments.

    Its epsilon is ``domain_epsilon`` (default: the encoder's, else a fifth of the
    run's target or of what the ledger has left for ``"remaining"``), at the run's delta;
    training and domains together then meet the target. An encoder fitted before
    (e.g. to size the model) has its estimate charged now.
    """
    from privdl.train.encoding import DEFAULT_DOMAIN_SHARE, TableEncoder

    if not hasattr(encoder, "columns_"):  # not fitted yet: fit on this frame
        if isinstance(encoder, TableEncoder):
            eps = domain_epsilon if domain_epsilon is not None else encoder.domain_epsilon
            if eps is None:
                total = ledger.remaining(dataset_id) if target_epsilon == "remaining" else target_epsilon
                eps = DEFAULT_DOMAIN_SHARE * float(total)
            budget: dict[str, Any] = {
                "domain_epsilon": float(eps),
                "domain_delta": resolve_delta(delta, len(frame), ledger, dataset_id),
                "accountant": accountant,
            }
            if ledger is not None:
                budget["charge"] = domain_charger(ledger, str(dataset_id), encoder, accountant)
            encoder.fit(frame, target=target, **budget)
        else:
            encoder.fit(frame, target=target)
    segments = [(float(a), float(b), int(c)) for a, b, c in getattr(encoder, "domain_history_", None) or []]
    if segments and ledger is not None and getattr(encoder, "domain_run_id_", None) is None:
        encoder.domain_run_id_ = charge_domains(
            ledger,
            str(dataset_id),
            segments,
            delta=getattr(encoder, "domain_delta_", None) or delta,
            accountant=accountant,
        )
    return segments


def open_ledger(ledger: Any) -> Any:
    """A :class:`~privdl.BudgetLedger` for ``ledger`` (a ledger, a path or a URL), or ``None``."""
    if ledger is None:
        return None
    if isinstance(ledger, str) or hasattr(ledger, "__fspath__"):
        from privdl.budget.ledger import BudgetLedger

        return BudgetLedger(ledger)
    return ledger


def start_run(
    plan: RunPlan,
    prepared: Any,
    mode: str,
    data: TensorData | IndexedData,
    val: TensorData | IndexedData | None,
    *,
    device: Any,
    max_grad_norm: float,
    make_optimizer: Callable[[list[Any]], Any],
    generator: Callable[[Any, int], Any],
    secure: bool,
    max_physical_batch_size: int | None,
    on_switch: Callable[[str], None] | None = None,
    resume: ResumePoint | None = None,
    make_step: Callable[[str, Any, Any], Any] | None = None,
    collective: Any = None,
    units: int | None = None,
) -> TrainingRun:
    """The run, ready for its first (or next) step: the DP step over the prepared model
    (a :class:`~privdl.train.model_prep.PreparedModel`), the Poisson sampler, in-memory
    data on the device, and a resumed run's optimizer state and epoch.

    ``generator(device, offset)`` gives the seeded torch generator (or ``None``) for the
    sampler (offset 0) and the noise (offset 1). ``make_step(mode, model, settings)``
    builds another DP step (a user-level one) instead of :func:`make_dp_step`'s.

    In a distributed run ``data`` is this rank's shard, sampled with the plan's (global)
    rate, and ``collective`` the :class:`~privdl.train.distributed.Group` that sums the
    ranks' clipped gradients (see :mod:`privdl.train.distributed`); ``units``: the
    units this rank samples when they are not ``data``'s records (a distributed
    user-level rank: its block of users).
    """
    from privdl.train.dp_step import StepSettings, make_dp_step
    from privdl.train.model_prep import shape_for_loss

    noise_generator, sampler_generator = generator(device, 1), generator(_cpu(), 0)
    settings = StepSettings(
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=plan.expected_batch_size,
        criterion=prepared.criterion,
        shape_for_loss=partial(shape_for_loss, prepared.task),
        make_optimizer=make_optimizer,
        device=device,
        generator=noise_generator,
        secure=secure,
        collective=collective,
    )
    # "bk" hands a copy of a layer output on when an op in a forward changes it in place
    copy_outputs = mode == "bk" and bool(prepared.probe.modified)
    if make_step is not None:
        step = make_step(mode, prepared.model, settings)
    else:
        step = make_dp_step(mode, prepared.model, settings, copy_outputs=copy_outputs, on_switch=on_switch)
    in_memory = isinstance(data, TensorData)
    sampler = PoissonSampler(
        # records (or users) of the run; a distributed rank samples its shard of the
        # records, or (units=) its block of the users
        units if units is not None else plan.n_samples if collective is None else len(data),
        plan.sample_rate,
        generator=sampler_generator,
        device=device if in_memory else "cpu",
        secure=secure,
    )
    if isinstance(data, TensorData):
        data = TensorData(to_device(data.X, device), to_device(data.y, device))
    if resume is not None:
        step.optimizer.load_state_dict(resume.optimizer)
    return TrainingRun(
        plan=plan,
        dp_step=step,
        data=data,
        val=val,
        sampler=sampler,
        device=device,
        max_physical_batch_size=max_physical_batch_size,
        epoch=0 if resume is None else resume.epoch,
        streams=((0, sampler_generator), (1, noise_generator)),
    )


def _cpu() -> Any:
    import torch

    return torch.device("cpu")
