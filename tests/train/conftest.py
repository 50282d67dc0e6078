"""Shared settings for the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run faster single-threaded, and the CI machine has 2 shared cores."""
    try:
        import torch
    except ImportError:  # the calibration tests do not need torch
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch):
    """No test inherits an outer torchrun launch's variables (a test that needs them sets
    them itself)."""
    from tests.train.torchrun import TORCHRUN_VARS

    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
