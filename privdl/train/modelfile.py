"""The model folder format, read and verified without torch.

A model saved by :meth:`PrivateTrainer.save <privdl.PrivateTrainer.save>` is a folder::

    model.safetensors      weights (safetensors: a flat tensor table, no code)
    meta.json              {"format": "privdl-model/1", "layers": [...], "feature_names":
                           [...], "task": ..., "privacy": {...}, "params": {...},
                           "history": [per epoch: epoch, steps, epsilon, validation
                           metric], "coverage": [what the folder releases, each item
                           marked DP-protected, public or not covered], ...}
    encoder.json           the fitted TableEncoder, when the model was trained on a table
    manifest.json          the run's RunManifest (privdl.manifest: hardware, platform,
                           source, configuration, data fingerprints, weight digests)
    optimizer.safetensors  optimizer tensors (training checkpoints only; structure in meta)
    users.safetensors      a user-level checkpoint's kept-record draw: one random key per
                           record, no user id (privdl.train.user_level.UserDraw)
    signature.json         SHA-256 of every file above, bound by a signature

The signature is an HMAC-SHA256 under a key derived from a :class:`~privdl.Secret`
(``key.derive("model-signature")``), or Ed25519 when ``key`` is an Ed25519 private key
(verify with its public key). Without a key only the SHA-256 manifest is written: it
catches corruption, not tampering, and loading such a file with a key is refused.

This module owns the format: its names, the layer table ``meta.json`` describes a model
with, signing and verification. It imports neither torch nor Opacus, so a scoring server
(``privdl he score --model DIR``) verifies a folder and reads its weights as numpy arrays
with :func:`read_model_folder` alone. Writing a folder from a trainer is
:mod:`privdl.train.checkpoint`'s job; rebuilding torch modules is too.

Example:
    >>> folder = read_model_folder("model", key=secret)        # doctest: +SKIP
    >>> folder.meta["feature_names"], folder.arrays()["weight"].shape  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privdl._optional import require
from privdl.errors import InputError, TamperDetectedError
from privdl.fingerprint import sha256_file
from privdl.signing import SIGNATURE_FORMAT, digests_match, sign_digests, verify_digests

__all__ = [
    "CHECKPOINT_FORMAT",
    "FILES",
    "HAS_BIAS",
    "LAYER_ARGS",
    "MODEL_FORMAT",
    "SIGNATURE_FORMAT",
    "ModelFolder",
    "read_model_folder",
    "sign_folder",
    "verify_folder",
]

MODEL_FORMAT = "privdl-model/1"
CHECKPOINT_FORMAT = "privdl-checkpoint/1"
_SIG_PURPOSE = "model-signature"
#: the files a model folder may hold besides signature.json, in signing order
FILES = (
    "model.safetensors",
    "meta.json",
    "encoder.json",
    "optimizer.safetensors",
    "manifest.json",
    "users.safetensors",
)
_FILES = FILES

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
#: layer type -> constructor arguments kept in meta.json (``torch.nn`` names)
LAYER_ARGS: dict[str, tuple[str, ...]] = {
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
#: layers whose ``bias`` is a parameter (described as a flag)
HAS_BIAS = ("Linear", "Conv1d", "Conv2d")


# --------------------------------------------------------------------------------------
# signing
# --------------------------------------------------------------------------------------
def _sign(folder: Path, kind: str, key: Any) -> dict[str, Any]:
    files = {name: sha256_file(folder / name) for name in _FILES if (folder / name).exists()}
    return sign_digests(files, kind=kind, key=key, purpose=_SIG_PURPOSE)


def _verify(folder: Path, key: Any, *, kind: str) -> dict[str, Any]:
    """Check signature.json against the files and the key; return it."""
    sig_path = folder / "signature.json"
    if not sig_path.is_file():
        raise TamperDetectedError(f"{folder}: signature.json is missing", kind="missing")
    try:
        sig = json.loads(sig_path.read_text(encoding="utf-8"))
        files = dict(sig["files"])
        stored_kind = str(sig["kind"])
        str(sig["alg"])  # named at all (verify_digests checks which)
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
        if not digests_match(sha256_file(folder / name), str(digest)):
            raise TamperDetectedError(f"{folder}: {name} was modified", kind="modified")
    verify_digests(sig, key, purpose=_SIG_PURPOSE, label=str(folder))
    return dict(sig)


def sign_folder(folder: Path, kind: str, key: Any) -> dict[str, Any]:
    """The ``signature.json`` body for the files in ``folder`` (``kind``: the format)."""
    return _sign(Path(folder), kind, key)


def verify_folder(folder: Path, key: Any, *, kind: str = MODEL_FORMAT) -> dict[str, Any]:
    """Check ``folder``'s signature.json against its files and ``key``; return it.

    Raises:
        TamperDetectedError: a file or the signature does not verify.
        KeyMissingError: the folder is signed and no (fitting) key was given.
        SecurityError: the folder is unsigned but a key was given.
        InputError: not a privdl model folder (or, for ``kind=CHECKPOINT_FORMAT``, a
            saved model rather than a training checkpoint).
    """
    return _verify(Path(folder), key, kind=kind)


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFolder:
    """A verified model folder: its description, its encoder and where its weights are.

    Attributes:
        path: the folder.
        meta: ``meta.json`` as a dict.
        encoder_json: ``encoder.json``'s text, or ``None``.
        signature: ``alg``, ``key_id`` and ``kind`` of the verified signature.
    """

    path: Path
    meta: dict[str, Any] = field(compare=False)
    encoder_json: str | None = None
    signature: dict[str, Any] = field(default_factory=dict)

    @property
    def is_checkpoint(self) -> bool:
        """The folder is a training checkpoint (it holds the optimizer state)."""
        return self.signature.get("kind") == CHECKPOINT_FORMAT

    def arrays(self, name: str = "model.safetensors") -> dict[str, Any]:
        """The folder's tensors as numpy arrays (safetensors, no torch, no pickle)."""
        st_numpy: Any = require("safetensors.numpy", "train")
        return dict(st_numpy.load_file(str(self.path / name)))


def read_model_folder(path: Any, *, key: Any = None, kind: str = MODEL_FORMAT) -> ModelFolder:
    """Verify a saved model folder (signature first), then read its JSON files.

    Args:
        path: the folder.
        key: the Secret or Ed25519 public key it was signed with (``None``: unsigned).
        kind: ``MODEL_FORMAT`` (a model or a checkpoint) or ``CHECKPOINT_FORMAT``
            (training checkpoints only).

    Raises:
        InputError: no folder there, not a privdl model, or malformed meta.json.
        TamperDetectedError, KeyMissingError, SecurityError: see :func:`verify_folder`.
    """
    folder = Path(path)
    what = "checkpoint" if kind == CHECKPOINT_FORMAT else "saved model"
    if not folder.is_dir():
        raise InputError(f"{folder}: no {what} folder there")
    sig = _verify(folder, key, kind=kind)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{folder}: meta.json is not valid JSON") from exc
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise InputError(f"{folder}: not a {MODEL_FORMAT} model")
    encoder = None
    if (folder / "encoder.json").exists():
        encoder = (folder / "encoder.json").read_text(encoding="utf-8")
    return ModelFolder(
        path=folder,
        meta=meta,
        encoder_json=encoder,
        signature={k: sig.get(k) for k in ("alg", "key_id", "kind")},
    )
