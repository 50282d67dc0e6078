"""A loss whose power goes off: for tests of runs killed midway."""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F


class CrashingLoss(nn.Module):
    """Cross-entropy that raises ``error`` in training step ``steps + 1``.

    The trainer calls the loss once per (non-empty, unsplit) batch of a training step
    and never for its probes or the validation metric, so ``steps = k * per_epoch``
    stops the run in epoch ``k + 1``, after the checkpoint of epoch ``k``. The count is
    shared with copies (the book-keeping step copies the loss).
    """

    def __init__(self, steps: int, error: type[BaseException] = RuntimeError) -> None:
        super().__init__()
        self.reduction = "mean"
        self.steps, self.error, self.calls = steps, error, [0]

    def forward(self, out, y):
        self.calls[0] += 1
        if self.calls[0] > self.steps:
            raise self.error("power cut")
        return F.cross_entropy(out, y.long(), reduction=self.reduction)
