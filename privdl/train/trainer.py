"""PrivateTrainer: differentially private training in one line, on Opacus.

``PrivateTrainer(model, epsilon=...)`` calibrates the noise for the planned run, charges
the dataset's budget ledger before the first step, trains with DP-SGD (per-sample
clipping and Gaussian noise from Opacus) on exact Poisson batches, and records the
accountant history that every reported epsilon is computed from.

Example:
    >>> trainer = PrivateTrainer(model, epsilon=2.0)            # doctest: +SKIP
    >>> trainer.fit((X_train, y_train), val=(X_val, y_val))     # doctest: +SKIP
    >>> trainer.epsilon, trainer.predict(X_test)                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import time
import warnings
from typing import Any

import numpy as np

from privdl.errors import InputError, MissingDependencyError, SecurityError, UsageError, require
from privdl.train.calibrate import ACCOUNTANTS, epsilon_of, noise_multiplier_for
from privdl.train.data import (
    ChaChaRandom,
    IndexedData,
    PoissonSampler,
    TensorData,
    as_data,
    steps_per_epoch,
    to_tensor,
)
from privdl.train.engine import BookKeepingEngine, bk_supports, forward_probe

torch: Any = require("torch", "train")
require("opacus", "train")
from torch import nn  # noqa: E402

__all__ = ["DEFAULTS", "PrivateTrainer"]

#: Defaults chosen so that a user passes only the model, epsilon and the data
#: (benchmarks/train.py checks them against the utility anchors; see docs/train.md).
DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 256,
    "optimizer": "adam",
    "lr": {"adam": 2e-2, "adamw": 2e-2, "sgd": 0.5, "rmsprop": 1e-2},
    "max_grad_norm": 1.0,
}

_OPTIMIZERS = {
    "adam": "Adam",
    "adamw": "AdamW",
    "sgd": "SGD",
    "rmsprop": "RMSprop",
}

_LOSSES = ("cross_entropy", "bce", "mse")
_GRAD_SAMPLE_MODES = ("auto", "bk", "ghost", "hooks", "functorch", "ew")


class PrivateTrainer:
    """Train a torch model with (epsilon, delta)-differential privacy (DP-SGD).

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
            ``1 / ceil(n / batch_size)``.
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
        grad_sample_mode: ``"auto"``: ``"bk"`` (privdl's one-backward engine, see
            :mod:`privdl.train.engine`) when every trainable layer is a ``Linear``,
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
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        epsilon: float | str = 3.0,
        delta: float | None = None,
        max_grad_norm: float = DEFAULTS["max_grad_norm"],
        epochs: int = DEFAULTS["epochs"],
        batch_size: int = DEFAULTS["batch_size"],
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
    ) -> None:
        self.model = model
        self.target_epsilon = epsilon
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
        # learned state, set by fit()
        # where the encoder's domains came from ("policy" | "dp" | "learned-unprotected";
        # None without a table), and the DP domain estimate's accountant segments (they
        # are in accountant_history_ too) and ledger run
        self.domain_source_: str | None = None
        self.domain_history_: list[tuple[float, float, int]] = []
        self.domain_run_id_: str | None = None
        self._domain_segments: list[tuple[float, float, int]] = []
        self.model_: nn.Module | None = None
        # per epoch; the exact training "loss" is for the live progress bar and this
        # process only: save() and report() leave it out (it is not DP)
        self.history_: list[dict[str, Any]] = []
        self.val_overlap_: int | None = None
        self.accountant_history_: list[tuple[float, float, int]] = []
        self.noise_multiplier_: float | None = None
        self.sample_rate_: float | None = None
        self.steps_: int = 0
        self.planned_steps_: int = 0
        self.delta_: float | None = None
        self.n_samples_: int | None = None
        self.replaced_modules_: list[str] = []
        self.grad_sample_mode_: str | None = None
        self.task_: str | None = None
        self.n_outputs_: int | None = None
        self.encoder_: Any = None
        self.feature_names_: list[str] | None = None
        self.ledger_: Any = None
        self.run_id_: str | None = None
        self.device_: str | None = None
        self.fit_seconds_: float | None = None
        self._state: dict[str, Any] = {}
        self._resume: dict[str, Any] | None = None
        self._prior_history: list[tuple[float, float, int]] = []

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict[str, Any]:
        """The run's configuration, as it goes into the audit record and the report."""
        opt = self.optimizer if isinstance(self.optimizer, str) else self.optimizer.__name__
        loss = self.loss if self.loss is None or isinstance(self.loss, str) else type(self.loss).__name__
        return {
            "model": type(self.model).__name__ if self.model is not None else None,
            "epsilon": self.target_epsilon,
            "delta": self.delta,
            "max_grad_norm": self.max_grad_norm,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self._lr(),
            "optimizer": opt,
            "loss": loss,
            "accountant": self.accountant,
            "dataset_id": self.dataset_id,
            "device": self.device,
            "seed_given": self.seed is not None,
            "secure_mode": self.secure_mode,
            "max_physical_batch_size": self.max_physical_batch_size,
            "grad_sample_mode": self.grad_sample_mode,
            "domains": self.domains,
            "domain_epsilon": self.domain_epsilon,
        }

    def _lr(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        name = self.optimizer.lower() if isinstance(self.optimizer, str) else ""
        return float(DEFAULTS["lr"].get(name, 1e-3))

    def _check_params(self) -> None:
        if self.model is None or not isinstance(self.model, nn.Module):
            raise UsageError("PrivateTrainer needs a torch.nn.Module as model")
        eps = self.target_epsilon
        if eps == "remaining":
            if self.ledger is None:
                raise UsageError('epsilon="remaining" needs a ledger= and a dataset_id=')
        elif isinstance(eps, str) or not (isinstance(eps, int | float) and 0 < eps < math.inf):
            raise UsageError('epsilon must be a positive number or "remaining"')
        if self.ledger is not None and not self.dataset_id:
            raise UsageError("a ledger needs a dataset_id= to charge")
        if self.accountant not in ACCOUNTANTS:
            raise UsageError(f"accountant must be one of {', '.join(ACCOUNTANTS)}")
        if not (isinstance(self.epochs, numbers.Integral) and self.epochs >= 1):
            raise UsageError("epochs must be a positive integer")
        if not (isinstance(self.batch_size, numbers.Integral) and self.batch_size >= 1):
            raise UsageError("batch_size must be a positive integer")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise UsageError("max_grad_norm must be positive")
        if self.max_physical_batch_size is not None and self.max_physical_batch_size < 1:
            raise UsageError("max_physical_batch_size must be a positive integer")
        if self.grad_sample_mode not in _GRAD_SAMPLE_MODES:
            raise UsageError(f"grad_sample_mode must be one of {', '.join(_GRAD_SAMPLE_MODES)}")
        if isinstance(self.optimizer, str) and self.optimizer.lower() not in _OPTIMIZERS:
            raise UsageError(f"optimizer must be one of {', '.join(_OPTIMIZERS)} or a class")
        if isinstance(self.loss, str) and self.loss not in _LOSSES:
            raise UsageError(f"loss must be one of {', '.join(_LOSSES)} or a module")
        if self.secure_mode and self.seed is not None:
            raise SecurityError("secure_mode draws from a CSPRNG and cannot take a seed")

    # ------------------------------------------------------------------ results
    @property
    def epsilon(self) -> float:
        """Epsilon spent so far, from the accountant, at ``delta_`` (0 before fit)."""
        if not self.accountant_history_ or self.delta_ is None:
            return 0.0
        return epsilon_of(self.accountant_history_, delta=self.delta_, accountant=self._accountant())

    def _accountant(self, ledger: Any = None) -> str:
        """The accountant this run is calibrated, charged and reported under: the
        dataset's own when a ledger is used (recorded as ``accountant_``), else ours."""
        if ledger is not None:
            chosen = ledger.accountant(self.dataset_id)
            if chosen != self.accountant and getattr(self, "accountant_", None) != chosen:
                warnings.warn(
                    f"dataset {self.dataset_id!r} is accounted with {chosen!r} in the ledger: this "
                    f"run is calibrated and reported under {chosen!r}, not {self.accountant!r}",
                    UserWarning,
                    stacklevel=4,
                )
            self.accountant_ = chosen
        return getattr(self, "accountant_", None) or self.accountant

    @property
    def is_fitted(self) -> bool:
        return self.model_ is not None and self.steps_ > 0

    # ------------------------------------------------------------------ fit
    def fit(
        self, data: Any, target: str | None = None, val: Any = None, *, subjects: Any = None
    ) -> PrivateTrainer:
        """Train the model with DP-SGD.

        Calling ``fit`` again continues training the fitted model as a new run (new
        noise calibration and ledger reservation); ``epsilon`` then composes all runs.

        Args:
            data: ``(X, y)`` arrays/tensors, a ``TensorDataset``, a ``DataLoader``, any
                map-style ``Dataset``, or a pandas DataFrame with ``target=``.
            target: the label column when ``data`` is a DataFrame.
            val: validation data in the same forms (not charged: it must not be the
                training data); its metric is reported per epoch. The metric is not
                covered by the DP guarantee (it is computed on ``val`` without noise);
                a ``val`` sharing rows with ``data`` gets a warning.
            subjects: the pseudonyms of the people in ``data`` (e.g. the released
                table's ``user_id`` column); with ``audit_log`` they are recorded as a
                keyed filter, so an erasure request finds this training run.

        Returns:
            ``self``.

        Raises:
            BudgetExceededError: the ledger refuses the run (before any step).
            UsageError / InputError: bad configuration or data; also inside an
                initialized ``torch.distributed`` process group or for a
                ``DistributedDataParallel`` model (not supported yet).
        """
        _refuse_distributed(self.model, self.model_)
        self._check_params()
        with self._audit("train", data) as op:
            if subjects is not None:
                op.update(subjects=subjects)
            self._setup(data, target, val)
            self.val_overlap_ = _shared_frame_rows(data, val, target)
            if self.val_overlap_ is None:
                self.val_overlap_ = _shared_rows(self._state["train"], self._state["val"])
            if self.val_overlap_:
                # the count goes to the trainer's own screen only, never into a report
                warnings.warn(
                    f"val shares {self.val_overlap_} row(s) with the training data: its "
                    "metric is then computed partly on training records, without DP",
                    UserWarning,
                    stacklevel=2,
                )
            op.update(
                params={
                    "n_samples": self.n_samples_,
                    "noise_multiplier": self.noise_multiplier_,
                    "sample_rate": self.sample_rate_,
                    "planned_steps": self.planned_steps_,
                    "delta": self.delta_,
                    "run_id": self.run_id_,
                    "grad_sample_mode": self.grad_sample_mode_,
                    "replaced_modules": list(self.replaced_modules_),
                }
            )
            self._train()
            op.update(
                params={
                    "epsilon_spent": self.epsilon,
                    "steps": self.steps_,
                    "accountant": self._accountant(),
                    # the engine may change mid-run (ghost -> hooks on a reused layer)
                    "grad_sample_mode": self.grad_sample_mode_,
                    "replaced_modules": list(self.replaced_modules_),
                    "domain_run_id": getattr(self, "domain_run_id_", None),
                }
            )
        return self

    def _audit(self, name: str, data: Any) -> Any:
        from privdl.audit import operation

        if self.audit_log is None:
            return operation(None, name)
        # fingerprints (hashes, shapes) of in-memory training data, never its values
        if isinstance(data, tuple | list) and len(data) == 2:
            inputs = [part for part in data if part is not None]
        elif hasattr(data, "columns") or hasattr(data, "shape"):
            inputs = [data]
        else:
            inputs = [{"kind": type(data).__name__, "sha256": None}]
        outputs = [self.checkpoint_dir] if self.checkpoint_dir is not None else []
        # a "started" entry before the block: the ledger reservation made in _setup has
        # its evidence even if the run is killed before the final entry
        return operation(
            self.audit_log, name, params=self.get_params(), inputs=inputs, outputs=outputs, started=True
        )

    def _resolve_device(self) -> Any:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise UsageError(f"unknown device {self.device!r}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("device='cuda' but no CUDA device is available")
        return dev

    def _prepare(self, data: Any, target: str | None, *, fit: bool, what: str) -> Any:
        """Data -> TensorData / IndexedData; DataFrames go through the TableEncoder."""
        import pandas as pd

        if fit:
            self._domain_segments = []  # this run's DP domain estimate, if it makes one
        if isinstance(data, pd.DataFrame):
            if target is None:
                raise UsageError(f"{what} is a DataFrame: pass target= (the label column)")
            if target not in data.columns:
                raise InputError(f"{what} has no column {target!r}")
            enc = self.encoder_
            if fit and enc is None:
                # the first table this trainer sees decides the input layout
                enc = self.encoder if self.encoder is not None else _new_encoder(self.domains)
                ledger = self._open_ledger()
                if not hasattr(enc, "columns_"):  # not fitted yet: fit on this frame
                    if _is_table_encoder(enc):
                        # a DP domain estimate is charged to the ledger before its noise
                        # is drawn, and composed into this run's epsilon
                        enc.fit(data, target=target, **self._domain_budget(enc, len(data), ledger))
                    else:
                        enc.fit(data, target=target)
                segments = [tuple(seg) for seg in getattr(enc, "domain_history_", None) or []]
                if segments and ledger is not None and getattr(enc, "domain_run_id_", None) is None:
                    # fitted before it came here (e.g. to size the model): charged now
                    enc.domain_run_id_ = self._charge_domains(ledger, segments, enc)
                self.domain_run_id_ = getattr(enc, "domain_run_id_", None)
                self._domain_segments = [(float(a), float(b), int(c)) for a, b, c in segments]
                self.domain_history_ = list(self._domain_segments)
                self.domain_source_ = getattr(enc, "domain_source_", None)
                self.encoder_ = enc
                self.feature_names_ = list(enc.feature_names_)
            elif fit:
                # a model trained before keeps its input layout: reuse its encoder
                self.feature_names_ = list(enc.feature_names_)
            elif enc is None:
                raise UsageError(f"{what} is a DataFrame but the model was trained on arrays")
            X = enc.transform(data)
            y = _encode_target(enc, data[target])
            return as_data((X, y), what=what)
        return as_data(data, what=what)

    def _domain_budget(self, enc: Any, n: int, ledger: Any) -> dict[str, Any]:
        """Arguments for a TableEncoder fit that may estimate domains with DP: their
        epsilon (a share of the run's), the run's delta, and the ledger charge."""
        from privdl.train.encoding import DEFAULT_DOMAIN_SHARE

        delta = self.delta
        if delta is None:
            delta = ledger.budget(self.dataset_id)[1] if ledger is not None else 1.0 / (10 * n)
        if n >= 1 and not 0 < delta < 1.0 / n:
            raise UsageError(
                f"delta={delta:g} is not below 1/n = {1.0 / n:g}: with {n} records such a "
                "delta allows releasing a record outright"
            )
        eps = self.domain_epsilon if self.domain_epsilon is not None else enc.domain_epsilon
        if eps is None:
            total = self.target_epsilon
            if total == "remaining":
                total = ledger.remaining(self.dataset_id)
            eps = DEFAULT_DOMAIN_SHARE * float(total)
        out: dict[str, Any] = {
            "domain_epsilon": float(eps),
            "domain_delta": float(delta),
            "accountant": self._accountant(ledger),
        }
        if ledger is not None:

            def charge(history: list[tuple[float, float, int]], epsilon: float, delta: float) -> None:
                enc.domain_run_id_ = self._charge_domains(ledger, history, enc, epsilon, delta)

            out["charge"] = charge
        return out

    def _charge_domains(
        self,
        ledger: Any,
        history: list[tuple[float, float, int]],
        enc: Any,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> str:
        """Record a DP domain estimate as its own, settled ledger run (before its release
        when the trainer fits the encoder): the training run is then composed with it."""
        delta = float(delta if delta is not None else getattr(enc, "domain_delta_", None) or self.delta_ or 0)
        if not 0 < delta < 1:
            delta = ledger.budget(self.dataset_id)[1]
        run_id = ledger.reserve(
            self.dataset_id,
            history=history,
            delta=delta,
            accountant=self._accountant(ledger),
            model_name="TableEncoder domains",
            epsilon=epsilon,
        )
        ledger.settle(run_id, history=history)
        return str(run_id)

    def _setup(self, data: Any, target: str | None, val: Any) -> None:
        from opacus.validators import ModuleValidator

        device = self._resolve_device()
        self.device_ = str(device)
        if self.seed is not None:
            torch.manual_seed(self.seed)
        train = self._prepare(data, target, fit=True, what="training data")
        valid = None if val is None else self._prepare(val, target, fit=False, what="val")
        n = len(train)
        if n < 2:
            raise InputError("training data needs at least 2 rows")
        resume = self._resume
        if resume is not None and n != self.n_samples_:
            raise InputError(
                f"the checkpoint was trained on {self.n_samples_} records, not {n}: "
                "a resumed run must see the same data"
            )
        self.n_samples_ = n

        # delta: the ledger's when there is one, else 1/(10 n); never >= 1/n
        ledger = self._open_ledger()
        accountant = self._accountant(ledger)
        delta = self.delta_ if resume is not None else self.delta
        if delta is None:
            delta = ledger.budget(self.dataset_id)[1] if ledger is not None else 1.0 / (10 * n)
        if not 0 < delta < 1.0 / n:
            raise UsageError(
                f"delta={delta:g} is not below 1/n = {1.0 / n:g}: with {n} records such a "
                "delta allows releasing a record outright"
            )
        self.delta_ = float(delta)

        per_epoch = steps_per_epoch(n, int(self.batch_size))
        if resume is not None:
            per_epoch = resume["per_epoch"]
        q = 1.0 / per_epoch
        planned = per_epoch * int(self.epochs)
        self.sample_rate_ = q
        self.planned_steps_ = planned

        # A second fit continues training the fitted model: its earlier runs stay in
        # the accountant history, so the reported epsilon covers all of them.
        if resume is not None:
            prior = list(self.accountant_history_[:-1])
        elif self.model_ is not None and self.steps_ > 0:
            prior = list(self.accountant_history_)
        else:
            prior = []
        self._prior_history = prior

        # model: make it trainable with per-sample gradients
        model = self.model_ if prior and self.model_ is not None else self.model
        assert model is not None
        model.train()  # validation and per-sample gradients need training mode
        errors = ModuleValidator.validate(model, strict=False)
        replaced: list[str] = []
        if errors:
            before = {name: type(m).__name__ for name, m in model.named_modules()}
            model = ModuleValidator.fix(model)
            after = {name: type(m).__name__ for name, m in model.named_modules()}
            replaced = [
                f"{name}: {before[name]} -> {after[name]}"
                for name in before
                if name in after and before[name] != after[name]
            ]
            left = ModuleValidator.validate(model, strict=False)
            if left:
                kinds = sorted({type(e).__name__ for e in left})
                raise InputError(f"model has layers Opacus cannot train privately ({', '.join(kinds)})")
        # In-place modules (ReLU(inplace=True), Dropout(inplace=True)) change a layer's
        # output after its hooks saw it, in training mode only: switched off, same outputs.
        replaced += [f"{name}: inplace=True -> inplace=False" for name in _out_of_place(model)]
        if resume is None:
            self.replaced_modules_ = replaced
        model = model.to(device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise UsageError("the model has no trainable parameters")

        # task and loss, from the target and the model's output width
        x0, y0 = train.batch(torch.arange(min(n, 2)))
        with torch.no_grad():
            was_training = model.training
            model.eval()
            out0 = model(_to(x0, device))
            model.train(was_training)
        self.n_outputs_ = int(out0.shape[-1]) if out0.ndim > 1 else 1
        self.task_ = self._infer_task(train, y0)
        criterion = self._make_loss()

        # noise: calibrated for the whole planned run (prior runs are the ledger's job);
        # this run's DP domain estimate, made before training, is composed in: domains
        # and training together meet the target epsilon
        domain = list(self._domain_segments)
        if resume is not None:
            # the same run goes on: same noise, same ledger reservation
            sigma = float(self.noise_multiplier_ or 0.0)
        elif self.target_epsilon == "remaining":
            assert ledger is not None
            sigma = ledger.calibrate_remaining(
                self.dataset_id, sample_rate=q, steps=planned, accountant=accountant
            )
        else:
            sigma = noise_multiplier_for(
                epsilon=float(self.target_epsilon),
                delta=self.delta_,
                sample_rate=q,
                steps=planned,
                accountant=accountant,
                prior=domain,
            )
        self.noise_multiplier_ = float(sigma)
        run_eps = epsilon_of([(sigma, q, planned)], delta=self.delta_, accountant=accountant)
        if resume is None:
            self.run_id_ = None
        if ledger is not None and resume is None:
            self.run_id_ = ledger.reserve(
                self.dataset_id,
                history=[(sigma, q, planned)],
                delta=self.delta_,
                accountant=accountant,
                model_name=type(model).__name__,
                # what the run asked for (its calibrated own epsilon for "remaining")
                epsilon=run_eps if self.target_epsilon == "remaining" else float(self.target_epsilon),
            )
        self.ledger_ = ledger

        probe = forward_probe(model, _to(x0, device))
        mode = self._choose_mode(model, _to(x0, device), probe)
        self.grad_sample_mode_ = mode
        # "bk" hands a copy of a layer output on when an op in a forward changes it in place
        self._copy_outputs = mode == "bk" and bool(probe.modified)
        gsm, opt, dp_loss = self._make_private(model, criterion, sigma, q, n, device)
        sampler = PoissonSampler(
            n,
            q,
            generator=self._generator(torch.device("cpu"), 0),
            device=device if isinstance(train, TensorData) else "cpu",
            secure=self.secure_mode,
        )
        if isinstance(train, TensorData):
            train = TensorData(_to(train.X, device), _to(train.y, device))
        self.model_ = model
        self.history_ = []
        # the domain estimate is already a ledger run of its own (charged before its
        # noise was drawn); here it joins the accountant's record of this model
        self.accountant_history_ = [*prior, *domain]
        self._prior_history = [*prior, *domain]
        self.steps_ = 0
        epoch = 0
        if resume is not None:
            opt.original_optimizer.load_state_dict(resume["optimizer"])
            epoch, self.steps_ = resume["epoch"], resume["steps"]
            self.history_ = list(resume["history"])
            if self.steps_:
                self.accountant_history_.append((float(sigma), q, self.steps_))
            self._resume = None
        self._state = {
            "device": device,
            "train": train,
            "val": valid,
            "gsm": gsm,
            "opt": opt,
            "dp_loss": dp_loss,
            "criterion": criterion,
            "sampler": sampler,
            "per_epoch": per_epoch,
            "epoch": epoch,
        }

    def _open_ledger(self) -> Any:
        if self.ledger is None:
            return None
        if isinstance(self.ledger, str) or hasattr(self.ledger, "__fspath__"):
            from privdl.budget.ledger import BudgetLedger

            return BudgetLedger(self.ledger)
        return self.ledger

    def _infer_task(self, train: TensorData | IndexedData, y0: Any) -> str:
        y = train.y if isinstance(train, TensorData) else y0
        if y is None:
            raise InputError("training data has no target")
        if isinstance(self.loss, str):
            return {"cross_entropy": "multiclass", "bce": "binary", "mse": "regression"}[self.loss]
        is_float = torch.is_floating_point(y)
        if is_float and not bool(torch.all(y == torch.round(y))):
            return "regression"
        if is_float and self.n_outputs_ == 1 and self.loss is not None:
            return "regression"
        return "binary" if self.n_outputs_ == 1 else "multiclass"

    def _make_loss(self) -> nn.Module:
        if isinstance(self.loss, nn.Module):
            loss = self.loss
            if not hasattr(loss, "reduction"):
                raise UsageError("a loss module needs a 'reduction' attribute (e.g. nn.*Loss)")
            loss.reduction = "mean"  # type: ignore[assignment]
            return loss
        if self.task_ == "regression":
            return nn.MSELoss(reduction="mean")
        if self.task_ == "binary":
            return nn.BCEWithLogitsLoss(reduction="mean")
        return nn.CrossEntropyLoss(reduction="mean")

    def _choose_mode(self, model: nn.Module, example: Any = None, probe: Any = None) -> str:
        if probe is None and example is not None:
            probe = forward_probe(model, example)
        if self.grad_sample_mode == "bk":
            if example is not None and not bk_supports(model, example, probe):
                raise UsageError(
                    'grad_sample_mode="bk" needs every trainable layer to be a Linear, Conv1d, '
                    "Conv2d, LayerNorm, GroupNorm or Embedding that owns its parameters"
                )
            return "bk"
        if self.grad_sample_mode != "auto":
            mode = str(self.grad_sample_mode)
        elif (
            probe is not None
            and bk_supports(model, example, probe)
            and all(c <= 1 for c in probe.calls.values())
        ):
            # a reuse the probe sees goes to Opacus' hooks (the reference for tied
            # weights); one that only training shows is clipped correctly by bk too
            return "bk"
        else:
            mode = self._opacus_mode(model, probe)
        if probe is not None and probe.modified and mode != "ew":
            # Opacus' per-sample hooks refuse a hooked output that is modified in place
            # (in-place modules were switched off in _setup: this is an op in a forward)
            raise UsageError(
                f"the output of layer {sorted(probe.modified)[0]!r} is modified in place in "
                f"the forward pass, which Opacus' {mode!r} mode cannot train through: use an "
                "out-of-place operation there"
            )
        return mode

    def _opacus_mode(self, model: nn.Module, probe: Any) -> str:
        from opacus.grad_sample import GradSampleModuleFastGradientClipping as Ghost

        # A layer run twice per forward pass (weight reuse) needs Opacus' hooks, which
        # accumulate per-sample gradients over calls; ghost clipping refuses it. Reuse in
        # training mode only, or for some batches only, is not in this eval-mode probe:
        # _step then moves a ghost run to hooks (see _ghost_to_hooks).
        if probe is not None and any(c > 1 for c in probe.calls.values()):
            return "hooks"
        # Ghost clipping needs a norm sampler for every layer that owns trainable
        # parameters and no parameter shared between layers.
        owners: dict[int, int] = {}
        for m in model.modules():
            direct = [p for p in m.parameters(recurse=False) if p.requires_grad]
            if direct and type(m) not in Ghost.NORM_SAMPLERS:
                return "hooks"
            for p in direct:
                owners[id(p)] = owners.get(id(p), 0) + 1
        if any(c > 1 for c in owners.values()):
            return "hooks"
        return "ghost"

    def _generator(self, device: Any, offset: int) -> Any:
        if self.seed is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(int(self.seed) * 1000 + 17 + offset)
        return g

    def _make_private(
        self, model: nn.Module, criterion: nn.Module, sigma: float, q: float, n: int, device: Any
    ) -> tuple[Any, Any, Any]:
        from opacus import GradSampleModule
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        params = [p for p in model.parameters() if p.requires_grad]
        if isinstance(self.optimizer, str):
            cls = getattr(torch.optim, _OPTIMIZERS[self.optimizer.lower()])
        else:
            cls = self.optimizer
        # foreach: one fused kernel per update instead of one per parameter
        extra = {"foreach": True} if cls.__module__.startswith("torch.optim") else {}
        base = cls(params, lr=self._lr(), **extra)
        expected = max(1, round(n * q))
        noise_gen = self._generator(device, 1)
        dp_loss = None
        if self.grad_sample_mode_ == "bk":
            engine = BookKeepingEngine(
                model,
                base,
                criterion,
                noise_multiplier=sigma,
                max_grad_norm=self.max_grad_norm,
                expected_batch_size=expected,
                generator=noise_gen,
                secure=self.secure_mode,
                copy_outputs=self._copy_outputs,
            )
            return engine, engine, None
        if self.grad_sample_mode_ == "ghost":
            gsm = GradSampleModuleFastGradientClipping(
                model,
                batch_first=True,
                loss_reduction="mean",
                max_grad_norm=self.max_grad_norm,
                use_ghost_clipping=True,
            )
            opt_cls: type = _ghost_optimizer(DPOptimizerFastGradientClipping)
        else:
            mode = self.grad_sample_mode_
            if mode == "ew":
                from opacus.grad_sample import GradSampleModuleExpandedWeights

                gsm = GradSampleModuleExpandedWeights(model, batch_first=True, loss_reduction="mean")
            else:
                gsm = GradSampleModule(
                    model,
                    batch_first=True,
                    loss_reduction="mean",
                    force_functorch=mode == "functorch",
                )
            opt_cls = DPOptimizer
        if self.grad_sample_mode_ != "ew":  # ExpandedWeights checks batch sizes itself
            _guard_rows(gsm)
        if self.secure_mode:
            opt_cls = _secure_noise(opt_cls)
        opt = opt_cls(
            base,
            noise_multiplier=sigma,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=expected,
            loss_reduction="mean",
            generator=noise_gen,
        )
        if self.grad_sample_mode_ == "ghost":
            dp_loss = DPLossFastGradientClipping(gsm, opt, criterion, loss_reduction="mean")
        return gsm, opt, dp_loss

    # ------------------------------------------------------------------ training loop
    def _train(self) -> None:
        st = self._state
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # Opacus' ghost clipping triggers this torch notice on every step when
                # the input does not require grad, which is the normal case
                warnings.filterwarnings("ignore", message="Full backward hook", category=UserWarning)
                with self._progress_bar() as bar:
                    st["bar"] = bar
                    try:
                        while st["epoch"] < self.epochs:
                            self._run_epoch()
                    finally:
                        st.pop("bar", None)
        finally:
            self.fit_seconds_ = time.perf_counter() - t0
        self._finish()

    def _run_epoch(self) -> None:
        st = self._state
        gsm, device = st["gsm"], st["device"]
        bar: Any = st.get("bar")
        gsm.train()
        loss_sum = torch.zeros((), device=device)
        count = 0
        task = None
        if bar is not None:
            task = bar.add_task(f"epoch {st['epoch'] + 1}/{self.epochs}", total=st["per_epoch"], stats="")
        for _ in range(st["per_epoch"]):
            idx = st["sampler"].sample()
            loss_sum += self._step(idx)
            count += len(idx)
            self.steps_ += 1
            if task is not None:
                bar.advance(task)
        st["epoch"] += 1
        # the accountant's exact record: earlier runs of this model, then this run's
        # single segment with every step taken so far
        self.accountant_history_ = [
            *self._prior_history,
            (float(self.noise_multiplier_ or 0.0), float(self.sample_rate_ or 0.0), self.steps_),
        ]
        metric_name, metric = (None, None)
        if st["val"] is not None:
            metric_name, metric = self._evaluate(st["val"])
        row = {
            "epoch": st["epoch"],
            "loss": float(loss_sum.item()) / max(count, 1),
            "metric": metric,
            "metric_name": metric_name,
            "epsilon": self.epsilon,
            "steps": self.steps_,
        }
        self.history_.append(row)
        if task is not None:
            bar.update(task, stats=_progress_stats(row))
        if self.checkpoint_dir is not None:
            from privdl.train.checkpoint import save_checkpoint

            save_checkpoint(self, self.checkpoint_dir, key=self.checkpoint_key)

    def _step(self, idx: Any) -> Any:
        """One DP-SGD step on the Poisson batch ``idx``; returns the summed loss."""
        st = self._state
        opt, gsm, train, device = st["opt"], st["gsm"], st["train"], st["device"]
        ghost = self.grad_sample_mode_ == "ghost"
        chunk = self.max_physical_batch_size
        parts = [idx] if chunk is None or len(idx) <= chunk else list(idx.split(chunk))
        total = torch.zeros((), device=device)
        opt.zero_grad(set_to_none=True)
        if self.grad_sample_mode_ == "bk":
            for part in [] if len(idx) == 0 else parts:
                xb, yb = train.batch(part)
                out, yb = self._shape_for_loss(gsm(_to(xb, device)), _to(yb, device))
                losses = opt.per_sample_loss(out, yb)
                opt.accumulate(losses)
                total = total + losses.detach().sum()
            opt.step()  # an empty batch is a noise-only step, and it is accounted
            return total
        if len(idx) == 0:
            # An empty Poisson batch is still a step: noise only, and it is accounted.
            for p in opt.params:
                if ghost:
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            opt.step()
            return total
        try:
            for k, part in enumerate(parts):
                xb, yb = train.batch(part)
                xb, yb = _to(xb, device), _to(yb, device)
                out = gsm(xb)
                out, yb = self._shape_for_loss(out, yb)
                if ghost:
                    loss = st["dp_loss"](out, yb)
                    loss.backward()
                    total = total + loss.loss_per_sample.detach().sum()
                else:
                    loss = st["criterion"](out, yb)
                    loss.backward()
                    total = total + loss.detach() * len(part)
                if k < len(parts) - 1:
                    opt.signal_skip_step(do_skip=True)
                    opt.step()
                    if not ghost:
                        opt.zero_grad(set_to_none=True)
        except NotImplementedError as exc:
            # Opacus' ghost clipping stops in the forward pass when a layer runs twice
            # ("Parameter tying is not supported"): nothing of this step was applied, so
            # the run goes on with hooks and the same batch is computed again.
            if not ghost or "tying" not in str(exc):
                raise
            self._ghost_to_hooks()
            return self._step(idx)
        opt.step()
        return total

    def _ghost_to_hooks(self) -> None:
        """Move this run from ghost clipping to Opacus' hooks, which sum a reused layer's
        per-sample gradients over its calls before clipping; record the switch."""
        st = self._state
        old_gsm, old_opt = st["gsm"], st["opt"]
        reused = sorted(
            name
            for name, m in old_gsm._module.named_modules()
            if any(getattr(p, "_forward_counter", 0) > 1 for p in m.parameters(recurse=False))
        )
        model = old_gsm.to_standard_module()
        for m in model.modules():  # the interrupted forward pass left its activations
            for attr in ("activations", "max_batch_len"):
                if hasattr(m, attr):
                    delattr(m, attr)
        self.grad_sample_mode_ = "hooks"
        gsm, opt, dp_loss = self._make_private(
            model,
            st["criterion"],
            float(self.noise_multiplier_ or 0.0),
            float(self.sample_rate_ or 0.0),
            int(self.n_samples_ or 0),
            st["device"],
        )
        opt.original_optimizer.load_state_dict(old_opt.original_optimizer.state_dict())
        # the same noise stream goes on: a fresh seeded generator would repeat its draws
        opt.generator = old_opt.generator
        st.update(gsm=gsm, opt=opt, dp_loss=dp_loss)
        where = f"layer {reused[0]!r}" if reused else "a layer"
        note = (
            f"grad_sample_mode: ghost -> hooks ({where} ran more than once in a training "
            "step; ghost clipping cannot clip a reused layer)"
        )
        self.replaced_modules_.append(note)
        warnings.warn(note, UserWarning, stacklevel=3)

    def _shape_for_loss(self, out: Any, y: Any) -> tuple[Any, Any]:
        if self.task_ == "binary":
            return out.reshape(-1), y.to(out.dtype).reshape(-1)
        if self.task_ == "regression":
            if out.ndim == 2 and out.shape[1] == 1 and y.ndim == 1:
                out = out.reshape(-1)
            return out, y.to(out.dtype)
        return out, y.long()

    def _finish(self) -> None:
        st = self._state
        gsm = st.get("gsm")
        if gsm is not None:
            self.model_ = gsm.to_standard_module()
            st["gsm"] = None
        if self.ledger_ is not None and self.run_id_ is not None:
            # the ledger holds each run's own history; earlier runs settled already
            self.ledger_.settle(self.run_id_, history=self.accountant_history_[-1:])
        if self.model_ is not None:
            self.model_.eval()

    def _progress_bar(self) -> Any:
        """A rich progress bar on stderr (one line per epoch), or a null context."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        show = self.progress
        if show == "auto":
            show = console.is_terminal or console.is_jupyter
        if not show:
            return contextlib.nullcontext()
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
        )

    # ------------------------------------------------------------------ inference
    def _require_fitted(self) -> nn.Module:
        if self.model_ is None:
            raise UsageError("the trainer is not fitted yet: call fit() first")
        return self.model_

    def _features(self, X: Any) -> Any:
        import pandas as pd

        if isinstance(X, pd.DataFrame):
            if self.encoder_ is None:
                raise UsageError("a DataFrame needs the encoder the model was trained with")
            X = self.encoder_.transform(X)
        if isinstance(X, tuple | list) and len(X) == 2:
            X = X[0]
        data = as_data((X, None), what="X")
        assert isinstance(data, TensorData)
        return data.X

    def _forward(self, X: Any, batch: int = 8192) -> Any:
        model = self._require_fitted()
        feats = self._features(X)
        device = next(model.parameters()).device
        outs = []
        model.eval()
        with torch.no_grad():
            for start in range(0, len(feats), batch):
                outs.append(model(_to(feats[start : start + batch], device)).float().cpu())
        return torch.cat(outs) if outs else torch.zeros((0, self.n_outputs_ or 1))

    def decision_function(self, X: Any) -> np.ndarray:
        """Raw model outputs (logits) as a numpy array."""
        return self._forward(X).numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape ``(n, n_classes)`` (classification only)."""
        if self.task_ == "regression":
            raise UsageError("predict_proba is for classification")
        out = self._forward(X)
        if self.task_ == "binary":
            p1 = torch.sigmoid(out.reshape(-1))
            return torch.stack([1 - p1, p1], dim=1).numpy()
        return torch.softmax(out, dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (classification) or values (regression)."""
        out = self._forward(X)
        if self.task_ == "regression":
            return (out.reshape(-1) if out.ndim == 2 and out.shape[1] == 1 else out).numpy()
        if self.task_ == "binary":
            return (out.reshape(-1) > 0).long().numpy()
        return out.argmax(dim=1).numpy()

    def loss_per_sample(self, X: Any, y: Any) -> np.ndarray:
        """Per-record loss of the trained model (for membership-inference audits).

        Args:
            X: features (array, tensor, or DataFrame when trained on one).
            y: targets, or the target column name when ``X`` is a DataFrame.
        """
        out = self._forward(X)
        yt = self._target(X, y)
        if len(yt) != len(out):
            raise InputError(f"{len(out)} feature rows but {len(yt)} targets")
        out, yt = self._shape_for_loss(out, yt)
        crit: Any = self._make_loss()
        old = crit.reduction
        crit.reduction = "none"
        try:
            with torch.no_grad():
                losses = crit(out, yt)
        finally:
            crit.reduction = old
        if losses.ndim > 1:
            losses = losses.reshape(len(losses), -1).mean(dim=1)
        return losses.numpy()

    def score(self, X: Any, y: Any) -> float:
        """Accuracy (classification) or negative mean squared error (regression)."""
        return self._metric(self._forward(X), self._target(X, y))[1]

    def _target(self, X: Any, y: Any) -> Any:
        import pandas as pd

        if isinstance(X, pd.DataFrame) and isinstance(y, str):
            if self.encoder_ is None:
                raise UsageError("a DataFrame target needs the encoder the model was trained with")
            y = _encode_target(self.encoder_, X[y])
        return to_tensor(y, what="target")

    def _evaluate(self, val: TensorData | IndexedData) -> tuple[str, float]:
        if isinstance(val, IndexedData):
            loader = torch.utils.data.DataLoader(val.dataset, batch_size=1024, collate_fn=val.collate_fn)
            outs, ys = [], []
            for xb, yb in loader:
                outs.append(self._forward((xb, None)))
                ys.append(yb)
            return self._metric(torch.cat(outs), torch.cat(ys))
        assert val.y is not None
        return self._metric(self._forward((val.X, None)), val.y)

    def _metric(self, out: Any, y: Any) -> tuple[str, float]:
        y = y.cpu()
        if self.task_ == "regression":
            out = out.reshape(y.shape) if out.numel() == y.numel() else out
            return "neg_mse", -float(((out - y.float()) ** 2).mean())
        pred = (out.reshape(-1) > 0).long() if self.task_ == "binary" else out.argmax(dim=1)
        return "accuracy", float((pred == y.long().reshape(-1)).float().mean())

    # ------------------------------------------------------------------ reports, saving
    def report(self, **kwargs: Any) -> Any:
        """A :class:`~privdl.PrivacyReport` for this run (see its ``from_trainer``)."""
        from privdl.budget.report import PrivacyReport

        return PrivacyReport.from_trainer(self, **kwargs)

    def save(self, path: Any, *, key: Any = None) -> Any:
        """Save the trained model (safetensors + signed JSON); see :mod:`privdl.train.checkpoint`."""
        from privdl.train.checkpoint import save_model

        return save_model(self, path, key=key)

    @classmethod
    def resume(
        cls,
        path: Any,
        *,
        model: nn.Module | None = None,
        key: Any = None,
        ledger: Any = None,
        audit_log: Any = None,
    ) -> PrivateTrainer:
        """A trainer that continues the checkpointed run at ``path`` on its next ``fit``.

        The run keeps its noise, sample rate, planned steps and ledger reservation.
        """
        from privdl.train.checkpoint import resume

        return resume(path, model=model, key=key, ledger=ledger, audit_log=audit_log)

    @classmethod
    def load(cls, path: Any, *, model: nn.Module | None = None, key: Any = None) -> PrivateTrainer:
        """Load a model saved by :meth:`save`, verifying its signature first."""
        from privdl.train.checkpoint import load_model

        return load_model(path, model=model, key=key)

    def __repr__(self) -> str:
        state = f"epsilon={self.epsilon:.3g}, steps={self.steps_}" if self.steps_ else "unfitted"
        return f"PrivateTrainer({type(self.model).__name__}, target_epsilon={self.target_epsilon!r}, {state})"


# ---------------------------------------------------------------------------------------
def _progress_stats(row: dict[str, Any]) -> str:
    """One epoch's figures for the progress bar: loss, validation metric, epsilon so far.

    The loss is the exact mean training loss (not DP): it is shown live on the trainer's
    own screen and is never saved with the model or put in a report.
    """
    parts = [] if row.get("loss") is None else [f"loss {row['loss']:.4f}"]
    if row.get("metric") is not None:
        parts.append(f"val {row['metric_name']} {row['metric']:.4f}")
    return "  ".join([*parts, f"epsilon {row['epsilon']:.3f}"])


def _refuse_distributed(*models: Any) -> None:
    """Refuse to train under ``torch.distributed`` (ranks would not share one DP run)."""
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
    from torch.nn.parallel import DistributedDataParallel as DDP

    # torchrun sets WORLD_SIZE on every rank before any process group exists
    world = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    wrapped = any(
        isinstance(sub, DDP | DPDDP)
        for m in models
        if isinstance(m, nn.Module)
        for sub in m.modules()
    )
    if initialized or wrapped or world not in ("0", "1"):
        what = (
            "a DistributedDataParallel model"
            if wrapped
            else "an initialized process group"
            if initialized
            else f"WORLD_SIZE={world}"
        )
        raise UsageError(
            f"PrivateTrainer does not support torch.distributed yet ({what}): each rank would "
            "train and charge the ledger on its own; run on one process with the plain model"
        )


def _row_digests(data: Any) -> list[bytes]:
    """A 128-bit digest of each row (features and target bytes), in order."""
    import hashlib

    def as_bytes(t: Any, n: int) -> Any:
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        return t.reshape(n, -1).view(torch.uint8).numpy() if t.numel() else np.zeros((n, 0), np.uint8)

    n = len(data)
    parts = [data.X] + ([] if data.y is None else [data.y])
    out: list[bytes] = []
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        rows = np.hstack([as_bytes(t[start:stop], stop - start) for t in parts])
        out.extend(hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows)
    return out


def _shared_frame_rows(data: Any, val: Any, target: str | None) -> int | None:
    """For two DataFrames: how many ``val`` rows equal a training row on every column
    both hold (the raw rows, pseudonyms included when given, not the encoded features:
    distinct people who look alike after generalization are not the same record).
    ``None`` when they are not both DataFrames."""
    import pandas as pd

    if val is None or not (isinstance(data, pd.DataFrame) and isinstance(val, pd.DataFrame)):
        return None
    common = [c for c in data.columns if c in val.columns]
    if not common or (target is not None and target not in common):
        return 0
    try:
        seen = set(pd.util.hash_pandas_object(data[common], index=False).to_numpy().tolist())
        hashed = pd.util.hash_pandas_object(val[common], index=False).to_numpy()
    except TypeError:  # unhashable cells (lists): fall back to the encoded rows
        return None
    return int(sum(1 for h in hashed.tolist() if h in seen))


def _shared_rows(train: Any, val: Any) -> int | None:
    """How many ``val`` rows equal a training row exactly (features and target).

    ``None`` when it cannot be checked cheaply (a Dataset read record by record that is
    neither the training dataset nor a Subset of the same one).
    """
    if val is None:
        return None
    if isinstance(train, TensorData) and isinstance(val, TensorData):
        if val.X.shape[1:] != train.X.shape[1:] or (val.y is None) != (train.y is None):
            return 0
        # the same dtype as the training tensors, so equal values have equal bytes
        val = TensorData(val.X.to(train.X.dtype), None if val.y is None else val.y.to(train.y.dtype))
        seen = set(_row_digests(train))
        return sum(d in seen for d in _row_digests(val))
    if isinstance(train, IndexedData) and isinstance(val, IndexedData):
        from torch.utils.data import Subset

        a, b = train.dataset, val.dataset
        if a is b:
            return len(b)
        if isinstance(a, Subset) and isinstance(b, Subset) and a.dataset is b.dataset:
            return len(set(map(int, a.indices)) & set(map(int, b.indices)))
    return None


def _out_of_place(model: nn.Module) -> list[str]:
    """Set ``inplace=False`` on every module that has ``inplace=True``; their names."""
    changed = []
    for name, m in model.named_modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
            changed.append(name)
    return changed


def _to(x: Any, device: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_to(v, device) for v in x)
    return x


def _encode_target(encoder: Any, series: Any) -> Any:
    fn = getattr(encoder, "encode_target", None) or encoder.target_encode
    return fn(series)


def _new_encoder(domains: str = "dp") -> Any:
    try:
        from privdl.train.encoding import TableEncoder
    except ImportError as exc:  # pragma: no cover - arrives with the encoder helper
        raise MissingDependencyError("privdl.train.encoding.TableEncoder is not available") from exc
    return TableEncoder(domains=domains)


def _is_table_encoder(encoder: Any) -> bool:
    from privdl.train.encoding import TableEncoder

    return isinstance(encoder, TableEncoder)


def _guard_rows(gsm: Any) -> None:
    """Refuse a trainable layer that runs on part of the batch (``layer(x[mask])``).

    Opacus' hooks add such a call's per-sample gradients to the *first* rows of the
    batch's (``grad_sample[:k] += ...``), so a record's gradient is split over two rows,
    each clipped to C: its contribution can exceed C. The hooks are Opacus' own list,
    removed with its hooks when the run ends.
    """
    from torch.utils._pytree import tree_leaves

    rows: list[int | None] = [None]

    def batch_rows(_module: Any, args: Any) -> None:
        first = next((t for t in tree_leaves(args) if isinstance(t, torch.Tensor)), None)
        rows[0] = int(first.shape[0]) if first is not None and first.ndim else None

    def check(name: str) -> Any:
        def hook(module: Any, inputs: Any, _output: Any) -> None:
            if rows[0] is None or not (module.training and torch.is_grad_enabled()):
                return
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if x is not None and (x.ndim == 0 or x.shape[0] != rows[0]):
                raise UsageError(
                    f"layer {name!r} ran on {x.shape[0] if x.ndim else 0} rows of a batch of "
                    f"{rows[0]}: per-sample clipping needs every trainable layer to run on the "
                    "whole batch (mask its output instead of its input)"
                )

        return hook

    module = gsm._module
    handles = gsm.autograd_grad_sample_hooks
    handles.append(module.register_forward_pre_hook(batch_rows))
    for name, m in module.named_modules():
        if any(p.requires_grad for p in m.parameters(recurse=False)):
            handles.append(m.register_forward_hook(check(name)))


def _ghost_optimizer(base: type) -> type:
    """Opacus' ghost-clipping optimizer without a ``deepcopy`` per parameter per step.

    ``accumulate`` in Opacus 1.6 deep-copies each gradient; a detached clone is the same
    value at a fraction of the cost (it was 8 % of a small model's DP step).
    """

    class GhostOptimizer(base):
        def accumulate(self) -> None:
            for p in self.params:
                if p.summed_grad is not None:
                    p.summed_grad.add_(p.grad)
                else:
                    p.summed_grad = p.grad.detach().clone()

    return GhostOptimizer


_SECURE_CLASSES: dict[type, type] = {}


def _secure_noise(base: type) -> type:
    """``base`` DP optimizer whose Gaussian noise comes from ChaCha20 (os.urandom key).

    Like Opacus' secure mode, each coordinate is the sum of four Gaussian draws divided
    by two (same variance), which defeats the known floating-point attacks on sampled
    Gaussians; unlike it, the draws come from a CSPRNG instead of torchcsprng.
    """
    if base in _SECURE_CLASSES:
        return _SECURE_CLASSES[base]
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class SecureNoise(base):
        def add_noise(self) -> None:
            rng = self.__dict__.setdefault("_privdl_rng", ChaChaRandom())
            std = self.noise_multiplier * self.max_grad_norm
            for p in self.params:
                _check_processed_flag(p.summed_grad)
                count = p.summed_grad.numel()
                z = sum(rng.normal(count) for _ in range(4)) / 2.0
                noise = torch.from_numpy(std * z).to(p.summed_grad.device, p.summed_grad.dtype)
                p.grad = (p.summed_grad + noise.view_as(p.summed_grad)).view_as(p)
                _mark_as_processed(p.summed_grad)

    SecureNoise.__name__ = f"Secure{base.__name__}"
    _SECURE_CLASSES[base] = SecureNoise
    return SecureNoise
