"""PrivateTrainer: differentially private training in one line, on Opacus.

``PrivateTrainer(model, epsilon=...)`` calibrates the noise for the planned run, charges
the dataset's budget ledger before the first step, trains with DP-SGD (per-sample
clipping and Gaussian noise) on exact Poisson batches, and records the accountant
history that every reported epsilon is computed from.

The trainer orchestrates; the parts live beside it: the run plan and state
(:mod:`~privdl.train.run`), model preparation (:mod:`~privdl.train.model_prep`), the DP
step (:mod:`~privdl.train.dp_step`: book-keeping or Opacus), the data
(:mod:`~privdl.train.data`), the progress bar (:mod:`~privdl.train.progress`) and model
folders (:mod:`~privdl.train.checkpoint`, :mod:`~privdl.train.modelfile`).

Example:
    >>> trainer = PrivateTrainer(model, epsilon=2.0)            # doctest: +SKIP
    >>> trainer.fit((X_train, y_train), val=(X_val, y_val))     # doctest: +SKIP
    >>> trainer.epsilon, trainer.predict(X_test)                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from privdl._optional import require
from privdl.budget.accounting import epsilon_of
from privdl.budget.facts import RunFacts
from privdl.errors import InputError, UsageError
from privdl.estimator import EstimatorParams
from privdl.train import checkpoint, model_prep, outputs, provenance, user_level
from privdl.train import distributed as dist_run
from privdl.train import run as runs
from privdl.train.data import as_data, audit_inputs, resolve_device, steps_per_epoch, val_overlap
from privdl.train.dp_step import choose_mode
from privdl.train.modelfile import ModelFolder, read_model_folder
from privdl.train.outputs import Predictions
from privdl.train.params import (
    DEFAULTS,
    check_params,
    default_lr,
    make_optimizer,
    params_record,
    resolve_batch_size,
)
from privdl.train.progress import progress_bar, progress_stats
from privdl.train.run import ResumePoint, TrainingRun

torch: Any = require("torch", "train")
from torch import nn  # noqa: E402

__all__ = ["DEFAULTS", "PrivateTrainer"]

# what a fitted encoder sets on the trainer (handed from rank 0 in a distributed run)
_ENCODER_STATE = (
    "encoder_",
    "feature_names_",
    "_domain_segments",
    "domain_history_",
    "domain_run_id_",
    "domain_source_",
    "accountant_",
)


class PrivateTrainer(EstimatorParams, Predictions):
    """Train a torch model with (epsilon, delta)-differential privacy (DP-SGD).

    A scikit-learn estimator: ``get_params`` / ``set_params`` (``epsilon=`` is stored
    as ``target_epsilon``: ``epsilon`` is the epsilon spent), ``sklearn.base.clone``,
    ``fit(X, y)`` / ``predict`` / ``predict_proba`` / ``score``, learned state ending in
    ``_`` and :class:`~privdl.errors.NotFittedError` before ``fit``.

    Args:
        model: a ``torch.nn.Module``. BatchNorm and other layers Opacus cannot train
            privately are replaced (``replaced_modules_`` says which).
        epsilon: target epsilon for this run, or ``"remaining"`` to spend what is left
            of the dataset's budget in ``ledger``.
        delta: target delta; default ``1 / (10 n)`` (or the ledger's delta). Must be
            below ``1 / n``.
        max_grad_norm: per-sample clipping norm C.
        epochs: passes over the data (each of ``ceil(n / batch_size)`` steps).
        batch_size: *expected* batch size; batches are Poisson samples with rate
            ``1 / ceil(n / batch_size)``. Default: a ``DataLoader``'s own batch size,
            else 256 (``batch_size_`` is the one used).
        lr: learning rate (default depends on ``optimizer``).
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"`` or a
            ``torch.optim.Optimizer`` class.
        loss: ``"cross_entropy"``, ``"bce"``, ``"mse"`` or a loss module; by default
            chosen from the target (integer labels: cross-entropy, or BCE for a model
            with one output; floats: MSE).
        accountant: ``"prv"`` (default) or ``"rdp"``.
        ledger: a :class:`~privdl.BudgetLedger` or its path/URL; the run is reserved
            before its first step and settled after the last.
        dataset_id: the ledger's dataset identifier (required with ``ledger``).
        audit_log: an AuditLog, a path, or None; one ``train`` entry per fit.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ...
        seed: seed for initialization, sampling and noise, for reproducible
            experiments. Anyone who knows the seed can reproduce the noise: do not
            publish it with a model trained on personal data.
        secure_mode: draw Poisson sampling and noise from a CSPRNG (ChaCha20 keyed by
            ``os.urandom``) and use Opacus' defence against floating-point attacks.
        max_physical_batch_size: split each sampled batch into chunks of at most this
            many records (same privacy, less memory).
        grad_sample_mode: ``"auto"``: ``"bk"`` (privdl's one-backward book-keeping, see
            :mod:`privdl.train.bookkeeping`) when every trainable layer is a ``Linear``,
            ``Conv1d``/``Conv2d``, ``LayerNorm``, ``GroupNorm`` or ``Embedding`` run once
            per forward pass, else Opacus' ghost clipping when every trainable layer
            supports it, else Opacus' hooks; or name a mode (``"bk"``, ``"ghost"``, ``"hooks"``,
            ``"functorch"``, ``"ew"``).
        encoder: a TableEncoder for DataFrame input; by default one is fitted.
        domains: for the default encoder, where domains with no public source come from
            (see :class:`~privdl.TableEncoder`): ``"dp"`` (estimated with DP, charged to
            the ledger and composed into this run's epsilon), ``"policy"`` (refuse) or
            ``"learned-unprotected"`` (no DP; the report says so).
        domain_epsilon: epsilon for a DP domain estimate on its own (default: a fifth of
            the run's epsilon, or of what is left for ``"remaining"``); the run's total,
            domains and training composed, stays ``epsilon``.
        progress: a progress bar per epoch on stderr with the loss, the validation
            metric and epsilon so far (``"auto"``: in a terminal or a notebook).
        checkpoint_dir: write a signed training checkpoint there after every epoch
            (see :func:`PrivateTrainer.resume`).
        checkpoint_key: the Secret (HMAC) or Ed25519 key that signs checkpoints.
        privacy_unit: ``"record"`` (default) or ``"user"``: user-level DP-SGD (see
            :mod:`privdl.train.user_level`), which samples users, clips each user's
            gradient as one unit and reports epsilon for one person with all their
            records; ``fit`` then takes ``user_column=`` or ``users=``.
        max_records_per_user: with ``privacy_unit="user"``, each user trains on at most
            this many of their records (a random subset when they have more).
    """

    # Learned state: class-level defaults until fit() sets each on the instance, so that
    # __init__ stores the parameters only (scikit-learn's rule). A fit replaces these
    # values and never mutates them in place (the sequences and the mapping are immutable).
    # user-level runs (privacy_unit="user"): users, and records beyond the cap
    n_users_: int | None = None
    records_dropped_: int | None = None
    # set by privdl.tune on the candidate it releases: the search that chose it
    search_: dict[str, Any] | None = None
    # domain_*: where the encoder's domains came from ("policy", "dp",
    # "learned-unprotected"), a DP estimate's segments and ledger run
    domain_source_: str | None = None
    domain_history_: Sequence[tuple[float, float, int]] = ()
    domain_run_id_: str | None = None
    model_: nn.Module | None = None
    # per epoch; its exact training "loss" is for the live progress bar only (not DP)
    history_: Sequence[dict[str, Any]] = ()
    val_overlap_: int | None = None
    accountant_history_: Sequence[tuple[float, float, int]] = ()
    # the dataset's accountant when a ledger chose it (else None: ours applies)
    accountant_: str | None = None
    noise_multiplier_: float | None = None
    sample_rate_: float | None = None
    steps_: int = 0
    planned_steps_: int = 0
    delta_: float | None = None
    n_samples_: int | None = None
    batch_size_: int | None = None  # the expected batch size used
    replaced_modules_: Sequence[str] = ()
    grad_sample_mode_: str | None = None
    task_: str | None = None
    n_outputs_: int | None = None
    encoder_: Any = None
    feature_names_: list[str] | None = None
    ledger_: Any = None
    run_id_: str | None = None
    device_: str | None = None
    fit_seconds_: float | None = None
    # the last fit's RunManifest (privdl.train.provenance) and its data fingerprints
    manifest_: Any = None
    data_fingerprints_: Mapping[str, Any] = MappingProxyType({})

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        epsilon: float | str = 3.0,
        delta: float | None = None,
        max_grad_norm: float = DEFAULTS["max_grad_norm"],
        epochs: int = DEFAULTS["epochs"],
        batch_size: int | None = None,
        lr: float | None = None,
        optimizer: str | type = DEFAULTS["optimizer"],
        loss: str | nn.Module | None = None,
        accountant: str = "prv",
        ledger: Any = None,
        dataset_id: str | None = None,
        audit_log: Any = None,
        device: str = "auto",
        seed: int | None = None,
        secure_mode: bool = False,
        max_physical_batch_size: int | None = None,
        grad_sample_mode: str = "auto",
        encoder: Any = None,
        progress: bool | str = "auto",
        checkpoint_dir: Any = None,
        checkpoint_key: Any = None,
        domains: str = "dp",
        domain_epsilon: float | None = None,
        privacy_unit: str = "record",
        max_records_per_user: int | None = None,
    ) -> None:
        self.model = model
        self._target_epsilon = epsilon  # the parameter epsilon= (trainer.epsilon is the spent one)
        self.delta = delta
        self.max_grad_norm = max_grad_norm
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.loss = loss
        self.accountant = accountant
        self.ledger = ledger
        self.dataset_id = dataset_id
        self.audit_log = audit_log
        self.device = device
        self.seed = seed
        self.secure_mode = secure_mode
        self.max_physical_batch_size = max_physical_batch_size
        self.grad_sample_mode = grad_sample_mode
        self.encoder = encoder
        self.progress = progress
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_key = checkpoint_key
        self.domains = domains
        self.domain_epsilon = domain_epsilon
        self.privacy_unit = privacy_unit
        self.max_records_per_user = max_records_per_user
        # user-level runs (privacy_unit="user"): the users= / user_column= of the fit
        self._users: tuple[str | None, Any] = (None, None)
        # the draw of every user's kept records (a checkpoint keeps it for a resume)
        self._user_draw: user_level.UserDraw | None = None
        # a DP domain estimate's accountant segments (domain_history_ is the public copy)
        self._domain_segments: list[tuple[float, float, int]] = []
        # set by resume(): where the checkpointed run goes on from
        self._resume: ResumePoint | None = None
        self._step_open = False  # inside a DP step (see _settle_on_failure)
        # this fit's ledger reservation while nothing else settles it (no checkpoint yet)
        self._open_plan: runs.RunPlan | None = None
        # this process's place in a torchrun run (None: one process)
        self._group: dist_run.Group | None = None

    # ------------------------------------------------------------------ parameters
    _param_attributes: ClassVar[dict[str, str]] = {"epsilon": "target_epsilon"}

    @property
    def target_epsilon(self) -> float | str:
        """The ``epsilon=`` parameter: the run's target (``trainer.epsilon`` is the
        epsilon spent)."""
        return self._target_epsilon

    @target_epsilon.setter
    def target_epsilon(self, value: float | str) -> None:
        self._target_epsilon = value

    def params_record(self) -> dict[str, Any]:
        """The run's configuration as plain data, as it goes into the audit record, the
        report and a saved model (``get_params()`` is scikit-learn's: the constructor
        parameters as given)."""
        return params_record(self)

    def __sklearn_is_fitted__(self) -> bool:
        return self.is_fitted

    def _lr(self) -> float:
        return default_lr(self.lr, self.optimizer)

    # ------------------------------------------------------------------ results
    @property
    def epsilon(self) -> float:
        """Epsilon spent so far, from the accountant, at ``delta_`` (0 before fit)."""
        if not self.accountant_history_ or self.delta_ is None:
            return 0.0
        if self.search_ is not None:  # the best of a search: the whole search's epsilon
            from privdl.budget.accounting.tuning import recorded_search_epsilon

            return recorded_search_epsilon(self.search_)
        return epsilon_of(self.accountant_history_, delta=self.delta_, accountant=self._accountant())

    def _accountant(self, ledger: Any = None) -> str:
        """The accountant this run is calibrated, charged and reported under: the
        dataset's own when a ledger is used (recorded as ``accountant_``), else ours."""
        if ledger is not None:
            chosen = ledger.accountant(self.dataset_id)
            if chosen != self.accountant and self.accountant_ != chosen:
                warnings.warn(
                    f"dataset {self.dataset_id!r} is accounted with {chosen!r} in the ledger: this "
                    f"run is calibrated and reported under {chosen!r}, not {self.accountant!r}",
                    UserWarning,
                    stacklevel=4,
                )
            self.accountant_ = chosen
        return self.accountant_ or self.accountant

    @property
    def is_fitted(self) -> bool:
        return self.model_ is not None and self.steps_ > 0

    def run_facts(self) -> RunFacts:
        """The explicit record of the fitted run that :meth:`report` is built from.

        Raises:
            NotFittedError: the trainer has not been fitted.
        """
        return RunFacts.of(self)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        data: Any,
        target: str | None = None,
        val: Any = None,
        *,
        subjects: Any = None,
        user_column: str | None = None,
        users: Any = None,
    ) -> PrivateTrainer:
        """Train the model with DP-SGD.

        Calling ``fit`` again continues training the fitted model as a new run (new
        noise calibration and ledger reservation); ``epsilon`` then composes all runs.

        Args:
            data: ``(X, y)`` arrays/tensors, a ``TensorDataset``, a ``DataLoader``, any
                map-style ``Dataset``, or a pandas DataFrame with ``target=``.
            target: the label column when ``data`` is a DataFrame; or the labels
                themselves (scikit-learn's ``fit(X, y)``: an array, a tensor or a Series).
            val: validation data in the same forms (not charged: it must not be the
                training data); its metric is reported per epoch. The metric is not
                covered by the DP guarantee (it is computed on ``val`` without noise);
                a ``val`` sharing rows with ``data`` gets a warning.
            subjects: the pseudonyms of the people in ``data`` (e.g. the released
                table's ``user_id`` column); with ``audit_log`` they are recorded as a
                keyed filter, so an erasure request finds this training run.
            user_column: with ``privacy_unit="user"`` and a DataFrame: the column of
                user ids (pseudonyms); it is not a feature.
            users: with ``privacy_unit="user"`` and array data: each record's user id.

        Returns:
            ``self``.

        Raises:
            BudgetExceededError: the ledger refuses the run (before any step).
            UsageError / InputError: bad configuration or data; also for a
                ``DistributedDataParallel`` model (pass the plain module), a SQLite
                ledger in a torchrun run on several machines, or ranks of a torchrun run
                given other data or other users.

        Under ``torchrun`` (or an initialized ``torch.distributed`` process group) the
        same call trains one DP run over all processes: see
        :mod:`privdl.train.distributed`.
        """
        data, target = _with_target(data, target)
        check_params(self)
        user_level.check_user_params(self)
        if self.privacy_unit != "user" and (user_column is not None or users is not None):
            raise UsageError('user_column= / users= need privacy_unit="user"')
        self._users = (user_column, users)
        self._group = dist_run.join(
            self.device, ledger=self.ledger, models=(self.model, self.model_), privacy_unit=self.privacy_unit
        )
        self._open_plan = None
        with contextlib.ExitStack() as stack, self._settle_on_failure():
            # rank 0 writes the "started" entry; when its log refuses it every rank raises
            # (the others would wait in the run's first collective for a rank that left)
            op = self._together(lambda: stack.enter_context(self._audit("train", data)))
            if subjects is not None:
                op.update(subjects=subjects)
            run = self._setup(data, target, val)
            self.data_fingerprints_ = {**_fingerprints("training data", data), **_fingerprints("validation data", val)}
            if self._group is None:  # (a distributed run checks the whole data in _setup)
                self.val_overlap_ = val_overlap(data, val, target, run.data, run.val)
            op.update(
                params={
                    "n_samples": self.n_samples_,
                    "noise_multiplier": self.noise_multiplier_,
                    "sample_rate": self.sample_rate_,
                    "planned_steps": self.planned_steps_,
                    "batch_size": self.batch_size_,
                    "delta": self.delta_,
                    "run_id": self.run_id_,
                    "grad_sample_mode": self.grad_sample_mode_,
                    "replaced_modules": list(self.replaced_modules_),
                    "privacy_unit": self.privacy_unit,
                    "n_users": self.n_users_,
                    "processes": 1 if self._group is None else self._group.world_size,
                }
            )
            self._train(run)
            self.manifest_ = provenance.training_manifest(self)
            op.update(
                params={
                    "epsilon_spent": self.epsilon,
                    "steps": self.steps_,
                    "accountant": self._accountant(),
                    # the DP step may change mid-run (ghost -> hooks on a reused layer)
                    "grad_sample_mode": self.grad_sample_mode_,
                    "replaced_modules": list(self.replaced_modules_),
                    "domain_run_id": self.domain_run_id_,
                    "manifest_sha256": self.manifest_.sha256(),
                }
            )
        return self

    @contextlib.contextmanager
    def _settle_on_failure(self) -> Iterator[None]:
        """A fit that raises after its ledger reservation settles it with the steps
        actually taken (none: an empty history), so an exception never keeps budget that
        was not spent. A run with a checkpoint keeps its reservation (:meth:`resume` goes
        on with it and settles it), and so does an interrupt (``KeyboardInterrupt``,
        ``SystemExit``): it may land after a step's noisy update and before the step is
        counted, and a kill keeps the whole reservation too."""
        try:
            yield
        except Exception as exc:
            plan, self._open_plan = self._open_plan, None
            if plan is None or plan.run_id is None or self.ledger_ is None:
                raise
            # a step that raised may have applied its noisy update before failing: it is
            # charged too (over-charging one step is safe; under-charging is not)
            steps = min(self.steps_ + (1 if self._step_open else 0), plan.planned_steps)
            self._step_open = False
            self.accountant_history_ = plan.history(steps)
            try:
                self.ledger_.settle(plan.run_id, history=[plan.segment(steps)] if steps else [])
            except Exception as settle_exc:  # the original error is the one to see
                exc.add_note(
                    f"the ledger run {plan.run_id} could not be settled ({type(settle_exc).__name__})"
                )
            raise

    def _audit(self, name: str, data: Any) -> Any:
        from privdl.audit import operation

        if self.audit_log is None or not dist_run.writes(self._group):
            return operation(None, name)
        written = [self.checkpoint_dir] if self.checkpoint_dir is not None else []
        # a "started" entry before the block: the ledger reservation made in _setup has
        # its evidence even if the run is killed before the final entry
        return operation(
            self.audit_log,
            name,
            params=self.params_record(),
            inputs=audit_inputs(data),
            outputs=written,
            started=True,
        )

    # ------------------------------------------------------------------ data
    def _prepare(self, data: Any, target: str | None, *, fit: bool, what: str) -> Any:
        """Data -> TensorData / IndexedData; DataFrames go through the TableEncoder."""
        import pandas as pd

        if fit:
            self._domain_segments = []  # this run's DP domain estimate, if it makes one
        if not isinstance(data, pd.DataFrame):
            return as_data(data, what=what)
        if target is None:
            raise UsageError(f"{what} is a DataFrame: pass target= (the label column)")
        if target not in data.columns:
            raise InputError(f"{what} has no column {target!r}")
        user_column = self._users[0] if self.privacy_unit == "user" else None
        if user_column is not None and user_column in data.columns:
            data = data.drop(columns=[user_column])  # who a record belongs to is no feature
        if fit and self.encoder_ is None:
            # the first table decides the input layout; fitted (a DP estimate drawn and
            # charged) once, on rank 0 of a distributed run
            self._on_writer(lambda: self._fit_encoder(data, target), _ENCODER_STATE)
        elif fit:
            # a model trained before keeps its input layout: reuse its encoder
            self.feature_names_ = list(self.encoder_.feature_names_)
        elif self.encoder_ is None:
            raise UsageError(f"{what} is a DataFrame but the model was trained on arrays")
        X = self.encoder_.transform(data)
        y = outputs.encode_target(self.encoder_, data[target])
        return as_data((X, y), what=what)

    def _fit_encoder(self, data: Any, target: str) -> None:
        from privdl.train.encoding import TableEncoder

        enc = self.encoder if self.encoder is not None else TableEncoder(domains=self.domains)
        asked_dp = getattr(enc, "domains", None) == "dp" and not hasattr(enc, "columns_")
        if self.privacy_unit == "user":
            enc = user_level.user_level_encoder(enc)
        ledger = runs.open_ledger(self.ledger)
        try:
            segments = self._fit_domains(enc, data, target, ledger)
        except InputError as exc:
            if self.privacy_unit == "user" and asked_dp and "domain" in str(exc):
                raise user_level.refused_dp_domains() from exc
            raise
        self._domain_segments = segments
        self.domain_history_ = list(segments)
        self.domain_run_id_ = getattr(enc, "domain_run_id_", None)
        self.domain_source_ = getattr(enc, "domain_source_", None)
        self.encoder_ = enc
        self.feature_names_ = list(enc.feature_names_)

    def _fit_domains(self, enc: Any, data: Any, target: str, ledger: Any) -> list[tuple[float, float, int]]:
        return runs.fit_table_encoder(
            enc,
            data,
            target,
            ledger=ledger,
            dataset_id=self.dataset_id,
            delta=self.delta,
            target_epsilon=self.target_epsilon,
            domain_epsilon=self.domain_epsilon,
            accountant=self._accountant(ledger),
        )

    # ------------------------------------------------------------------ setup
    def _setup(self, data: Any, target: str | None, val: Any) -> TrainingRun:
        """Prepare data and model, plan the run (sigma, ledger reservation), build the
        DP step: everything before the first step."""
        group = self._group
        device = dist_run.local_device(resolve_device(self.device), group)
        self.device_ = str(device)
        if self.seed is not None:
            torch.manual_seed(self.seed)
        train = self._prepare(data, target, fit=True, what="training data")
        valid = None if val is None else self._prepare(val, target, fit=False, what="val")
        n = len(train)
        if n < 2:
            raise InputError("training data needs at least 2 rows")
        if group is not None:
            group.check_same_data(train)
            # on the whole training data (each rank trains on its shard)
            self.val_overlap_ = val_overlap(data, val, target, train, valid, stacklevel=4)
        resume = self._resume
        if resume is not None and resume.privacy_unit != self.privacy_unit:
            raise InputError(
                f"the checkpoint is of a {resume.privacy_unit}-level run: it resumes with "
                f"privacy_unit={resume.privacy_unit!r}, not {self.privacy_unit!r}"
            )
        unit_index = self._user_index(data, n) if self.privacy_unit == "user" else None
        units = n if unit_index is None else unit_index.n_users
        # a distributed user-level rank trains on its block of the users (all their records)
        user_shard = None if unit_index is None or group is None else group.shard_users(train, unit_index)
        if resume is not None and n != self.n_samples_:
            raise InputError(
                f"the checkpoint was trained on {self.n_samples_} records, not {n}: "
                "a resumed run must see the same data"
            )
        self.n_samples_ = n
        self.batch_size_ = resolve_batch_size(self.batch_size, data)
        per_epoch = resume.per_epoch if resume else steps_per_epoch(units, self.batch_size_)
        # A second fit continues training the fitted model: its earlier runs stay in
        # the accountant history, so the reported epsilon covers all of them.
        if resume is not None:
            prior = list(self.accountant_history_[:-1])
        elif self.model_ is not None and self.steps_ > 0:
            prior = list(self.accountant_history_)
        else:
            prior = []
        prepared = model_prep.prepare_for_training(
            self.model_ if prior and self.model_ is not None else self._sized_model(train),
            train,
            loss=self.loss,
            device=device,
        )
        model, probe = prepared.model, prepared.probe
        if group is not None:
            group.broadcast_module(model)  # one initial state: rank 0's
        if resume is None:
            self.replaced_modules_ = list(prepared.replaced)
        self.n_outputs_, self.task_ = prepared.n_outputs, prepared.task
        if unit_index is None:
            mode = choose_mode(self.grad_sample_mode, model, prepared.example, probe)
        else:
            mode = user_level.choose_user_mode(self.grad_sample_mode, model)
        model_prep.refuse_random_under_vmap(model, mode)
        def make_plan() -> runs.RunPlan:
            # delta: the ledger's when there is one, else 1/(10 n); never >= 1/n
            ledger = runs.open_ledger(self.ledger)
            accountant = self._accountant(ledger)
            target = self.target_epsilon
            if target == "remaining" and resume is None and ledger is not None:
                # in the other unit than the budget: the largest target whose converted
                # charge fits (and its delta)
                target, self.delta_ = runs.remaining_target(
                    ledger, self.dataset_id, privacy_unit=self.privacy_unit, delta=self.delta, n=units
                )
            else:
                self.delta_ = runs.resolve_delta(self.delta_ if resume else self.delta, units, ledger, self.dataset_id)
            # noise for the whole planned run, this run's DP domain estimate composed in;
            # the ledger reservation before the first step (a resumed run keeps both)
            plan = runs.plan_run(
                n=units,
                per_epoch=per_epoch,
                epochs=int(self.epochs),
                delta=self.delta_,
                target_epsilon=target,
                accountant=accountant,
                prior=prior,
                domain=list(self._domain_segments),
                ledger=ledger,
                dataset_id=self.dataset_id,
                model_name=type(model).__name__,
                resumed=None if resume is None else (float(self.noise_multiplier_ or 0.0), self.run_id_),
                privacy_unit=self.privacy_unit,
            )
            self.ledger_ = ledger
            return plan

        # made once, on rank 0 of a distributed run, and handed to the other ranks (which
        # hold no ledger: rank 0 alone settles)
        plan = self._on_writer(make_plan, ("delta_", "accountant_"))
        self.noise_multiplier_, self.sample_rate_ = plan.noise_multiplier, plan.sample_rate
        self.planned_steps_ = plan.planned_steps
        self.run_id_ = plan.run_id
        self._open_plan = plan if resume is None and plan.run_id is not None and self.ledger_ else None
        self.grad_sample_mode_ = mode
        if user_shard is not None:
            shard, unit_index = user_shard
        else:
            shard = train if group is None else group.shard(train)
        run = runs.start_run(
            plan,
            prepared,
            mode,
            shard,
            valid,
            device=device,
            max_grad_norm=self.max_grad_norm,
            make_optimizer=self._make_optimizer,
            generator=self._generator,
            secure=self.secure_mode,
            max_physical_batch_size=self.max_physical_batch_size,
            on_switch=self._switched,
            resume=resume,
            make_step=None if unit_index is None else user_level.make_user_step,
            collective=group,
            units=None if user_shard is None else unit_index.n_users,
        )
        if unit_index is not None:
            run = user_level.as_user_run(run, unit_index)
        self.model_ = model
        self.history_ = [] if resume is None else list(resume.history)
        self.steps_ = 0 if resume is None else resume.steps
        self._resume = None
        self.accountant_history_ = plan.history(self.steps_)
        return run

    def _user_index(self, data: Any, n: int) -> Any:
        """The kept records of every user (user-level runs), drawn once per fit; a
        resumed fit takes the checkpoint's draw (checked against the users given)."""
        import pandas as pd

        column, users = self._users
        frame = data if isinstance(data, pd.DataFrame) else None
        codes = user_level.users_of(frame, users, column, n, what="training data")
        cap = int(self.max_records_per_user)  # type: ignore[arg-type]
        if self._group is not None:  # every rank the same users (before any rank may refuse)
            self._group.check_same_users(int(codes.max()) + 1 if len(codes) else 0, user_level.grouping_digest(codes))
        resume = self._resume
        if resume is not None:
            if resume.users is None:
                raise InputError("the checkpoint holds no user-level state: it cannot resume at user level")
            resume.users.check(codes, cap)
            draw = resume.users
        else:
            # one draw for the run: rank 0's (seeded, or ChaCha20), handed to every rank
            draw = self._on_writer(
                lambda: user_level.UserDraw.new(
                    codes, cap, generator=self._generator(torch.device("cpu"), 2), secure=self.secure_mode
                ),
                (),
            )
        index = draw.index(codes)
        self._user_draw = draw
        if index.n_users < 2:
            raise InputError("user-level training needs at least 2 users")
        self.n_users_, self.records_dropped_ = index.n_users, index.dropped
        return index

    def _sized_model(self, train: Any) -> Any:
        """``model``, or the module a :class:`~privdl.train.architectures.TabularModel`
        stands for, sized from the encoded width and the encoder's label set."""
        from privdl.train.architectures import TabularModel

        if not isinstance(self.model, TabularModel):
            return self.model
        if self.encoder_ is None or not hasattr(train, "X"):
            raise UsageError(
                f"model {self.model}: a model spec is sized from a table; pass a DataFrame with "
                "target= (or a torch module)"
            )
        classes = self.encoder_.classes_
        return self.model.build(int(train.X.shape[1]), None if classes is None else len(classes))

    def _together(self, make: Any) -> Any:
        """``make()``; in a distributed run every rank raises when it raises on one
        (:meth:`~privdl.train.distributed.Group.together`)."""
        return dist_run.together(self._group, make)

    def _on_writer(self, make: Any, attrs: tuple[str, ...]) -> Any:
        """``make()`` here on one process; on rank 0 only of a distributed run, its result
        and the trainer's ``attrs`` handed to the other ranks."""
        return dist_run.on_writer(self._group, make, self, attrs)

    def _make_optimizer(self, params: list[Any]) -> Any:
        return make_optimizer(self.optimizer, self._lr(), params)

    def _generator(self, device: Any, offset: int) -> Any:
        return dist_run.generator(self._group, self.seed, device, offset)

    def _switched(self, note: str) -> None:
        """The DP step moved from ghost clipping to hooks: recorded and reported."""
        self.grad_sample_mode_ = "hooks"
        self.replaced_modules_ = [*self.replaced_modules_, note]
        warnings.warn(note, UserWarning, stacklevel=2)

    # ------------------------------------------------------------------ training loop
    def _train(self, run: TrainingRun) -> None:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # Opacus' ghost clipping triggers this torch notice on every step when
                # the input does not require grad, which is the normal case
                warnings.filterwarnings("ignore", message="Full backward hook", category=UserWarning)
                with progress_bar(self.progress if dist_run.writes(self._group) else False) as bar:
                    while run.epoch < self.epochs:
                        run = self._run_epoch(run, bar)
        finally:
            self.fit_seconds_ = time.perf_counter() - t0
        # the DP step hands the plain module back; the ledger holds each run's own
        # history (earlier runs settled already)
        self.model_ = run.dp_step.release()
        dist_run.check_in_sync(self._group, self.model_)
        if self.ledger_ is not None and self.run_id_ is not None:
            self._open_plan = None  # settled here, by the run's own record
            self.ledger_.settle(self.run_id_, history=self.accountant_history_[-1:])
        self.model_.eval()

    def _run_epoch(self, run: TrainingRun, bar: Any) -> TrainingRun:
        plan = run.plan
        run.dp_step.train()
        if self.seed is not None and self.checkpoint_dir is not None and run.epoch > 0:
            # a seeded run that writes checkpoints starts its streams afresh each epoch,
            # from (seed, epoch): resumed from this epoch's checkpoint with the same seed,
            # it draws the same batches and noise (other runs keep one stream per fit)
            for offset, generator in run.streams:
                if generator is not None:
                    generator.manual_seed(dist_run.stream_seed(self._group, self.seed, offset, run.epoch))
        loss_sum = torch.zeros((), device=run.device)
        count = 0
        task = None
        if bar is not None:
            task = bar.add_task(f"epoch {run.epoch + 1}/{self.epochs}", total=plan.per_epoch, stats="")
        for _ in range(plan.per_epoch):
            idx = run.sampler.sample()
            self._step_open = True  # from here the step may release a noisy update
            loss_sum += run.step(idx)
            count += len(idx)
            self.steps_ += 1
            self._step_open = False
            if task is not None:
                bar.advance(task)
        run = replace(run, epoch=run.epoch + 1)
        # the accountant's exact record: earlier runs of this model, then this run's
        # single segment with every step taken so far
        self.accountant_history_ = plan.history(self.steps_)
        metric_name, metric = (None, None) if run.val is None else self._evaluate(run.val)
        row = {
            "epoch": run.epoch,
            "loss": float(loss_sum.item()) / max(count, 1),
            "metric": metric,
            "metric_name": metric_name,
            "epsilon": self.epsilon,
            "steps": self.steps_,
        }
        self.history_.append(row)
        if task is not None:
            bar.update(task, stats=progress_stats(row))
        if self.checkpoint_dir is not None:
            point = ResumePoint(
                run.epoch,
                self.steps_,
                plan.per_epoch,
                run.dp_step.optimizer.state_dict(),
                privacy_unit=self.privacy_unit,
                users=self._user_draw if self.privacy_unit == "user" else None,
            )
            self.manifest_ = provenance.training_manifest(self)  # this checkpoint's model state
            # rank 0 of a distributed run writes; every rank waits for it, so this epoch's
            # checkpoint is complete before any rank starts the next epoch
            self._on_writer(
                lambda: checkpoint.save_checkpoint(self, self.checkpoint_dir, key=self.checkpoint_key, point=point),
                (),
            )
            self._open_plan = None  # the checkpoint's resume goes on with the reservation
        return run

    # ------------------------------------------------------------------ reports, saving
    def report(self, **kwargs: Any) -> Any:
        """A :class:`~privdl.PrivacyReport` for this run, built from :meth:`run_facts`
        (see :meth:`PrivacyReport.from_trainer <privdl.PrivacyReport.from_trainer>`)."""
        from privdl.budget.report import PrivacyReport

        return PrivacyReport.from_trainer(self, **kwargs)

    def save(self, path: Any, *, key: Any = None) -> Any:
        """Save the trained model (safetensors + signed JSON, and the run's
        ``manifest.json``); see :mod:`privdl.train.modelfile`."""
        if self.model_ is not None and (
            self.manifest_ is None or dict(self.manifest_.model_state) != provenance.tensor_digests(self.model_)
        ):
            self.manifest_ = provenance.training_manifest(self)  # the weights as saved
        # rank 0 of a distributed run writes; the others wait for it (and see its error)
        return self._on_writer(lambda: checkpoint.save_model(self, path, key=key), ())

    @classmethod
    def resume(
        cls,
        path: Any,
        *,
        model: nn.Module | None = None,
        key: Any = None,
        ledger: Any = None,
        audit_log: Any = None,
        seed: int | None = None,
    ) -> PrivateTrainer:
        """A trainer that continues the checkpointed run at ``path`` on its next ``fit``.

        The run keeps its noise, sample rate, planned steps and ledger reservation;
        ``fit`` must get the same number of records. The ledger is the one recorded in
        the checkpoint unless ``ledger=`` is given. A user-level run also keeps its
        privacy unit, cap and every user's kept records: ``fit`` must get the same
        users (``users=`` / ``user_column=``) for the same records.

        Args:
            seed: the run's seed, when it had one: the resumed epochs then draw what
                the uninterrupted run would have (the checkpoint never holds the seed).
        """
        folder, point = checkpoint.read_checkpoint(path, key=key)
        trainer = cls._from_folder(folder, model)
        trainer.model.train()  # type: ignore[union-attr]
        trainer.ledger = ledger if ledger is not None else checkpoint.checkpoint_ledger(folder)
        trainer.audit_log, trainer.checkpoint_dir, trainer.checkpoint_key = audit_log, folder.path, key
        trainer.seed = seed
        if point.users is not None:
            trainer.n_users_ = point.users.n_users
        trainer._resume = point
        return trainer

    @classmethod
    def load(cls, path: Any, *, model: nn.Module | None = None, key: Any = None) -> PrivateTrainer:
        """Load a model saved by :meth:`save`, verifying its signature first.

        Args:
            path: the model folder.
            model: the module to load weights into, needed when the architecture is not
                a plain ``nn.Sequential`` of standard layers.
            key: the Secret or Ed25519 public key it was signed with.
        """
        return cls._from_folder(read_model_folder(path, key=key), model)

    @classmethod
    def _from_folder(cls, folder: ModelFolder, model: nn.Module | None) -> PrivateTrainer:
        module = checkpoint.load_weights(folder, model)
        trainer = cls(module, **checkpoint.init_params(folder.meta))
        checkpoint.restore_fitted(trainer, folder, module)
        return trainer

    def __repr__(self) -> str:
        state = f"epsilon={self.epsilon:.3g}, steps={self.steps_}" if self.steps_ else "unfitted"
        return f"PrivateTrainer({type(self.model).__name__}, target_epsilon={self.target_epsilon!r}, {state})"


def _with_target(data: Any, target: Any) -> tuple[Any, str | None]:
    """scikit-learn's ``fit(X, y)``: labels given as ``target`` join the data (``(X, y)``,
    or a DataFrame with the labels as its target column)."""
    if target is None or isinstance(target, str):
        return data, target
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        name = target.name if isinstance(target, pd.Series) and target.name is not None else "target"
        if name in data.columns:
            raise InputError(f"the labels are named {name!r} like a column of X: rename one")
        if isinstance(target, pd.Series):
            labels = target.to_numpy()
        else:
            labels = target.cpu().numpy() if torch.is_tensor(target) else np.asarray(target)
        if len(labels) != len(data):
            raise InputError(f"X has {len(data)} rows but y has {len(labels)} labels")
        return data.assign(**{str(name): labels}), str(name)
    return (data, target), None


def _fingerprints(role: str, data: Any) -> dict[str, Any]:
    """Role -> fingerprint of each in-memory part of ``data`` (SHA-256, rows, columns;
    never values), for the run's manifest."""
    from privdl.fingerprint import fingerprint

    if data is None:
        return {}
    parts = audit_inputs(data)
    if len(parts) == 1:
        return {role: fingerprint(parts[0])}
    names = ("features", "labels") if len(parts) == 2 else tuple(str(i) for i in range(len(parts)))
    return {f"{role} ({name})": fingerprint(part) for name, part in zip(names, parts, strict=False)}
