"""Encrypted scoring with CKKS (TenSEAL): the scoring service never holds the secret key.

The data owner generates an :class:`HEKeys` set, encrypts the sensitive columns
feature-major (one ciphertext per column per N/2 rows) and decrypts the scores; the
scoring service builds an :class:`EncryptedScorer` from a model and
``keys.public()`` (parameters and the evaluation keys the model needs, no secret key)
and computes on ciphertexts::

    keys = HEKeys.generate()                                   # data owner
    batch = keys.encrypt(users, columns=["age", "sex=F", "city=Berlin"])
    scorer = EncryptedScorer.from_model(model, keys.public())  # scoring service
    scores = scorer.score(batch, plain=users, plain_columns=["plays_week1"])
    probabilities = keys.decrypt(scores)                       # data owner

Modules: :mod:`~privdl.encrypted.params` (parameter sets, the 128-bit check),
:mod:`~privdl.encrypted.wire` (the versioned container and its value types),
:mod:`~privdl.encrypted.ciphertext` (CKKS operations on one block of rows),
:mod:`~privdl.encrypted.pool` (worker processes), :mod:`~privdl.encrypted.keys`,
:mod:`~privdl.encrypted.packing`, :mod:`~privdl.encrypted.polynomial` (the polynomial
stand-ins for activations), :mod:`~privdl.encrypted.models` (torch / scikit-learn /
file models: :func:`load_model_spec`), :mod:`~privdl.encrypted.approximation` (the
measured gap between the encrypted circuit and the exact model),
:mod:`~privdl.encrypted.activations` (``Square``, ``PolynomialActivation``: torch
modules to train HE-friendly networks with), :mod:`~privdl.encrypted.scorer`.

TenSEAL is imported only when keys are made or ciphertexts touched (``privdl[he]``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ApproximationReport",
    "EncryptedBatch",
    "EncryptedScorer",
    "HEKeys",
    "ModelSpec",
    "PolynomialActivation",
    "PublicKeys",
    "Square",
    "export_linear_model",
    "load_model_spec",
]

_LAZY = {
    "ApproximationReport": "privdl.encrypted.approximation",
    "EncryptedBatch": "privdl.encrypted.wire",
    "EncryptedScorer": "privdl.encrypted.scorer",
    "HEKeys": "privdl.encrypted.keys",
    "ModelSpec": "privdl.encrypted.models",
    "PolynomialActivation": "privdl.encrypted.activations",
    "PublicKeys": "privdl.encrypted.keys",
    "Square": "privdl.encrypted.activations",
    "export_linear_model": "privdl.encrypted.models",
    "load_model_spec": "privdl.encrypted.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'privdl.encrypted' has no attribute {name!r}")
