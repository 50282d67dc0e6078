"""Writing model folders and training checkpoints from a trainer's state (torch side).

The folder format (files, signature, the layer table) is :mod:`privdl.train.modelfile`'s,
read there without torch. This module writes a fitted trainer's model, encoder and
privacy record into one (:func:`save_model`), a training checkpoint after an epoch
(:func:`save_checkpoint`: the optimizer state, the steps taken and the ledger run id, so
that a resumed run keeps the reservation made before its first step; for a user-level
run also the draw of every user's kept records, ``users.safetensors``), and reads them
back as torch tensors (:func:`read_model_files`, :func:`read_checkpoint`);
:func:`init_params` and :func:`restore_fitted` turn a folder back into a trainer's
parameters and fitted state. It reads a trainer's attributes and never imports the
trainer.

Loading verifies the signature before reading anything else and never unpickles:
weights come from safetensors, everything else from JSON. ``layers`` describes an
``nn.Sequential`` of standard layers (or a single layer) so the model can be rebuilt
without code (:func:`build_layers`); other architectures are loaded into the module
passed as ``model=``.

Neither a model nor a checkpoint holds the exact training loss (computed from the
training records without noise): the trainer shows it live on its progress bar only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from privdl._optional import require
from privdl._version import __version__
from privdl.errors import InputError, UsageError
from privdl.io import atomic_folder
from privdl.manifest import MANIFEST_FILE, RunManifest
from privdl.train.modelfile import (
    CHECKPOINT_FORMAT,
    HAS_BIAS,
    LAYER_ARGS,
    MODEL_FORMAT,
    ModelFolder,
    read_model_folder,
    sign_folder,
    verify_folder,
)
from privdl.train.run import ResumePoint

__all__ = [
    "CHECKPOINT_FORMAT",
    "MODEL_FORMAT",
    "build_layers",
    "checkpoint_ledger",
    "describe_layers",
    "init_params",
    "load_weights",
    "read_checkpoint",
    "read_model_files",
    "restore_fitted",
    "save_checkpoint",
    "save_model",
]

_LAYER_ARGS = LAYER_ARGS
_USERS_FILE = "users.safetensors"  # a user-level checkpoint's kept-record draw
_HAS_BIAS = HAS_BIAS


# --------------------------------------------------------------------------------------
# architecture description
# --------------------------------------------------------------------------------------
def describe_layers(model: Any) -> tuple[str | None, list[dict[str, Any]] | None]:
    """``(container, layers)`` for a Sequential of standard layers or a single layer.

    Returns ``(None, None)`` when the model cannot be rebuilt from a description.
    """
    from torch import nn

    def one(layer: Any) -> dict[str, Any] | None:
        name = type(layer).__name__
        if name not in _LAYER_ARGS or type(layer) is not getattr(nn, name):
            return None
        spec: dict[str, Any] = {"type": name}
        for arg in _LAYER_ARGS[name]:
            value = getattr(layer, arg)
            spec[arg] = list(value) if isinstance(value, tuple) else value
        if name in _HAS_BIAS:
            spec["bias"] = layer.bias is not None
        return spec

    if type(model) is nn.Sequential:
        layers = [one(m) for m in model]
        if any(s is None for s in layers):
            return None, None
        return "sequential", [s for s in layers if s is not None]
    single = one(model)
    return ("single", [single]) if single is not None else (None, None)


def build_layers(container: str, layers: list[dict[str, Any]]) -> Any:
    """Rebuild a model from :func:`describe_layers` output (no code is loaded)."""
    from torch import nn

    built = []
    for spec in layers:
        kind = spec.get("type")
        if kind not in _LAYER_ARGS:
            raise InputError(f"model file: unknown layer type {kind!r}")
        kwargs = {
            a: tuple(v) if isinstance(v, list) else v for a, v in spec.items() if a in _LAYER_ARGS[kind]
        }
        if kind in _HAS_BIAS:
            kwargs["bias"] = bool(spec.get("bias", True))
        try:
            built.append(getattr(nn, kind)(**kwargs))
        except (TypeError, ValueError):
            raise InputError(f"model file: the {kind} layer's arguments are not valid") from None
    if container == "single":
        if len(built) != 1:
            raise InputError("model file: a single-layer model lists several layers")
        return built[0]
    return nn.Sequential(*built)


# --------------------------------------------------------------------------------------
# signing: the model folder format's own (train/modelfile.py, on privdl/signing.py)
# --------------------------------------------------------------------------------------
_sign = sign_folder
_verify = verify_folder


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
def _refuse_foreign(target: Path) -> None:
    if not (target / "signature.json").exists() and any(target.iterdir()):
        raise UsageError(f"{target} exists and is not a privdl model folder")


def _atomic_dir(target: Path) -> Any:
    """Write into a temporary sibling folder, then swap it in: never a half-written model."""
    return atomic_folder(target, may_replace=_refuse_foreign)


def _meta(trainer: Any) -> dict[str, Any]:
    import torch

    from privdl.budget.report import coverage_items
    from privdl.train.opacus_step import opacus_version

    container, layers = describe_layers(trainer.model_)
    return {
        "format": MODEL_FORMAT,
        "container": container,
        "layers": layers,
        "model_class": type(trainer.model_).__name__,
        "feature_names": trainer.feature_names_,
        "task": trainer.task_,
        "n_outputs": trainer.n_outputs_,
        "params": trainer.params_record(),
        "privacy": {
            "epsilon": trainer.epsilon,
            "delta": trainer.delta_,
            "accountant": trainer.accountant_ or trainer.accountant,
            "accountant_history": [list(seg) for seg in trainer.accountant_history_],
            "noise_multiplier": trainer.noise_multiplier_,
            "sample_rate": trainer.sample_rate_,
            "steps": trainer.steps_,
            "planned_steps": trainer.planned_steps_,
            "max_grad_norm": trainer.max_grad_norm,
            "secure_mode": trainer.secure_mode,
            "n_samples": trainer.n_samples_,
            # the model is the best of a hyperparameter search (privdl.tune): "epsilon"
            # is the whole search's, recomputed from these candidates' histories
            "search": vars(trainer).get("search_"),
        },
        "dataset_id": trainer.dataset_id,
        "run_id": trainer.run_id_,
        "replaced_modules": list(trainer.replaced_modules_),
        "grad_sample_mode": trainer.grad_sample_mode_,
        "history": [_released_epoch(row) for row in trainer.history_],
        "coverage": coverage_items(trainer.run_facts()),
        "versions": {
            "privdl": __version__,
            "opacus": opacus_version(),
            "torch": torch.__version__,
        },
    }


# What a saved epoch row keeps: an allowlist, so that nothing computed from the training
# records without noise (the exact training loss) reaches a model folder or checkpoint.
_EPOCH_FIELDS = ("epoch", "steps", "epsilon", "metric", "metric_name")


def _released_epoch(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in _EPOCH_FIELDS if name in row}


def _save_tensors(save_file: Any, tensors: Any, file: Path, target: Path, **kwargs: Any) -> None:
    """safetensors' ``save_file``; a full disk (safetensors reports it in its own error
    type) becomes the one-line :class:`~privdl.io.DiskFullError` naming ``target``."""
    from privdl.io import disk_full_error, is_disk_full

    try:
        save_file(tensors, str(file), **kwargs)
    except Exception as exc:
        text = str(exc).lower()
        if is_disk_full(exc) or "no space left" in text or "quota exceeded" in text:
            raise disk_full_error(target / file.name) from None
        raise


def _write(trainer: Any, path: Any, key: Any, kind: str, extra: dict[str, Any]) -> Path:
    require("safetensors", "train")
    from safetensors.torch import save_file

    model = trainer.model_
    if model is None:
        raise UsageError("nothing to save: the trainer is not fitted")
    target = Path(path)
    with _atomic_dir(target) as tmp:
        state = _unique_state(model)
        _save_tensors(save_file, state, tmp / "model.safetensors", target, metadata={"format": MODEL_FORMAT})
        meta = _meta(trainer)
        meta.update(extra.pop("meta", {}))
        opt_tensors = extra.pop("optimizer_tensors", None)
        if opt_tensors is not None:
            _save_tensors(save_file, opt_tensors, tmp / "optimizer.safetensors", target)
        user_tensors = extra.pop("user_tensors", None)
        if user_tensors is not None:
            _save_tensors(save_file, user_tensors, tmp / _USERS_FILE, target)
        (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True, indent=1), "utf-8")
        if trainer.manifest_ is not None:  # the run's RunManifest, signed with the rest
            (tmp / MANIFEST_FILE).write_text(trainer.manifest_.to_json() + "\n", "utf-8")
        if trainer.encoder_ is not None:
            (tmp / "encoder.json").write_text(trainer.encoder_.to_json(), "utf-8")
        sig = _sign(tmp, kind, key)
        (tmp / "signature.json").write_text(json.dumps(sig, sort_keys=True, indent=1), "utf-8")
    return target


def _unique_state(model: Any) -> dict[str, Any]:
    """The model's state dict on the CPU with each tensor once: a layer that exposes a
    parameter under two names (Opacus' DPLSTM / DPGRU keep ``nn.LSTM``'s
    ``weight_ih_l0`` beside their own ``l0.ih.weight``) keeps the first, which is the
    ``torch.nn`` name, so the weights load into the plain layer or the Opacus one."""
    state: dict[str, Any] = {}
    seen: set[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = set()
    for name, value in model.state_dict().items():
        tensor = value.detach()
        alias = (tensor.data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and alias in seen:
            continue
        seen.add(alias)
        state[name] = tensor.cpu().contiguous().clone()
    return state


def save_model(trainer: Any, path: Any, *, key: Any = None) -> Path:
    """Save a fitted trainer's model, encoder and privacy record to folder ``path``.

    Args:
        trainer: a fitted :class:`~privdl.PrivateTrainer`.
        path: target folder (replaced atomically if it holds a privdl model).
        key: a :class:`~privdl.Secret` (HMAC) or an Ed25519 private key; ``None``
            writes an unsigned SHA-256 manifest.
    """
    return _write(trainer, path, key, MODEL_FORMAT, {})


def save_checkpoint(trainer: Any, path: Any, *, point: ResumePoint, key: Any = None) -> Path:
    """Save a mid-training checkpoint (model, optimizer, steps, ledger run) to ``path``.

    Args:
        trainer: the trainer of the run in progress (its fitted attributes so far).
        path: target folder.
        point: where the run stands: epochs and steps done, the optimizer state.
        key: as in :func:`save_model`.
    """
    tensors, structure = _split_optimizer_state(point.optimizer)
    state: dict[str, Any] = {
        "epoch": point.epoch,
        "steps": point.steps,
        "per_epoch": point.per_epoch,
        "optimizer": structure,
        "ledger": _ledger_location(trainer.ledger),
    }
    extra: dict[str, Any] = {"meta": {"checkpoint": state}, "optimizer_tensors": tensors}
    draw = point.users
    if draw is not None:  # a user-level run: the draw of every user's kept records
        import torch

        state["users"] = draw.to_meta()
        extra["user_tensors"] = {"keys": torch.from_numpy(draw.keys.astype("float64", copy=True))}
    return _write(trainer, path, key, CHECKPOINT_FORMAT, extra)


def _ledger_location(ledger: Any) -> str | None:
    if ledger is None:
        return None
    if isinstance(ledger, str | os.PathLike):
        return os.fspath(ledger)
    return str(getattr(ledger, "location", "")) or None


def _split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    tensors: dict[str, Any] = {}
    state: dict[str, dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        state[str(pid)] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                ref = f"state.{pid}.{name}"
                tensors[ref] = value.detach().cpu().contiguous()
                state[str(pid)][name] = {"tensor": ref}
            else:
                state[str(pid)][name] = {"value": value}
    groups = json.loads(json.dumps(state_dict["param_groups"], default=_json_default))
    return tensors, {"state": state, "param_groups": groups}


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float | int | bool | str) or value is None:
        return value
    raise UsageError(f"optimizer setting of type {type(value).__name__} cannot be checkpointed")


def _join_optimizer_state(structure: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entries in structure["state"].items():
        state[int(pid)] = {}
        for name, value in entries.items():
            if "tensor" in value:
                if value["tensor"] not in tensors:
                    raise InputError("checkpoint: optimizer tensor missing")
                state[int(pid)][name] = tensors[value["tensor"]]
            else:
                state[int(pid)][name] = value["value"]
    groups = []
    for group in structure["param_groups"]:
        g = dict(group)
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
def read_model_files(path: Any, *, key: Any = None) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """Verify a saved model and return ``(meta, state_dict, encoder_json)`` (torch tensors).

    A consumer that needs numpy arrays only (a scoring server) reads the folder with
    :func:`privdl.train.modelfile.read_model_folder` instead, without torch.

    Raises:
        TamperDetectedError: a file or the signature does not verify.
        KeyMissingError: the model is signed and no key was given.
    """
    folder = read_model_folder(path, key=key)
    meta = dict(folder.meta, _signature=dict(folder.signature))
    return meta, _tensors(folder), folder.encoder_json


def _tensors(folder: ModelFolder, name: str = "model.safetensors") -> dict[str, Any]:
    require("safetensors", "train")
    from safetensors.torch import load_file

    return dict(load_file(str(folder.path / name)))


def read_checkpoint(path: Any, *, key: Any = None) -> tuple[ModelFolder, ResumePoint]:
    """Verify a training checkpoint; its folder and :class:`ResumePoint`.

    Raises:
        InputError: not a checkpoint (a saved model, or its checkpoint state missing).
        TamperDetectedError, KeyMissingError: as :func:`read_model_files`.
    """
    folder = read_model_folder(path, key=key, kind=CHECKPOINT_FORMAT)
    ckpt = folder.meta.get("checkpoint")
    if not isinstance(ckpt, dict):
        raise InputError(f"{folder.path}: checkpoint state is missing")
    unit = str((folder.meta.get("params") or {}).get("privacy_unit") or "record")
    point = ResumePoint(
        epoch=int(ckpt["epoch"]),
        steps=int(ckpt["steps"]),
        per_epoch=int(ckpt["per_epoch"]),
        optimizer=_join_optimizer_state(ckpt["optimizer"], _tensors(folder, "optimizer.safetensors")),
        history=tuple(folder.meta.get("history") or ()),
        privacy_unit=unit,
        users=_user_draw(folder, ckpt) if unit == "user" else None,
    )
    return folder, point


def _user_draw(folder: ModelFolder, ckpt: dict[str, Any]) -> Any:
    """A user-level checkpoint's :class:`~privdl.train.user_level.UserDraw`.

    Raises:
        InputError: its user-level state is missing or malformed.
    """
    from privdl.train.user_level import UserDraw

    if not isinstance(ckpt.get("users"), dict) or not (folder.path / _USERS_FILE).is_file():
        raise InputError(f"{folder.path}: a user-level checkpoint without its user-level state")
    keys = _tensors(folder, _USERS_FILE).get("keys")
    if keys is None:
        raise InputError(f"{folder.path}: the user-level state is malformed")
    return UserDraw.from_meta(ckpt["users"], keys.numpy())


def checkpoint_ledger(folder: ModelFolder) -> str | None:
    """The ledger location a checkpoint records (``None`` without a ledger)."""
    return (folder.meta.get("checkpoint") or {}).get("ledger")


def init_params(meta: dict[str, Any]) -> dict[str, Any]:
    """The trainer parameters a saved model was trained with, as keyword arguments."""
    params = dict(meta.get("params") or {})
    privacy = meta["privacy"]
    opt = params.get("optimizer") or "adam"
    return {
        "epsilon": params.get("epsilon", 3.0),
        "delta": params.get("delta"),
        "max_grad_norm": float(privacy["max_grad_norm"]),
        "epochs": int(params.get("epochs") or 1),
        "batch_size": int(params.get("batch_size") or 1),
        "lr": params.get("lr"),
        "optimizer": opt
        if isinstance(opt, str) and opt.lower() in ("adam", "adamw", "sgd", "rmsprop")
        else "adam",
        "loss": params.get("loss") if params.get("loss") in ("cross_entropy", "bce", "mse") else None,
        "accountant": privacy["accountant"],
        "dataset_id": meta.get("dataset_id"),
        "secure_mode": bool(privacy.get("secure_mode")),
        "max_physical_batch_size": params.get("max_physical_batch_size"),
        "grad_sample_mode": params.get("grad_sample_mode") or "auto",
        "progress": False,
        "privacy_unit": params.get("privacy_unit") or "record",
        "max_records_per_user": params.get("max_records_per_user"),
    }


def load_weights(folder: ModelFolder, model: Any = None) -> Any:
    """The saved module: ``model`` (or one rebuilt from meta.json) with the weights."""
    meta, state = folder.meta, _tensors(folder)
    if model is None:
        if not meta.get("layers") or not meta.get("container"):
            raise UsageError(
                f"this model ({meta.get('model_class')}) cannot be rebuilt from its file: "
                "pass the module to load into as model="
            )
        model = build_layers(meta["container"], meta["layers"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError("the saved weights do not fit the given model's layers") from exc
    return model


def restore_fitted(trainer: Any, folder: ModelFolder, model: Any) -> None:
    """Set a new trainer's fitted state from a verified folder (``model``: the loaded
    module, see :func:`load_weights`)."""
    meta, privacy = folder.meta, folder.meta["privacy"]
    trainer.model_ = model.eval()
    trainer.task_ = meta.get("task")
    trainer.n_outputs_ = meta.get("n_outputs")
    trainer.feature_names_ = meta.get("feature_names")
    trainer.accountant_history_ = [(float(s), float(q), int(n)) for s, q, n in privacy["accountant_history"]]
    trainer.noise_multiplier_ = privacy.get("noise_multiplier")
    trainer.sample_rate_ = privacy.get("sample_rate")
    trainer.steps_ = int(privacy.get("steps") or 0)
    trainer.planned_steps_ = int(privacy.get("planned_steps") or 0)
    trainer.delta_ = privacy.get("delta")
    trainer.n_samples_ = privacy.get("n_samples")
    trainer.search_ = privacy.get("search")
    trainer.replaced_modules_ = list(meta.get("replaced_modules") or [])
    trainer.grad_sample_mode_ = meta.get("grad_sample_mode")
    trainer.history_ = list(meta.get("history") or [])
    trainer.run_id_ = meta.get("run_id")
    if (folder.path / MANIFEST_FILE).is_file():  # signed with the folder (verified already)
        trainer.manifest_ = RunManifest.load(folder.path / MANIFEST_FILE)
        trainer.data_fingerprints_ = dict(trainer.manifest_.data)
    if folder.encoder_json is not None:
        from privdl.train.encoding import TableEncoder

        enc = TableEncoder.from_json(folder.encoder_json)
        trainer.encoder_ = enc
        # where the domains came from, for the report; the DP estimate's segments are
        # in the saved accountant history already
        trainer.domain_source_ = enc.domain_source_
        trainer.domain_history_ = list(enc.domain_history_)
        trainer.domain_run_id_ = enc.domain_run_id_
