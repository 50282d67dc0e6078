"""Your own training loop with privdl's DP, ledger and report: :func:`make_private`.

The Opacus habit, with the budget kept::

    with privdl.make_private(model, optimizer, data_loader, epsilon=2.0, epochs=5,
                             ledger="budget.db", dataset_id="retention-2026-11",
                             max_grad_norm=1.0, audit_log=log) as run:
        for epoch in range(5):
            for x, y in run.data_loader:          # Poisson batches over the loader's dataset
                run.optimizer.zero_grad()
                loss_fn(run.model(x), y).backward()
                run.optimizer.step()
    run.epsilon                                    # the accountant's, for the steps taken
    run.report().save("privacy.html")

Entering the block checks the model as :class:`~privdl.PrivateTrainer` does (Opacus'
``ModuleValidator`` fixes, in-place modules switched off, layer reuse, a
``DistributedDataParallel`` model refused), calibrates the noise for ``epochs`` passes and reserves the run in the
ledger: a run the budget cannot take raises
:class:`~privdl.errors.BudgetExceededError` before any step. Leaving it settles the
run with the steps really taken (stopping early gives the rest back; an exception
settles what was spent, the step that raised included, since it may have applied its
noisy update) and writes the audit entry. ``run.optimizer.step()`` raises
:class:`~privdl.errors.BudgetExceededError` at the step that would exceed the
reservation, before it changes anything.

The pieces are the trainer's: the run plan (:func:`privdl.train.run.plan_run`), the
Poisson sampler, model preparation (:mod:`~privdl.train.model_prep`) and the engines:
book-keeping (:class:`~privdl.train.bookkeeping.BookKeeping`, from the gradients of your
own ``loss.backward()``) where every trainable layer supports it, Opacus' hooks
(:class:`~privdl.train.opacus_step.OpacusStep`) otherwise. Opacus' ghost clipping needs
to own the loss, so it is the trainer's only.

What the accountant assumes, and the loop must keep true: one ``optimizer.step()`` per
batch drawn from ``run.data_loader`` (empty batches included: they come as zero-row
batches, and a step on one is noise only), and a loss that is the mean over the
batch's records of each record's own loss.

User-level DP-SGD (``privacy_unit="user"``, ``users=`` one user id per record,
``max_records_per_user=m``): the loader's ``batch_size`` is the expected number of
*users* per step, each batch is the kept records (at most ``m`` per user, drawn once on
entry) of a Poisson sample of users, and each user's gradient of their mean loss is
clipped as one unit (:mod:`privdl.train.user_level`: the trainer's math, from the
gradients of your ``backward()``); the accountant runs on ``(sigma, q_user, steps)``.

Under ``torchrun`` (or an initialized ``torch.distributed`` process group) the same
loop on every rank is *one* DP run, by the trainer's rules
(:mod:`privdl.train.distributed`): every rank passes the same loader dataset (record
counts and a sample digest compared; at user level the same users), starts from rank
0's weights and receives rank 0's plan (sigma, rate, steps; the ledger reservation is
rank 0's, and so is the draw of kept records); ``run.data_loader`` draws Poisson
batches of this rank's shard at the global rate (a contiguous block of the records, or
of the users with all their kept records; the steps per epoch are the global plan's);
``run.optimizer.step()`` all-reduces the clipped sums, rank 0 adding the one noise
draw, and divides by the global expected batch size, so every rank applies the same
update. On exit the ranks compare their weights, and rank 0 alone settles the ledger
run and writes the audit entry. A model wrapped in ``DistributedDataParallel`` is
refused (its hooks average unclipped gradients).
"""

from __future__ import annotations

import contextlib
import numbers
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from privdl._optional import require
from privdl.budget.accounting import check_accountant, check_epsilon, epsilon_of
from privdl.budget.facts import EpochFacts, RunFacts
from privdl.errors import BudgetExceededError, InputError, UsageError
from privdl.train import distributed as dist_run
from privdl.train import model_prep
from privdl.train import run as runs
from privdl.train.data import PoissonSampler, steps_per_epoch

torch: Any = require("torch", "train")
from torch import nn  # noqa: E402

__all__ = ["PoissonLoader", "PrivateOptimizer", "PrivateRun", "make_private"]

# the engines a loop can drive (ghost clipping wraps the loss: the trainer's only)
LOOP_MODES = ("auto", "bk", "hooks", "functorch", "ew")


def make_private(
    model: nn.Module,
    optimizer: Any,
    data_loader: Any,
    *,
    epsilon: float | str,
    epochs: int,
    delta: float | None = None,
    max_grad_norm: float = 1.0,
    ledger: Any = None,
    dataset_id: str | None = None,
    audit_log: Any = None,
    accountant: str = "prv",
    grad_sample_mode: str = "auto",
    seed: int | None = None,
    secure_mode: bool = False,
    privacy_unit: str = "record",
    users: Any = None,
    max_records_per_user: int | None = None,
) -> PrivateRun:
    """A DP training run over your own loop, to use as a context manager.

    User-level DP-SGD::

        with privdl.make_private(model, optimizer, data_loader, epsilon=2.0, epochs=5,
                                 privacy_unit="user", users=user_ids,
                                 max_records_per_user=32) as run:
            for x, y in run.data_loader:     # the kept records of a Poisson sample of users
                run.optimizer.zero_grad()
                loss_fn(run.model(x), y).backward()   # the mean over the batch's records
                run.optimizer.step()                  # each user clipped as one unit
        run.epsilon                                   # for one person with all their records

    Args:
        model: the ``torch.nn.Module`` to train (on the device you train on).
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
        data_loader: a ``DataLoader`` over a map-style dataset; its ``batch_size`` is the
            *expected* size of the Poisson batches (at user level: the expected number
            of users per step), its ``collate_fn`` collates them.
        epsilon: the run's target epsilon, or ``"remaining"`` (what the ledger has left).
        epochs: the passes the noise is calibrated and the ledger reserved for (each of
            ``ceil(n / batch_size)`` steps; at user level ``ceil(U / batch_size)`` for
            ``U`` users).
        delta: default: the ledger's, else ``1 / (10 n)`` (``n``: records, or users).
        max_grad_norm: per-sample clipping norm C.
        ledger: a :class:`~privdl.BudgetLedger` or its path / URL.
        dataset_id: the ledger's dataset (required with ``ledger``).
        audit_log: an AuditLog, a path, or None: one ``train`` entry for the run.
        accountant: ``"prv"`` or ``"rdp"`` (a ledger's dataset keeps its own).
        grad_sample_mode: ``"auto"`` (book-keeping where it applies, else Opacus'
            hooks), ``"bk"``, ``"hooks"``, ``"functorch"`` or ``"ew"``.
        seed: seeds the Poisson sampling and the noise (reproducible experiments only:
            whoever knows it can reproduce the noise).
        secure_mode: sampling and noise from a CSPRNG (ChaCha20).
        privacy_unit: ``"record"`` (default) or ``"user"``: user-level DP-SGD, which
            samples users, clips each user's gradient as one unit and accounts epsilon
            for adding or removing one person with all their records (engines: ``"bk"``
            where every trainable layer is a ``Linear``, ``Embedding`` or
            ``LayerNorm``, else Opacus' ``"hooks"`` / ``"functorch"``; not ``"ew"``).
            The ledger records the unit (a user-level run on a record-level budget is
            charged as the trainer's is: :mod:`privdl.budget.accounting.units`).
        users: with ``privacy_unit="user"``: one user id per record of the loader's
            dataset (any hashable values, an array or a tensor); never recorded.
        max_records_per_user: with ``privacy_unit="user"``: each user trains on at most
            this many of their records (a random subset, drawn once on entry: seeded,
            ChaCha20 in ``secure_mode``).

    Returns:
        A :class:`PrivateRun`; nothing is checked or reserved until ``with`` enters it.

    Under ``torchrun`` every rank calls it with the same loader dataset (and ``users=``):
    see the module docstring.

    Raises:
        UsageError: (on entry) ``privacy_unit="user"`` without ``users=`` or
            ``max_records_per_user=``, ``users=`` at record level, a mode that cannot
            train at user level, a ``DistributedDataParallel`` model, ``WORLD_SIZE > 1``
            without the rest of the torchrun environment, or a SQLite ledger on several
            machines.
        InputError: (on entry) ``users=`` of another length than the dataset, records
            without a user id, or fewer than 2 users; under torchrun, ranks given other
            records or other users (raised on every rank, nothing reserved).
    """
    return PrivateRun(
        model,
        optimizer,
        data_loader,
        epsilon=epsilon,
        epochs=epochs,
        delta=delta,
        max_grad_norm=max_grad_norm,
        ledger=ledger,
        dataset_id=dataset_id,
        audit_log=audit_log,
        accountant=accountant,
        grad_sample_mode=grad_sample_mode,
        seed=seed,
        secure_mode=secure_mode,
        privacy_unit=privacy_unit,
        users=users,
        max_records_per_user=max_records_per_user,
    )


class PoissonLoader:
    """``run.data_loader``: ``ceil(n / batch_size)`` Poisson batches per pass over the
    user loader's dataset, collated with its ``collate_fn``; an empty batch comes as a
    zero-row batch of the same structure.

    At user level (``users``, a :class:`~privdl.train.user_level.UserIndex`) the sampler
    draws users, ``ceil(U / batch_size)`` times per pass, and a batch is their kept
    records, user by user; its :class:`~privdl.train.user_level.UserBatch` is
    ``run.last_users``."""

    def __init__(
        self,
        run: PrivateRun,
        dataset: Any,
        collate_fn: Any,
        sampler: PoissonSampler,
        per_epoch: int,
        users: Any = None,
    ):
        self._run = run
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.sampler = sampler
        self.per_epoch = per_epoch
        self.batch_size = int(run._batch_size)
        self.users = users
        self._empty: Any = None

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self) -> Iterator[Any]:
        for _ in range(self.per_epoch):
            self._run._check_open()
            idx = self.sampler.sample()
            if self.users is not None:  # sampled users -> their kept records, user by user
                self._run.last_users = self.users.gather(idx)
                idx = self._run.last_users.records
            batch = self._batch(idx)
            self._run._batches += 1
            yield batch
        self._run._epoch_done()

    def _batch(self, idx: Any) -> Any:
        if len(idx) == 0:
            return self.empty_batch()
        return _collate(self.dataset, self.collate_fn, idx)

    def empty_batch(self) -> Any:
        """A batch of no records, shaped as a collated record (a noise-only step)."""
        if self._empty is None:
            from torch.utils._pytree import tree_map

            one = self._batch(torch.zeros(1, dtype=torch.long))
            self._empty = tree_map(lambda t: t[:0] if isinstance(t, torch.Tensor) else t, one)
        return self._empty


class PrivateOptimizer:
    """``run.optimizer``: your optimizer behind per-sample clipping and noise.

    ``zero_grad()`` and ``step()`` are the DP step's; ``param_groups`` and
    ``state_dict()`` are your optimizer's (attach learning-rate schedulers to your own
    optimizer: they share its parameter groups).
    """

    def __init__(self, run: PrivateRun, original: Any) -> None:
        self._run = run
        self.original_optimizer = original

    @property
    def param_groups(self) -> Any:
        return self.original_optimizer.param_groups

    def state_dict(self) -> Any:
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.original_optimizer.load_state_dict(state)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._run._engine_zero_grad()

    def step(self, closure: Any = None) -> None:
        """One DP-SGD step on the last batch from ``run.data_loader``.

        Raises:
            BudgetExceededError: the step would exceed the run's reservation (nothing
                is changed).
            UsageError: no new batch was drawn since the last step (at user level: not
                exactly one), or the run ended.
        """
        if closure is not None:
            raise UsageError("run.optimizer.step() takes no closure (each step is one Poisson batch)")
        self._run._step()


class PrivateRun:
    """A DP training run driven by your own loop (see :func:`make_private`).

    Attributes (inside the block):
        model: the module to call (Opacus' wrapper under its hooks; after the block the
            plain trained module).
        optimizer: a :class:`PrivateOptimizer`.
        data_loader: a :class:`PoissonLoader`.
        steps: DP steps taken.
        planned_steps: the steps reserved (``epochs`` passes).
        noise_multiplier, sample_rate, delta, accountant: the calibrated mechanism.
        grad_sample_mode: the engine (``"bk"``, ``"hooks"``, ...).
        replaced_modules: the changes model preparation made (``"name: A -> B"``).
        run_id: the ledger reservation, or ``None``.
        privacy_unit: ``"record"`` or ``"user"``.
        n_users, records_dropped: at user level, the users sampled from and the records
            beyond a user's ``max_records_per_user`` (not used by the run).
        last_users: at user level, the :class:`~privdl.train.user_level.UserBatch` of
            the last batch drawn (whose records belong to whom; under torchrun, of this
            rank's block of users).
        processes: the processes of the run (1, or the torchrun world size).
    """

    def __init__(self, model: Any, optimizer: Any, data_loader: Any, **params: Any) -> None:
        self._model_in, self._optimizer_in, self._loader_in = model, optimizer, data_loader
        self.params = params
        self.model: Any = None
        self.optimizer: PrivateOptimizer | None = None
        self.data_loader: PoissonLoader | None = None
        self.steps = 0
        self.planned_steps = 0
        self.noise_multiplier: float | None = None
        self.sample_rate: float | None = None
        self.delta: float | None = None
        self.accountant = str(params["accountant"])
        self.grad_sample_mode: str | None = None
        self.replaced_modules: list[str] = []
        self.run_id: str | None = None
        self.n_samples: int | None = None
        self.privacy_unit = str(params["privacy_unit"])
        self.n_users: int | None = None
        self.records_dropped: int | None = None
        self.last_users: Any = None
        self.processes = 1
        self._group: dist_run.Group | None = None
        self._user_codes: Any = None
        self.history: list[dict[str, Any]] = []
        self._plan: runs.RunPlan | None = None
        self._ledger: Any = None
        self._engine: Any = None  # BookKeeping or OpacusStep
        self._probe: Any = None
        self._restore_optimizer: Any = lambda: None
        self._batch_size = 0
        self._batches = 0  # Poisson batches drawn
        self._step_open = False  # inside a DP step: it may have applied its update
        self._state = "new"  # "open", "closed"
        self._stack: contextlib.ExitStack | None = None
        self._op: Any = None
        self.manifest: Any = None  # the RunManifest, once the block has ended

    # ------------------------------------------------------------------ results
    @property
    def epsilon(self) -> float:
        """Epsilon of the steps taken so far, from the accountant (0 before any)."""
        if self._plan is None or not self.steps:
            return 0.0
        return epsilon_of(self._plan.history(self.steps), delta=self._plan.delta, accountant=self.accountant)

    def run_facts(self) -> RunFacts:
        """The explicit record of the run that :meth:`report` is built from."""
        plan = self._plan
        if plan is None:
            raise UsageError("the run has not started: enter it with `with make_private(...) as run`")
        model = self.model if isinstance(self.model, nn.Module) else None
        return RunFacts(
            accountant_history=tuple(plan.history(self.steps)),
            delta=plan.delta,
            accountant=self.accountant,
            epsilon=self.epsilon,
            target_epsilon=_target(self.params["epsilon"]),
            noise_multiplier=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            max_grad_norm=float(self.params["max_grad_norm"]),
            epochs=int(self.params["epochs"]),
            batch_size=self._batch_size,
            n_samples=self.n_samples,
            secure_mode=bool(self.params["secure_mode"]),
            replaced_modules=tuple(self.replaced_modules),
            grad_sample_mode=self.grad_sample_mode,
            model_name=type(self._plain_model()).__name__,
            model_buffers=sum(1 for _ in model.named_buffers()) if model is not None else 0,
            history=tuple(EpochFacts.of(row, i) for i, row in enumerate(self.history)),
            dataset_id=self.params["dataset_id"],
            run_id=self.run_id,
            ledger=self._ledger,
            manifest=None if self.manifest is None else self.manifest.to_dict(),
            privacy_unit=self.privacy_unit,
            max_records_per_user=_user_cap(self.params) if self.privacy_unit == "user" else None,
            n_users=self.n_users,
        )

    def report(self, **kwargs: Any) -> Any:
        """The :class:`~privdl.PrivacyReport` of the run (as the trainer's), built from
        :meth:`run_facts`; keyword arguments as for
        :meth:`PrivacyReport.from_facts <privdl.PrivacyReport.from_facts>`."""
        from privdl.budget.report import PrivacyReport

        return PrivacyReport.from_facts(self.run_facts(), **kwargs)

    def __repr__(self) -> str:
        return f"PrivateRun({self._state}, steps={self.steps}, epsilon={self.epsilon:.3g})"

    # ------------------------------------------------------------------ entry
    def __enter__(self) -> PrivateRun:
        if self._state != "new":
            raise UsageError("a make_private run is entered once")
        p = self.params
        dataset, collate_fn, batch_size = _check(self._model_in, self._optimizer_in, self._loader_in, p)
        # under torchrun: this rank's place in the one run (a DDP-wrapped model refused)
        group = self._group = dist_run.join(
            str(_device_of(self._model_in)), ledger=p["ledger"], models=(self._model_in,), who="make_private"
        )
        self.processes = 1 if group is None else group.world_size
        n = len(dataset)
        self._batch_size, self.n_samples = batch_size, n
        if group is not None:  # every rank the same records (each trains on its shard)
            group.check_same_data(dataset, what="the DataLoader's dataset")
        if self.privacy_unit == "user":
            self._user_codes = _user_codes(p["users"], n)
            self.n_users = int(self._user_codes.max()) + 1
            if group is not None:  # and the same users, before any rank may refuse
                from privdl.train.user_level import grouping_digest

                group.check_same_users(self.n_users, grouping_digest(self._user_codes))
        # the ledger is rank 0's alone (its accountant handed to the others)
        dist_run.on_writer(group, self._open_ledger, self, ("accountant",))
        ledger = self._ledger
        self._stack = contextlib.ExitStack()
        # Opacus' hooks trigger this torch notice on every backward when the input does
        # not require grad, which is the normal case (the trainer silences it too)
        self._stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="Full backward hook", category=UserWarning)
        try:
            # rank 0 writes the "started" entry; when its log refuses it every rank raises
            # (the others would wait in the run's first collective for a rank that left)
            stack = self._stack
            self._op = dist_run.together(self._group, lambda: stack.enter_context(self._audit()))
            self._start(dataset, collate_fn, n, ledger)
        except BaseException as exc:
            stack, self._stack = self._stack, None
            self._restore_optimizer()
            self._release()  # the DP step's hooks, if it was built
            try:
                self._settle(steps=0)  # a reservation made before the failure: no step taken
            except Exception as settle_exc:
                exc.add_note(f"the ledger run {self.run_id} could not be settled ({type(settle_exc).__name__})")
            if not stack.__exit__(*sys.exc_info()):
                raise
        self._state = "open"
        return self

    def _open_ledger(self) -> None:
        self._ledger = runs.open_ledger(self.params["ledger"])
        self.accountant = self._accountant(self._ledger)

    def _accountant(self, ledger: Any) -> str:
        if ledger is None:
            return self.accountant
        chosen = str(ledger.accountant(self.params["dataset_id"]))
        if chosen != self.accountant:
            warnings.warn(
                f"dataset {self.params['dataset_id']!r} is accounted with {chosen!r} in the ledger: "
                f"this run is calibrated and reported under {chosen!r}, not {self.accountant!r}",
                UserWarning,
                stacklevel=6,
            )
        return chosen

    def _record(self) -> dict[str, Any]:
        """The run's configuration as plain data (``seed_given``, never the seed)."""
        p = self.params
        return {
            "api": "make_private",
            "model": type(self._model_in).__name__,
            "epsilon": p["epsilon"],
            "delta": p["delta"],
            "max_grad_norm": p["max_grad_norm"],
            "epochs": p["epochs"],
            "batch_size": self._batch_size,
            "optimizer": type(self._optimizer_in).__name__,
            "accountant": self.accountant,
            "dataset_id": p["dataset_id"],
            "seed_given": p["seed"] is not None,
            "secure_mode": p["secure_mode"],
            "grad_sample_mode": p["grad_sample_mode"],
            # the unit and counts, never the user ids
            "privacy_unit": self.privacy_unit,
            "max_records_per_user": p["max_records_per_user"],
            "n_users": self.n_users,
        }

    def _inputs(self) -> list[Any]:
        from torch.utils.data import TensorDataset

        from privdl.train.data import audit_inputs

        dataset = self._loader_in.dataset
        if type(dataset) is TensorDataset and len(dataset.tensors) == 2:
            return audit_inputs(tuple(dataset.tensors))  # fingerprints: hashes and shapes
        return [{"kind": type(dataset).__name__, "sha256": None, "rows": self.n_samples}]

    def _manifest(self) -> Any:
        """The run's RunManifest (configuration, data fingerprints, weight digests)."""
        from privdl.fingerprint import fingerprint
        from privdl.manifest import RunManifest
        from privdl.train.provenance import statement, tensor_digests

        model = self._plain_model()
        parts = self._inputs()
        names = ("features", "labels") if len(parts) == 2 else ("",)
        data = {f"training data ({n})" if n else "training data": fingerprint(x) for n, x in zip(names, parts, strict=False)}
        device = str(_device_of(model)) if isinstance(model, nn.Module) else "cpu"
        p = self.params
        return RunManifest.collect(
            config=self._record(),
            data=data,
            model_digests=tensor_digests(model) if isinstance(model, nn.Module) else {},
            hardware={"device": device},
            reproducibility=statement(
                seed_given=p["seed"] is not None, secure_mode=bool(p["secure_mode"]), dp_domains=False, device=device
            ),
        )

    def _audit(self) -> Any:
        from privdl.audit import operation

        p = self.params
        record = self._record()
        if p["audit_log"] is None or not dist_run.writes(self._group):
            return operation(None, "train")  # one entry per run: rank 0's
        inputs = self._inputs()
        # "started" before the reservation: it has its evidence even if the run is killed
        return operation(p["audit_log"], "train", params=record, inputs=inputs, started=True)

    def _start(self, dataset: Any, collate_fn: Any, n: int, ledger: Any) -> None:
        """Prepare the model, choose the engine, plan and reserve, build the DP step."""
        p = self.params
        group = self._group
        model, replaced = model_prep.prepare_model(self._model_in)
        if group is not None:
            group.broadcast_module(model)  # one initial state: rank 0's
        self.replaced_modules = list(replaced)
        optimizer = self._optimizer_in
        device = _device_of(model)
        example = _model_input(_collate(dataset, collate_fn, torch.arange(2)), device)
        mode = self._choose_mode(model, example)
        model_prep.refuse_random_under_vmap(model, mode)
        users = None
        if self.privacy_unit == "user":
            from privdl.train.user_level import UserDraw

            # one draw of every user's kept records (the trainer's stream for the subset):
            # rank 0's, handed to every rank
            draw = dist_run.on_writer(
                group,
                lambda: UserDraw.new(
                    self._user_codes, _user_cap(p), generator=self._generator("cpu", 2), secure=bool(p["secure_mode"])
                ),
            )
            users = draw.index(self._user_codes)
            self.records_dropped = users.dropped
        units = n if users is None else users.n_users  # what is sampled and accounted
        per_epoch = steps_per_epoch(units, self._batch_size)

        def make_plan() -> runs.RunPlan:
            target = p["epsilon"]
            if target == "remaining" and ledger is not None:
                # in the other unit than the budget: the largest target whose converted
                # charge fits (and its delta), as the trainer plans it
                target, self.delta = runs.remaining_target(
                    ledger, p["dataset_id"], privacy_unit=self.privacy_unit, delta=p["delta"], n=units
                )
            else:
                self.delta = runs.resolve_delta(p["delta"], units, ledger, p["dataset_id"])
            return runs.plan_run(
                n=units,
                per_epoch=per_epoch,
                epochs=int(p["epochs"]),
                delta=self.delta,
                target_epsilon=target,
                accountant=self.accountant,
                prior=[],
                domain=[],
                ledger=ledger,
                dataset_id=p["dataset_id"],
                model_name=type(model).__name__,
                privacy_unit=self.privacy_unit,
            )

        # one plan and one reservation, rank 0's in a distributed run (a refusal is
        # raised on every rank)
        plan = dist_run.on_writer(group, make_plan, self, ("delta",))
        # from here the ledger holds a reservation: __exit__ (or a failed entry) settles it
        self._plan, self.run_id = plan, plan.run_id
        if model is not self._model_in:  # Opacus' fixes work on a copy of the model
            _retarget(optimizer, self._model_in, model)
        self.noise_multiplier, self.sample_rate = plan.noise_multiplier, plan.sample_rate
        self.planned_steps = plan.planned_steps
        self._op.update(
            params={
                "n_samples": n,
                "noise_multiplier": plan.noise_multiplier,
                "sample_rate": plan.sample_rate,
                "planned_steps": plan.planned_steps,
                "delta": plan.delta,
                "run_id": plan.run_id,
                "grad_sample_mode": mode,
                "replaced_modules": list(self.replaced_modules),
                "privacy_unit": self.privacy_unit,
                "n_users": self.n_users,
                "processes": self.processes,
            }
        )
        self._engine = self._make_engine(mode, model, optimizer, plan, device)
        self._guard_optimizer(optimizer)
        if group is not None and group.world_size > 1:
            # this rank's shard: a block of the records, or of the users with all their
            # kept records, sampled at the global rate; the steps per epoch stay the plan's
            if users is None:
                start, stop = group.record_block(n)
                dataset, units = _rows(dataset, slice(start, stop)), stop - start
            else:
                users, records = group.user_block(users)
                dataset, units = _rows(dataset, records), users.n_users
        sampler = PoissonSampler(
            units, plan.sample_rate, generator=self._generator("cpu", 0), secure=bool(p["secure_mode"])
        )
        self.data_loader = PoissonLoader(self, dataset, collate_fn, sampler, per_epoch, users)
        self.optimizer = PrivateOptimizer(self, optimizer)

    def _choose_mode(self, model: Any, example: Any) -> str:
        from privdl.train.bookkeeping import forward_probe
        from privdl.train.dp_step import choose_mode

        requested = self.params["grad_sample_mode"]
        try:
            probe = forward_probe(model, example)
        except Exception:  # the model takes another part of the batch: no probe
            probe, example = None, None
        if self.privacy_unit == "user":
            from privdl.train.user_level import choose_user_mode

            mode = choose_user_mode(requested, model)  # as the trainer's user level
        else:
            mode = choose_mode(requested, model, example, probe)
        if mode == "ghost":  # needs to own the loss: the loop runs Opacus' hooks instead
            mode = "hooks"
        self._probe = probe
        self.grad_sample_mode = mode
        return mode

    def _make_engine(self, mode: str, model: Any, optimizer: Any, plan: Any, device: Any) -> Any:
        p = self.params
        generator = self._generator(device, 1)
        user = self.privacy_unit == "user"
        if mode == "bk":
            from privdl.train.bookkeeping import BookKeeping
            from privdl.train.user_level import UserBookKeeping

            engine = (UserBookKeeping if user else BookKeeping)(
                model,
                optimizer,
                None,
                noise_multiplier=plan.noise_multiplier,
                max_grad_norm=float(p["max_grad_norm"]),
                expected_batch_size=plan.expected_batch_size,
                generator=generator,
                secure=bool(p["secure_mode"]),
                copy_outputs=bool(self._probe is not None and self._probe.modified),
                collective=self._group,  # the clipped sums all-reduced, rank 0's noise
            )
            engine.from_backward = True
            self.model = model
            return engine
        from privdl.train.dp_step import StepSettings
        from privdl.train.opacus_step import OpacusStep

        settings = StepSettings(
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=float(p["max_grad_norm"]),
            expected_batch_size=plan.expected_batch_size,
            criterion=None,
            shape_for_loss=lambda out, y: (out, y),
            make_optimizer=lambda _params: optimizer,  # the user's own optimizer
            device=device,
            generator=generator,
            secure=bool(p["secure_mode"]),
            collective=self._group,
        )
        if user:
            from privdl.train.user_level import OpacusUserStep

            user_engine = OpacusUserStep(mode, model, settings)  # the user's optimizer updates
            self.model = user_engine.module
            return user_engine
        engine = OpacusStep(mode, model, settings)
        self.model = engine.module
        return engine

    def _guard_optimizer(self, optimizer: Any) -> None:
        """While the run is open, your optimizer's own ``step()`` runs only inside a DP
        step: called directly it would apply the exact, unclipped gradients of your
        ``backward()`` (restored on exit)."""
        own = vars(optimizer).get("step")
        plain_step = optimizer.step

        def step(*args: Any, **kwargs: Any) -> Any:
            if not self._step_open:
                raise UsageError(
                    "call run.optimizer.step(), not the optimizer's own step(): inside the run "
                    "it would apply gradients without clipping and noise"
                )
            return plain_step(*args, **kwargs)

        optimizer.step = step

        def restore() -> None:
            if own is not None:
                optimizer.step = own
            else:
                vars(optimizer).pop("step", None)

        self._restore_optimizer = restore

    def _generator(self, device: Any, offset: int) -> Any:
        # the trainer's streams: on one process seeded (seed * 1000 + 17 + offset) or
        # torch's default; a rank of a distributed run a stream of its own
        return dist_run.generator(self._group, self.params["seed"], device, offset)

    # ------------------------------------------------------------------ steps
    def _check_open(self) -> None:
        if self._state != "open":
            raise UsageError("the run is not open: use it inside `with make_private(...) as run:`")

    def _engine_zero_grad(self) -> None:
        self._check_open()
        engine = self._engine
        if self.grad_sample_mode == "bk":
            engine.zero_grad(set_to_none=True)
        elif self.privacy_unit == "user":
            from privdl.train.opacus_step import forget_forward

            for q in engine.params:
                q.grad_sample = None
                q.grad = None
            forget_forward(engine.module)
        else:
            engine.dp_optimizer.zero_grad(set_to_none=True)
            engine.forget_forward()

    def _step(self) -> None:
        self._check_open()
        if self.steps >= self.planned_steps:
            raise BudgetExceededError(
                f"step {self.steps + 1} would exceed the run's reservation of {self.planned_steps} "
                f"steps ({self.params['epochs']} epochs): make_private(epochs=...) reserves the steps",
                requested=None,
                remaining=0.0,
                dataset_id=self.params["dataset_id"],
            )
        if self._batches <= self.steps:
            raise UsageError(
                "run.optimizer.step() needs a new batch from run.data_loader: the accountant "
                "counts one Poisson batch per step"
            )
        if self.privacy_unit == "user" and self._batches != self.steps + 1:
            # the step groups the backward's rows by run.last_users: a batch drawn before
            # the last one would be clipped with another batch's owners
            raise UsageError(
                'at privacy_unit="user" step on every batch from run.data_loader before drawing '
                "the next (empty ones too): the step must know whose records the batch holds"
            )
        self._step_open = True  # from here the step may release a noisy update
        if self.privacy_unit == "user":
            self._user_step()
        elif self.grad_sample_mode == "bk":
            self._engine.accumulate_backward("mean")
            self._engine.step()
        else:
            self._opacus_step()
        self.steps += 1
        self._step_open = False

    def _opacus_step(self) -> None:
        opt = self._engine.dp_optimizer
        # an empty batch, a skipped backward or an unused layer contributes zero: noise only
        given = [p.grad_sample for p in opt.params if getattr(p, "grad_sample", None) is not None]
        rows = int(given[0].shape[0]) if given and torch.is_tensor(given[0]) else 0
        for p in opt.params:
            if getattr(p, "grad_sample", None) is None:
                p.grad_sample = torch.zeros((rows, *p.shape), dtype=p.dtype, device=p.device)
        opt.step()
        self._engine.forget_forward()

    def _user_step(self) -> None:
        """Each sampled user's gradient of their mean loss, from the backward of the
        batch's mean loss, clipped as one unit; the noisy sum over users."""
        batch = self.last_users
        if self.grad_sample_mode == "bk":
            self._engine.accumulate_backward_users(batch)
            self._engine.step()  # no user sampled: a noise-only step, accounted
        else:
            from privdl.train.opacus_step import forget_forward

            self._engine.step_from_backward(batch)
            forget_forward(self._engine.module)

    def _epoch_done(self) -> None:
        self.history.append({"epoch": len(self.history) + 1, "steps": self.steps, "epsilon": self.epsilon})

    # ------------------------------------------------------------------ exit
    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if self._state != "open":
            return False
        self._state = "closed"
        steps = self.steps
        if exc_type is not None and self._step_open:
            # the step that raised may have applied its noisy update: it is charged too
            steps = min(steps + 1, self.planned_steps)
            self.steps = steps
        self._step_open = False
        failure: BaseException | None = None
        try:
            self._settle(steps)
        except Exception as settle_exc:
            if exc is None:
                failure = settle_exc  # recorded as the run's failure, then raised
            else:
                exc.add_note(f"the ledger run {self.run_id} could not be settled ({type(settle_exc).__name__})")
        self.model = self._release()
        self._restore_optimizer()
        if exc_type is None:
            try:  # every rank the same weights (a collective: every rank gets here)
                dist_run.check_in_sync(self._group, self.model)
            except RuntimeError as sync_exc:
                failure = failure or sync_exc
        if exc_type is None and failure is None:
            self.manifest = self._manifest()
        if self._op is not None:
            self._op.update(
                params={
                    "epsilon_spent": self.epsilon,
                    "steps": self.steps,
                    "accountant": self.accountant,
                    "grad_sample_mode": self.grad_sample_mode,
                    **({"manifest_sha256": self.manifest.sha256()} if self.manifest is not None else {}),
                }
            )
        stack, self._stack = self._stack, None
        if failure is not None:
            if stack is not None:
                stack.__exit__(type(failure), failure, failure.__traceback__)
            raise failure
        return bool(stack.__exit__(exc_type, exc, tb)) if stack is not None else False

    def _settle(self, steps: int) -> None:
        plan = self._plan
        if plan is None or plan.run_id is None or self._ledger is None:
            return
        self._ledger.settle(plan.run_id, history=[plan.segment(steps)] if steps else [])

    def _release(self) -> Any:
        engine = self._engine
        if engine is None:
            return self.model
        if self.grad_sample_mode == "bk":
            return engine.to_standard_module()
        return engine.release()

    def _plain_model(self) -> Any:
        model = self.model
        return getattr(model, "_module", model)


# ---------------------------------------------------------------------------- helpers
def _check(model: Any, optimizer: Any, loader: Any, p: dict[str, Any]) -> tuple[Any, Any, int]:
    """Check the arguments before anything is reserved; the dataset, collate_fn and the
    loader's batch size."""
    from torch.utils.data import DataLoader, IterableDataset

    if not isinstance(model, nn.Module):
        raise UsageError("make_private needs a torch.nn.Module as model")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UsageError("make_private needs a torch.optim.Optimizer over the model's parameters")
    if not isinstance(loader, DataLoader):
        raise UsageError("make_private needs a torch DataLoader (its dataset and batch_size are used)")
    if isinstance(loader.dataset, IterableDataset):
        raise InputError("Poisson sampling needs a map-style dataset, not an IterableDataset")
    if loader.batch_size is None:
        raise UsageError("the DataLoader needs a batch_size (the expected Poisson batch size)")
    if len(loader.dataset) < 2:
        raise InputError("training data needs at least 2 rows")
    eps = p["epsilon"]
    if eps == "remaining":
        if p["ledger"] is None:
            raise UsageError('epsilon="remaining" needs a ledger= and a dataset_id=')
    else:
        check_epsilon(eps)
    if p["ledger"] is not None and not p["dataset_id"]:
        raise UsageError("a ledger needs a dataset_id= to charge")
    check_accountant(p["accountant"])
    if not (isinstance(p["epochs"], numbers.Integral) and p["epochs"] >= 1):
        raise UsageError("epochs must be a positive integer")
    if not (isinstance(p["max_grad_norm"], numbers.Real) and 0 < p["max_grad_norm"] < float("inf")):
        raise UsageError("max_grad_norm must be positive")
    if p["grad_sample_mode"] not in LOOP_MODES:
        raise UsageError(
            f"grad_sample_mode must be one of {', '.join(LOOP_MODES)} in your own loop "
            "(ghost clipping needs to own the loss: use PrivateTrainer for it)"
        )
    if p["secure_mode"] and p["seed"] is not None:
        from privdl.errors import SecurityError

        raise SecurityError("secure_mode draws from a CSPRNG and cannot take a seed")
    _check_unit(p)
    from torch.utils.data import default_collate

    return loader.dataset, loader.collate_fn or default_collate, int(loader.batch_size)


def _check_unit(p: dict[str, Any]) -> None:
    """``privacy_unit``, ``users`` and ``max_records_per_user``, by the trainer's rules.

    Raises:
        UsageError: an unknown unit, a bad or missing maximum, a mode that cannot train
            at user level, ``users=`` missing at user level or given at record level.
    """
    from types import SimpleNamespace

    from privdl.train.user_level import check_user_params

    # the trainer's check reads these three attributes
    check_user_params(
        SimpleNamespace(
            privacy_unit=p["privacy_unit"],
            max_records_per_user=p["max_records_per_user"],
            grad_sample_mode=p["grad_sample_mode"],
        )
    )
    if p["privacy_unit"] == "user" and p["users"] is None:
        raise UsageError('privacy_unit="user" needs users=: one user id per record of the DataLoader\'s dataset')
    if p["privacy_unit"] != "user" and p["users"] is not None:
        raise UsageError('users= needs privacy_unit="user"')


def _user_codes(users: Any, n: int) -> Any:
    """Every record's user as a code (:func:`~privdl.train.user_level.users_of`).

    Raises:
        InputError: another length than the dataset, a record without a user id, or
            fewer than 2 users.
    """
    from privdl.train.user_level import users_of

    codes = users_of(None, users, None, n, what="the DataLoader's dataset")
    if int(codes.max()) + 1 < 2:
        raise InputError("user-level training needs at least 2 users")
    return codes


def _user_cap(p: dict[str, Any]) -> int:
    return int(p["max_records_per_user"])


def _rows(dataset: Any, rows: Any) -> Any:
    """The records ``rows`` (a slice or an index tensor) of ``dataset``: a TensorDataset
    of those rows (a view for a slice), else a ``Subset`` (read record by record)."""
    from torch.utils.data import Subset, TensorDataset

    if type(dataset) is TensorDataset:
        return TensorDataset(*(t[rows] for t in dataset.tensors))
    if isinstance(rows, slice):
        return Subset(dataset, range(rows.start, rows.stop))
    return Subset(dataset, rows.tolist())


def _collate(dataset: Any, collate_fn: Any, idx: Any) -> Any:
    """The records ``idx`` of ``dataset`` as one batch; a TensorDataset with the default
    collation is indexed once per tensor (the same batch, without per-record collation)."""
    from torch.utils.data import TensorDataset, default_collate

    if type(dataset) is TensorDataset and collate_fn is default_collate:
        return [t[idx] for t in dataset.tensors]
    return collate_fn([dataset[int(i)] for i in idx.tolist()])


def _model_input(batch: Any, device: Any) -> Any:
    """The part of a collated batch a model is usually called on: the first field."""
    from privdl.train.data import to_device

    x = batch[0] if isinstance(batch, list | tuple) and batch else batch
    return to_device(x, device)


def _device_of(model: nn.Module) -> Any:
    first = next((p for p in model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _retarget(optimizer: Any, before: nn.Module, after: nn.Module) -> None:
    """Point ``optimizer`` at the fixed copy's parameters (same names and shapes), its
    state moved with them.

    Raises:
        UsageError: a parameter of the optimizer has no counterpart in the fixed model.
    """
    names = {id(p): name.replace("_orig_mod.", "") for name, p in before.named_parameters()}
    new = dict(after.named_parameters())
    kept = {id(q) for q in new.values()}  # an uncompiled model holds the same parameters
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            if id(p) in kept:
                params.append(p)
                continue
            name = names.get(id(p))
            q = new.get(name) if name is not None else None
            if q is None or q.shape != p.shape:
                raise UsageError(
                    "the model's layers were replaced for DP training (Opacus' ModuleValidator) and "
                    f"the optimizer's parameter {name or '?'!r} has no counterpart: call "
                    "opacus.validators.ModuleValidator.fix(model) before making the optimizer"
                )
            if p in optimizer.state:
                optimizer.state[q] = optimizer.state.pop(p)
            params.append(q)
        group["params"] = params


def _target(eps: Any) -> float | str:
    return eps if isinstance(eps, str) else float(eps)
