"""Differentially private training: PrivateTrainer, noise calibration, data, checkpoints.

This package imports nothing heavy: ``privdl.train.encoding`` (numpy only) and
``privdl.train.calibrate`` (numpy + scipy) can be used by a scoring server or the budget
CLI without torch. ``privdl.train.trainer`` loads torch and Opacus when imported.
"""

from __future__ import annotations

__all__: list[str] = []
