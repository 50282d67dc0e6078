"""The trainer's parameters: defaults, their checks and the optimizer they name.

:class:`~privdl.PrivateTrainer` stores its parameters untouched (scikit-learn's
convention) and checks them when ``fit`` starts, with :func:`check_params`. A bad
privacy parameter (epsilon, accountant) is a
:class:`~privdl.errors.PrivacyParameterError` from
:mod:`privdl.budget.accounting`'s one validator, as from every other entry point.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from privdl.budget.accounting import check_accountant, check_epsilon
from privdl.errors import PrivacyParameterError, SecurityError, UsageError

__all__ = [
    "DEFAULTS",
    "OPTIMIZERS",
    "check_params",
    "default_lr",
    "make_optimizer",
    "params_record",
    "resolve_batch_size",
]

#: Defaults chosen so that a user passes only the model, epsilon and the data
#: (benchmarks/train.py checks them against the utility anchors; see docs/train.md).
DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 256,
    "optimizer": "adam",
    "lr": {"adam": 2e-2, "adamw": 2e-2, "sgd": 0.5, "rmsprop": 1e-2},
    "max_grad_norm": 1.0,
}

#: optimizer names -> ``torch.optim`` classes
OPTIMIZERS = {
    "adam": "Adam",
    "adamw": "AdamW",
    "sgd": "SGD",
    "rmsprop": "RMSprop",
}


def default_lr(lr: float | None, optimizer: str | type) -> float:
    """``lr``, or the default learning rate of the named optimizer."""
    if lr is not None:
        return float(lr)
    name = optimizer.lower() if isinstance(optimizer, str) else ""
    return float(DEFAULTS["lr"].get(name, 1e-3))


def make_optimizer(optimizer: str | type, lr: float, params: list[Any]) -> Any:
    """The torch optimizer ``optimizer`` names (or is) over ``params``."""
    import torch

    cls = getattr(torch.optim, OPTIMIZERS[optimizer.lower()]) if isinstance(optimizer, str) else optimizer
    # foreach: one fused kernel per update instead of one per parameter
    extra = {"foreach": True} if cls.__module__.startswith("torch.optim") else {}
    return cls(params, lr=lr, **extra)


def resolve_batch_size(batch_size: int | None, data: Any) -> int:
    """The expected Poisson batch size of a fit: ``batch_size``, else a ``DataLoader``'s
    own ``batch_size``, else the default (256).

    A ``batch_size`` that differs from the loader's wins, with a warning: the loader's
    sampler is replaced by Poisson sampling, and its batch size would be silently lost.
    """
    import warnings

    from torch.utils.data import DataLoader

    own = data.batch_size if isinstance(data, DataLoader) else None
    if batch_size is None:
        return int(own) if own else int(DEFAULTS["batch_size"])
    if own and int(own) != int(batch_size):
        warnings.warn(
            f"the DataLoader's batch_size={own} is replaced by batch_size={batch_size}: batches "
            "are Poisson samples of that expected size (leave batch_size unset to keep the "
            "loader's)",
            UserWarning,
            stacklevel=4,
        )
    return int(batch_size)


def check_params(trainer: Any) -> None:
    """Check a trainer's parameters before a fit.

    Raises:
        PrivacyParameterError: epsilon or the accountant is out of range.
        UsageError: another parameter is, or two do not fit together.
        SecurityError: ``secure_mode`` with a seed.
    """
    from torch import nn

    from privdl.train.architectures import TabularModel
    from privdl.train.dp_step import GRAD_SAMPLE_MODES
    from privdl.train.model_prep import LOSSES

    if trainer.model is None or not isinstance(trainer.model, nn.Module | TabularModel):
        raise UsageError("PrivateTrainer needs a torch.nn.Module (or a TabularModel spec) as model")
    eps = trainer.target_epsilon
    if eps == "remaining":
        if trainer.ledger is None:
            raise UsageError('epsilon="remaining" needs a ledger= and a dataset_id=')
    elif isinstance(eps, str):
        raise PrivacyParameterError('epsilon must be a positive number or "remaining"')
    else:
        check_epsilon(eps)
    if trainer.ledger is not None and not trainer.dataset_id:
        raise UsageError("a ledger needs a dataset_id= to charge")
    check_accountant(trainer.accountant)
    if not (isinstance(trainer.epochs, numbers.Integral) and trainer.epochs >= 1):
        raise UsageError("epochs must be a positive integer")
    if trainer.batch_size is not None and not (
        isinstance(trainer.batch_size, numbers.Integral) and trainer.batch_size >= 1
    ):
        raise UsageError("batch_size must be a positive integer")
    if not (trainer.max_grad_norm > 0 and math.isfinite(trainer.max_grad_norm)):
        raise UsageError("max_grad_norm must be positive")
    if trainer.max_physical_batch_size is not None and trainer.max_physical_batch_size < 1:
        raise UsageError("max_physical_batch_size must be a positive integer")
    if trainer.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise UsageError(f"grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}")
    if isinstance(trainer.optimizer, str) and trainer.optimizer.lower() not in OPTIMIZERS:
        raise UsageError(f"optimizer must be one of {', '.join(OPTIMIZERS)} or a class")
    if isinstance(trainer.loss, str) and trainer.loss not in LOSSES:
        raise UsageError(f"loss must be one of {', '.join(LOSSES)} or a module")
    if trainer.secure_mode and trainer.seed is not None:
        raise SecurityError("secure_mode draws from a CSPRNG and cannot take a seed")


def params_record(trainer: Any) -> dict[str, Any]:
    """A trainer's configuration as plain data, as it goes into the audit record, the
    report and a saved model's meta.json (``seed_given``, never the seed)."""
    opt = trainer.optimizer if isinstance(trainer.optimizer, str) else trainer.optimizer.__name__
    loss = (
        trainer.loss if trainer.loss is None or isinstance(trainer.loss, str) else type(trainer.loss).__name__
    )
    return {
        "model": _model_name(trainer.model),
        "epsilon": trainer.target_epsilon,
        "delta": trainer.delta,
        "max_grad_norm": trainer.max_grad_norm,
        "epochs": trainer.epochs,
        # as given, or (after a fit) the expected batch size the fit resolved
        "batch_size": trainer.batch_size if trainer.batch_size is not None else trainer.batch_size_,
        "lr": default_lr(trainer.lr, trainer.optimizer),
        "optimizer": opt,
        "loss": loss,
        "accountant": trainer.accountant,
        "dataset_id": trainer.dataset_id,
        "device": trainer.device,
        "seed_given": trainer.seed is not None,
        "secure_mode": trainer.secure_mode,
        "max_physical_batch_size": trainer.max_physical_batch_size,
        "grad_sample_mode": trainer.grad_sample_mode,
        "domains": trainer.domains,
        "domain_epsilon": trainer.domain_epsilon,
        "privacy_unit": trainer.privacy_unit,
        "max_records_per_user": trainer.max_records_per_user,
    }


def _model_name(model: Any) -> str | None:
    """The module's class name, or a model spec's own spelling (``mlp:64,32``)."""
    from privdl.train.architectures import TabularModel

    if model is None:
        return None
    return str(model) if isinstance(model, TabularModel) else type(model).__name__
