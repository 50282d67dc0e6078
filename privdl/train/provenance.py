"""The RunManifest of a training run: what it takes to reproduce (or explain) a model.

:func:`training_manifest` builds a :class:`~privdl.manifest.RunManifest` from a trainer's
state: its configuration (``params_record()``: ``seed_given``, never the seed; the layer
table; the features), the fingerprints of its training and validation data (SHA-256 of
the values, never the values), the SHA-256 of every weight tensor, the device, and a
reproducibility statement. :func:`reproducibility` says whether a rerun gives the same
weights bit for bit: only a seeded run on the CPU without secure mode and without a DP
domain estimate does (secure mode and the DP domain estimates draw their noise from the
operating system's CSPRNG; CUDA kernels are not deterministic by default).

The trainer keeps the manifest of its last fit as ``manifest_``; the fit's audit entry
records its SHA-256 (``manifest_sha256``), and :mod:`privdl.train.checkpoint` writes it
as ``manifest.json`` into every model folder and checkpoint.
"""

from __future__ import annotations

import hashlib
from typing import Any

from privdl.manifest import RunManifest

__all__ = ["reproducibility", "statement", "tensor_digests", "training_manifest"]


def reproducibility(trainer: Any) -> dict[str, Any]:
    """``{"bitwise": bool, "reason": str}`` for a trainer's run."""
    return statement(
        seed_given=trainer.seed is not None,
        secure_mode=bool(trainer.secure_mode),
        dp_domains=bool(trainer.domain_history_),
        device=str(trainer.device_ or trainer.device or "cpu"),
    )


def statement(*, seed_given: bool, secure_mode: bool, dp_domains: bool, device: str) -> dict[str, Any]:
    """The reproducibility statement of a run with these facts."""
    reasons = []
    if not seed_given:
        reasons.append("no seed was given: initialization, sampling and noise differ on every run")
    if secure_mode:
        reasons.append("secure_mode draws the sampling and the noise from the operating system's CSPRNG")
    if dp_domains:
        reasons.append("the encoder's domains were estimated with DP noise from the operating system's CSPRNG")
    if not device.startswith("cpu"):
        reasons.append(f"the run used {device}: GPU kernels are not deterministic by default")
    if reasons:
        return {"bitwise": False, "reason": "; ".join(reasons)}
    return {"bitwise": True, "reason": "seeded run on the CPU without secure mode"}


def tensor_digests(model: Any) -> dict[str, str]:
    """Parameter / buffer name -> SHA-256 of its dtype, shape and bytes (on the CPU)."""
    out: dict[str, str] = {}
    for name, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
        out[name] = digest.hexdigest()
    return out


def training_manifest(trainer: Any, *, data: dict[str, Any] | None = None) -> RunManifest:
    """The manifest of a trainer's current state.

    Args:
        trainer: a PrivateTrainer during or after a fit.
        data: role -> fingerprint of the data the run read (default: the trainer's
            last fit's, or none).
    """
    from privdl.train.checkpoint import describe_layers

    config = dict(trainer.params_record())
    model = trainer.model_ if trainer.model_ is not None else trainer.model
    container, layers = describe_layers(model) if model is not None else (None, None)
    config["model_layers"] = (
        layers if layers is not None else (type(model).__name__ if model is not None else None)
    )
    if container is not None:
        config["model_container"] = container
    config["features"] = list(trainer.feature_names_ or [])
    fingerprints = data if data is not None else dict(trainer.data_fingerprints_ or {})
    return RunManifest.collect(
        config=config,
        data=fingerprints,
        model_digests=tensor_digests(model) if model is not None else {},
        hardware={"device": str(trainer.device_ or trainer.device)},
        reproducibility=reproducibility(trainer),
    )
