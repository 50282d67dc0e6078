"""The one-user bound, shared by the user-level tests (trainer steps, make_private's loop,
on the CPU and on a device): removing all records of one user moves the summed clipped
update (lr=1 SGD, no noise) by at most C, and the update equals a per-user brute force."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.nn import functional as F


def flat(model: torch.nn.Module) -> torch.Tensor:
    """The parameters as one CPU vector."""
    return torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()])


def brute_force(model: torch.nn.Module, X: Any, y: Any, index: Any, users: list[int], clip: float) -> torch.Tensor:
    """Per user: autograd gradient of their mean cross-entropy over their kept records,
    clipped to ``clip``; summed (on the CPU)."""
    total = torch.zeros_like(flat(model))
    for u in users:
        rows = index.records[index.offsets[u] : index.offsets[u + 1]].to(X.device)
        m = copy.deepcopy(model)
        grads = torch.autograd.grad(F.cross_entropy(m(X[rows]), y[rows]), list(m.parameters()))
        g = torch.cat([t.reshape(-1).cpu() for t in grads])
        total += g * min(1.0, clip / (float(g.norm()) + 1e-6))
    return total


def check_one_user_bound(
    update: Callable[[list[int]], torch.Tensor], model: torch.nn.Module, X: Any, y: Any, index: Any, clip: float
) -> None:
    """``update(users)``: the engine's update for those users. It must equal the brute
    force; dropping any one user moves it by at most ``clip``; and user 0 (the heavy one,
    beyond the cap) alone is clipped to exactly ``clip`` (the bound is attained)."""
    everyone = list(range(index.n_users))
    full = update(everyone)
    assert torch.allclose(full, brute_force(model, X, y, index, everyone, clip), atol=1e-4, rtol=1e-4)
    for u in everyone:
        without = update([v for v in everyone if v != u])
        assert float((full - without).norm()) <= clip * (1 + 1e-4)
    assert float(update([0]).norm()) == pytest.approx(clip, rel=1e-3)
