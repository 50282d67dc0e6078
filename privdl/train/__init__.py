"""Differentially private training: PrivateTrainer, its run, DP steps, model folders.

This package imports nothing heavy: ``privdl.train.encoding`` (TableEncoder, numpy and
pandas) and ``privdl.train.modelfile`` (the model folder format, read and verified
without torch) serve a scoring server without torch. ``privdl.train.trainer`` loads
torch and Opacus when imported; every Opacus import is in ``privdl.train.opacus_step``.
Noise calibration and accounting live in :mod:`privdl.budget.accounting`.
"""

from __future__ import annotations

__all__: list[str] = []
