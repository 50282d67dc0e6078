"""Safe model files and training checkpoints: safetensors + JSON, signed, never pickled.

A saved model is a directory::

    model.safetensors      weights (safetensors: a flat tensor table, no code)
    meta.json              {"format": "privdl-model/1", "layers": [...], "feature_names":
                           [...], "task": ..., "privacy": {...}, "params": {...},
                           "history": [per epoch: epoch, steps, epsilon, validation
                           metric], "coverage": [what the folder releases, each item
                           marked DP-protected, public or not covered], ...}
    encoder.json           the fitted TableEncoder, when the model was trained on a table
    optimizer.safetensors  optimizer tensors (training checkpoints only; structure in meta)
    signature.json         SHA-256 of every file above, bound by a signature

The signature is an HMAC-SHA256 under a key derived from a :class:`~privdl.Secret`
(``key.derive("model-signature")``), or Ed25519 when ``key`` is an Ed25519 private key
(verify with its public key). Without a key only the SHA-256 manifest is written: it
catches corruption, not tampering, and loading such a file with a key is refused.

Loading verifies the signature before reading anything else and never unpickles:
weights come from safetensors, everything else from JSON. ``layers`` describes an
``nn.Sequential`` of standard layers (or a single layer) so the model can be rebuilt
without code; other architectures are loaded into the module passed as ``model=``.

A training checkpoint (written after each epoch with ``checkpoint_dir=``) adds the
optimizer state, the steps taken and the ledger run id: :func:`resume` continues the
same run, so the ledger's reservation made before the first step stays the one charged.

Neither holds the exact training loss (computed from the training records without
noise): the trainer shows it live on its progress bar only.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privdl.errors import (
    InputError,
    KeyMissingError,
    SecurityError,
    TamperDetectedError,
    UsageError,
    require,
)
from privdl.keys import Secret, hmac_sha256

if TYPE_CHECKING:
    from privdl.train.trainer import PrivateTrainer

__all__ = [
    "CHECKPOINT_FORMAT",
    "MODEL_FORMAT",
    "load_model",
    "read_model_files",
    "resume",
    "save_checkpoint",
    "save_model",
]

MODEL_FORMAT = "privdl-model/1"
CHECKPOINT_FORMAT = "privdl-checkpoint/1"
SIGNATURE_FORMAT = "privdl-signature/1"
_SIG_PURPOSE = "model-signature"
_FILES = ("model.safetensors", "meta.json", "encoder.json", "optimizer.safetensors")

_CONV_ARGS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)
# layer type -> constructor arguments kept in meta.json
_LAYER_ARGS: dict[str, tuple[str, ...]] = {
    "Linear": ("in_features", "out_features"),
    "ReLU": (),
    "Sigmoid": (),
    "Tanh": (),
    "GELU": (),
    "SiLU": (),
    "Identity": (),
    "Flatten": ("start_dim", "end_dim"),
    "Softmax": ("dim",),
    "LogSoftmax": ("dim",),
    "LeakyReLU": ("negative_slope",),
    "ELU": ("alpha",),
    "Dropout": ("p",),
    "GroupNorm": ("num_groups", "num_channels", "eps", "affine"),
    "LayerNorm": ("normalized_shape", "eps", "elementwise_affine"),
    **dict.fromkeys(("Conv1d", "Conv2d"), _CONV_ARGS),
    **{
        pool: ("kernel_size", "stride", "padding")
        for pool in ("MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d")
    },
    "AdaptiveAvgPool1d": ("output_size",),
    "AdaptiveAvgPool2d": ("output_size",),
}
# layers whose ``bias`` is a parameter (described as a flag)
_HAS_BIAS = ("Linear", "Conv1d", "Conv2d")


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
# signing
# --------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_bytes(kind: str, files: dict[str, str]) -> bytes:
    body = {"format": SIGNATURE_FORMAT, "kind": kind, "files": files}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _ed25519() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def _public_raw(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _sign(folder: Path, kind: str, key: Any) -> dict[str, Any]:
    files = {name: _sha256(folder / name) for name in _FILES if (folder / name).exists()}
    body = _manifest_bytes(kind, files)
    sig: dict[str, Any] = {"format": SIGNATURE_FORMAT, "kind": kind, "files": files}
    ed = _ed25519()
    if key is None:
        sig["alg"] = "sha256"
    elif isinstance(key, Secret):
        mac_key = key.derive(_SIG_PURPOSE)
        sig.update(
            alg="hmac-sha256",
            key_id=mac_key.key_id,
            mac=hmac_sha256(mac_key, body).hex(),
        )
    elif isinstance(key, ed.Ed25519PrivateKey):
        pub = _public_raw(key.public_key())
        sig.update(
            alg="ed25519",
            key_id="ed_" + hashlib.sha256(pub).hexdigest()[:16],
            signature=key.sign(body).hex(),
        )
    else:
        raise UsageError("key must be a privdl.Secret (HMAC) or an Ed25519 private key")
    return sig


def _verify(folder: Path, key: Any, *, kind: str) -> dict[str, Any]:
    """Check signature.json against the files and the key; return it."""
    sig_path = folder / "signature.json"
    if not sig_path.is_file():
        raise TamperDetectedError(f"{folder}: signature.json is missing", kind="missing")
    try:
        sig = json.loads(sig_path.read_text(encoding="utf-8"))
        files = dict(sig["files"])
        alg = str(sig["alg"])
        stored_kind = str(sig["kind"])
    except (ValueError, KeyError, TypeError) as exc:
        raise TamperDetectedError(f"{folder}: signature.json is malformed", kind="malformed") from exc
    if sig.get("format") != SIGNATURE_FORMAT:
        raise InputError(f"{folder}: not a privdl model signature")
    if kind == MODEL_FORMAT and stored_kind not in (MODEL_FORMAT, CHECKPOINT_FORMAT):
        raise InputError(f"{folder}: not a privdl model")
    if kind == CHECKPOINT_FORMAT and stored_kind != CHECKPOINT_FORMAT:
        raise InputError(f"{folder}: a saved model, not a training checkpoint")
    present = {name for name in _FILES if (folder / name).exists()}
    if set(files) != present or "model.safetensors" not in files or "meta.json" not in files:
        raise TamperDetectedError(f"{folder}: the files present differ from the signed list", kind="files")
    for name, digest in files.items():
        if not hmac.compare_digest(_sha256(folder / name), str(digest)):
            raise TamperDetectedError(f"{folder}: {name} was modified", kind="modified")
    body = _manifest_bytes(stored_kind, files)
    ed = _ed25519()
    if alg == "sha256":
        if key is not None:
            raise SecurityError(f"{folder} is not signed, but a key was given to verify it")
    elif alg == "hmac-sha256":
        if not isinstance(key, Secret):
            raise KeyMissingError(f"{folder} is HMAC-signed: pass key= (the signing Secret)")
        mac_key = key.derive(_SIG_PURPOSE)
        expected = hmac_sha256(mac_key, body).hex()
        if not hmac.compare_digest(expected, str(sig.get("mac", ""))):
            raise TamperDetectedError(
                f"{folder}: signature does not verify (wrong key or modified)", kind="signature"
            )
    elif alg == "ed25519":
        if isinstance(key, ed.Ed25519PrivateKey):
            key = key.public_key()
        if not isinstance(key, ed.Ed25519PublicKey):
            raise KeyMissingError(f"{folder} is Ed25519-signed: pass key= (the public key)")
        from cryptography.exceptions import InvalidSignature

        try:
            key.verify(bytes.fromhex(str(sig.get("signature", ""))), body)
        except (InvalidSignature, ValueError):
            raise TamperDetectedError(
                f"{folder}: signature does not verify (wrong key or modified)", kind="signature"
            ) from None
    else:
        raise InputError(f"{folder}: unknown signature algorithm {alg!r}")
    return dict(sig)


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _atomic_dir(target: Path) -> Any:
    """Write into a temporary sibling folder, then swap it in: never a half-written model."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            if not (target / "signature.json").exists() and any(target.iterdir()):
                raise UsageError(f"{target} exists and is not a privdl model folder")
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _meta(trainer: PrivateTrainer) -> dict[str, Any]:
    import opacus
    import torch

    import privdl
    from privdl.budget.report import coverage_items

    container, layers = describe_layers(trainer.model_)
    return {
        "format": MODEL_FORMAT,
        "container": container,
        "layers": layers,
        "model_class": type(trainer.model_).__name__,
        "feature_names": trainer.feature_names_,
        "task": trainer.task_,
        "n_outputs": trainer.n_outputs_,
        "params": trainer.get_params(),
        "privacy": {
            "epsilon": trainer.epsilon,
            "delta": trainer.delta_,
            "accountant": getattr(trainer, "accountant_", None) or trainer.accountant,
            "accountant_history": [list(seg) for seg in trainer.accountant_history_],
            "noise_multiplier": trainer.noise_multiplier_,
            "sample_rate": trainer.sample_rate_,
            "steps": trainer.steps_,
            "planned_steps": trainer.planned_steps_,
            "max_grad_norm": trainer.max_grad_norm,
            "secure_mode": trainer.secure_mode,
            "n_samples": trainer.n_samples_,
        },
        "dataset_id": trainer.dataset_id,
        "run_id": trainer.run_id_,
        "replaced_modules": list(trainer.replaced_modules_),
        "grad_sample_mode": trainer.grad_sample_mode_,
        "history": [_released_epoch(row) for row in trainer.history_],
        "coverage": coverage_items(trainer),
        "versions": {
            "privdl": privdl.__version__,
            "opacus": opacus.__version__,
            "torch": torch.__version__,
        },
    }


# What a saved epoch row keeps: an allowlist, so that nothing computed from the training
# records without noise (the exact training loss) reaches a model folder or checkpoint.
_EPOCH_FIELDS = ("epoch", "steps", "epsilon", "metric", "metric_name")


def _released_epoch(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in _EPOCH_FIELDS if name in row}


def _write(trainer: PrivateTrainer, path: Any, key: Any, kind: str, extra: dict[str, Any]) -> Path:
    require("safetensors", "train")
    from safetensors.torch import save_file

    model = trainer.model_
    if model is None:
        raise UsageError("nothing to save: the trainer is not fitted")
    target = Path(path)
    with _atomic_dir(target) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": MODEL_FORMAT})
        meta = _meta(trainer)
        meta.update(extra.pop("meta", {}))
        opt_tensors = extra.pop("optimizer_tensors", None)
        if opt_tensors is not None:
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True, indent=1), "utf-8")
        if trainer.encoder_ is not None:
            (tmp / "encoder.json").write_text(trainer.encoder_.to_json(), "utf-8")
        sig = _sign(tmp, kind, key)
        (tmp / "signature.json").write_text(json.dumps(sig, sort_keys=True, indent=1), "utf-8")
        for child in tmp.iterdir():
            with child.open("rb") as fh:
                os.fsync(fh.fileno())
    return target


def save_model(trainer: PrivateTrainer, path: Any, *, key: Any = None) -> Path:
    """Save a fitted trainer's model, encoder and privacy record to folder ``path``.

    Args:
        trainer: a fitted :class:`~privdl.PrivateTrainer`.
        path: target folder (replaced atomically if it holds a privdl model).
        key: a :class:`~privdl.Secret` (HMAC) or an Ed25519 private key; ``None``
            writes an unsigned SHA-256 manifest.
    """
    return _write(trainer, path, key, MODEL_FORMAT, {})


def save_checkpoint(trainer: PrivateTrainer, path: Any, *, key: Any = None) -> Path:
    """Save a mid-training checkpoint (model, optimizer, steps, ledger run) to ``path``."""
    st = trainer._state
    opt = st.get("opt")
    if opt is None:
        raise UsageError("no training in progress to checkpoint")
    tensors, structure = _split_optimizer_state(opt.original_optimizer.state_dict())
    extra = {
        "meta": {
            "checkpoint": {
                "epoch": st["epoch"],
                "steps": trainer.steps_,
                "per_epoch": st["per_epoch"],
                "optimizer": structure,
                "ledger": _ledger_location(trainer.ledger),
            }
        },
        "optimizer_tensors": tensors,
    }
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
    """Verify a saved model and return ``(meta, state_dict, encoder_json)``.

    For consumers that need only the weights (e.g. the encrypted scorer reading a
    linear model), without torch modules or the trainer.

    Raises:
        TamperDetectedError: a file or the signature does not verify.
        KeyMissingError: the model is signed and no key was given.
    """
    require("safetensors", "train")
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: no saved model folder there")
    sig = _verify(folder, key, kind=MODEL_FORMAT)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{folder}: meta.json is not valid JSON") from exc
    if meta.get("format") != MODEL_FORMAT:
        raise InputError(f"{folder}: not a {MODEL_FORMAT} model")
    meta["_signature"] = {k: sig.get(k) for k in ("alg", "key_id", "kind")}
    state = load_file(str(folder / "model.safetensors"))
    encoder = None
    if (folder / "encoder.json").exists():
        encoder = (folder / "encoder.json").read_text(encoding="utf-8")
    return meta, state, encoder


def load_model(path: Any, *, model: Any = None, key: Any = None) -> PrivateTrainer:
    """Load a model saved by :func:`save_model` into a fitted :class:`~privdl.PrivateTrainer`.

    Args:
        path: the model folder.
        model: the module to load weights into, needed when the architecture is not a
            plain ``nn.Sequential`` of standard layers.
        key: the Secret or Ed25519 public key it was signed with.
    """
    meta, state, encoder_json = read_model_files(path, key=key)
    return _trainer_from(meta, state, encoder_json, model=model)


def _trainer_from(
    meta: dict[str, Any], state: dict[str, Any], encoder_json: str | None, *, model: Any
) -> PrivateTrainer:
    from privdl.train.trainer import PrivateTrainer

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
    params = dict(meta.get("params") or {})
    opt = params.get("optimizer") or "adam"
    trainer = PrivateTrainer(
        model,
        epsilon=params.get("epsilon", 3.0),
        delta=params.get("delta"),
        max_grad_norm=float(meta["privacy"]["max_grad_norm"]),
        epochs=int(params.get("epochs") or 1),
        batch_size=int(params.get("batch_size") or 1),
        lr=params.get("lr"),
        optimizer=opt
        if isinstance(opt, str) and opt.lower() in ("adam", "adamw", "sgd", "rmsprop")
        else "adam",
        loss=params.get("loss") if params.get("loss") in ("cross_entropy", "bce", "mse") else None,
        accountant=meta["privacy"]["accountant"],
        dataset_id=meta.get("dataset_id"),
        secure_mode=bool(meta["privacy"].get("secure_mode")),
        max_physical_batch_size=params.get("max_physical_batch_size"),
        grad_sample_mode=params.get("grad_sample_mode") or "auto",
        progress=False,
    )
    privacy = meta["privacy"]
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
    trainer.replaced_modules_ = list(meta.get("replaced_modules") or [])
    trainer.grad_sample_mode_ = meta.get("grad_sample_mode")
    trainer.history_ = list(meta.get("history") or [])
    trainer.run_id_ = meta.get("run_id")
    if encoder_json is not None:
        from privdl.train.encoding import TableEncoder

        enc = TableEncoder.from_json(encoder_json)
        trainer.encoder_ = enc
        # where the domains came from, for the report; the DP estimate's segments are
        # in the saved accountant history already
        trainer.domain_source_ = enc.domain_source_
        trainer.domain_history_ = list(enc.domain_history_)
        trainer.domain_run_id_ = enc.domain_run_id_
    return trainer


def resume(
    path: Any,
    *,
    model: Any = None,
    key: Any = None,
    ledger: Any = None,
    audit_log: Any = None,
    checkpoint_dir: Any = None,
) -> PrivateTrainer:
    """A trainer that continues the run saved in checkpoint ``path`` on the next ``fit``.

    The resumed run keeps its noise multiplier, sample rate, planned steps and ledger
    reservation (``run_id``); ``fit`` must get the same number of records. The ledger
    is the one recorded in the checkpoint unless ``ledger=`` is given.
    """
    require("safetensors", "train")
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: no checkpoint folder there")
    _verify(folder, key, kind=CHECKPOINT_FORMAT)
    meta, state, encoder_json = read_model_files(folder, key=key)
    ckpt = meta.get("checkpoint")
    if not isinstance(ckpt, dict):
        raise InputError(f"{folder}: checkpoint state is missing")
    trainer = _trainer_from(meta, state, encoder_json, model=model)
    trainer.model.train()  # type: ignore[union-attr]
    opt_tensors = load_file(str(folder / "optimizer.safetensors"))
    trainer.ledger = ledger if ledger is not None else ckpt.get("ledger")
    trainer.audit_log = audit_log
    trainer.checkpoint_dir = checkpoint_dir if checkpoint_dir is not None else folder
    trainer.checkpoint_key = key
    trainer._resume = {
        "epoch": int(ckpt["epoch"]),
        "steps": int(ckpt["steps"]),
        "per_epoch": int(ckpt["per_epoch"]),
        "optimizer": _join_optimizer_state(ckpt["optimizer"], opt_tensors),
        "history": list(trainer.history_),
    }
    return trainer
