"""User-level DP-SGD on a CUDA device (``pytest -m gpu``; benchmarks/gpu_checks.sh runs
them on a lent device machine). ``PRIVDL_TEST_GPU_DEVICE=cpu`` runs the same checks on
the CPU (how they were checked where no GPU is lent)."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from privdl.train.dp_step import StepSettings  # noqa: E402
from privdl.train.private_loop import make_private  # noqa: E402
from privdl.train.trainer import PrivateTrainer  # noqa: E402
from privdl.train.user_level import UserIndex, make_user_step  # noqa: E402
from tests.train.user_bound import check_one_user_bound, flat  # noqa: E402

DEVICE = os.environ.get("PRIVDL_TEST_GPU_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
C = 0.5


def _data(n_users=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 9, (n_users,), generator=g)
    counts[0] = 20  # one heavy user beyond the cap of 12
    owners = torch.repeat_interleave(torch.arange(n_users), counts)
    X = torch.randn(len(owners), 6, generator=g) * 3
    y = torch.randint(0, 3, (len(owners),), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    for p in model.parameters():
        nn.init.normal_(p, std=1.0)
    index = UserIndex.build(owners.numpy(), 12, generator=torch.Generator().manual_seed(1))
    return model.to(DEVICE), X.to(DEVICE), y.to(DEVICE), index, owners


def _update(model, mode, X, y, index, users):
    m = copy.deepcopy(model)
    before = flat(m)
    settings = StepSettings(
        noise_multiplier=0.0,
        max_grad_norm=C,
        expected_batch_size=1,
        criterion=nn.CrossEntropyLoss(),
        shape_for_loss=lambda out, t: (out, t),
        make_optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
        device=torch.device(DEVICE),
    )
    step = make_user_step(mode, m, settings)
    batch = index.gather(torch.tensor(users, dtype=torch.int64))
    step.step([batch] if users else [], lambda b: (X[b.records.to(X.device)], y[b.records.to(y.device)]))
    return before - flat(step.release())


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_removing_one_user_moves_the_update_by_at_most_C_on_the_device(mode):
    model, X, y, index, _ = _data()
    check_one_user_bound(lambda users: _update(model, mode, X, y, index, users), model, X, y, index, C)


def _events(n_users=300, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), rng.integers(1, 30, n_users))
    X = rng.normal(size=(len(users), 5)).astype("float32")
    y = (X[:, 0] + 0.5 * rng.normal(size=len(users)) > 0).astype("int64")
    return X, y, users


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_the_trainer_trains_at_user_level_on_the_device(mode):
    X, y, users = _events()
    kw = dict(epsilon=2.0, privacy_unit="user", max_records_per_user=8, epochs=3, batch_size=30, lr=0.1,
              seed=0, progress=False, grad_sample_mode=mode)  # fmt: skip
    on_device = PrivateTrainer(nn.Linear(5, 2), device=DEVICE, **kw).fit((X, y), users=users)
    on_cpu = PrivateTrainer(nn.Linear(5, 2), device="cpu", **kw).fit((X, y), users=users)
    assert on_device.device_.startswith(DEVICE)
    # the same mechanism: the accountant's epsilon does not depend on the device
    assert on_device.epsilon == pytest.approx(on_cpu.epsilon, rel=1e-12)
    assert (on_device.noise_multiplier_, on_device.steps_) == (on_cpu.noise_multiplier_, on_cpu.steps_)
    assert on_device.score(X, y) > 0.7


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_make_private_trains_at_user_level_on_the_device(mode):
    X, y, users = _events()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), batch_size=30)
    with make_private(model, optimizer, loader, epsilon=2.0, epochs=2, privacy_unit="user", users=users,
                      max_records_per_user=8, grad_sample_mode=mode, seed=0) as run:  # fmt: skip
        for _ in range(2):
            for xb, yb in run.data_loader:
                run.optimizer.zero_grad()
                if len(xb):
                    nn.functional.cross_entropy(run.model(xb.to(DEVICE)), yb.to(DEVICE)).backward()
                run.optimizer.step()
    assert run.steps == run.planned_steps and run.epsilon > 0
    assert all(p.device.type == torch.device(DEVICE).type for p in run.model.parameters())
    with torch.no_grad():
        accuracy = (run.model(torch.from_numpy(X).to(DEVICE)).argmax(1).cpu().numpy() == y).mean()
    assert accuracy > 0.7
