"""User-level DP-SGD: a person with all their records is the clipped and accounted unit."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch import nn  # noqa: E402

from privdl import PrivateTrainer  # noqa: E402
from privdl.errors import InputError, UsageError  # noqa: E402
from privdl.train.bookkeeping import BookKeepingStep  # noqa: E402
from privdl.train.dp_step import StepSettings  # noqa: E402
from privdl.train.user_level import UserIndex, make_user_step  # noqa: E402
from tests.train.user_bound import check_one_user_bound, flat  # noqa: E402

C = 0.5


def _settings(criterion: nn.Module) -> StepSettings:
    # lr=1 SGD, no noise, divisor 1: the update is minus the summed clipped gradients
    return StepSettings(
        noise_multiplier=0.0,
        max_grad_norm=C,
        expected_batch_size=1,
        criterion=criterion,
        shape_for_loss=lambda out, y: (out, y),
        make_optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
    )


def _user_update(model: nn.Module, mode: str, X, y, index: UserIndex, users: list[int]) -> torch.Tensor:
    m = copy.deepcopy(model)
    before = flat(m)
    step = make_user_step(mode, m, _settings(nn.CrossEntropyLoss()))
    batch = index.gather(torch.tensor(users, dtype=torch.int64))
    step.step([batch] if users else [], lambda b: (X[b.records], y[b.records]))
    return before - flat(step.release())


def _data(kind: str, n_users: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 9, (n_users,), generator=g)
    counts[0] = 20  # one heavy user: more than the cap of 12
    owners = torch.repeat_interleave(torch.arange(n_users), counts)
    n = len(owners)
    if kind == "seq":
        X = torch.randint(0, 30, (n, 5), generator=g)
        model = nn.Sequential(nn.Embedding(30, 6), nn.LayerNorm(6), nn.Flatten(), nn.Linear(30, 3))
    elif kind == "conv":
        X = torch.randn(n, 2, 7, generator=g)
        model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(20, 3))
    else:
        X = torch.randn(n, 6, generator=g) * 3
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    y = torch.randint(0, 3, (n,), generator=g)
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=1.0)
    index = UserIndex.build(owners.numpy(), 12, generator=torch.Generator().manual_seed(1))
    return model, X, y, index


@pytest.mark.parametrize(("mode", "kind"), [("bk", "mlp"), ("bk", "seq"), ("hooks", "mlp"), ("hooks", "conv")])
def test_removing_one_user_moves_the_update_by_at_most_C(mode, kind):
    model, X, y, index = _data(kind)
    check_one_user_bound(lambda users: _user_update(model, mode, X, y, index, users), model, X, y, index, C)


def test_record_level_clipping_moves_it_by_more_than_C():
    """The same data clipped per record: removing the heavy user's records moves the
    update by more than C (what the user-level test above would catch)."""
    model, X, y, index = _data("mlp")
    rows = index.records[index.offsets[0] : index.offsets[1]]

    def update(idx):
        m = copy.deepcopy(model)
        before = flat(m)
        step = BookKeepingStep(m, _settings(nn.CrossEntropyLoss()))
        step.step([idx], lambda part: (X[part], y[part]))
        return before - flat(step.release())

    assert float(update(rows).norm()) > 2 * C


def test_user_index_caps_and_draws_a_seeded_subset():
    owners = np.array([0] * 50 + [1] * 3 + [2] * 7)
    a = UserIndex.build(owners, 5, generator=torch.Generator().manual_seed(3))
    b = UserIndex.build(owners, 5, generator=torch.Generator().manual_seed(3))
    c = UserIndex.build(owners, 5, generator=torch.Generator().manual_seed(4))
    assert a.n_users == 3 and a.kept == 5 + 3 + 5 and a.dropped == 60 - 13
    assert torch.equal(a.records, b.records)
    assert not torch.equal(a.records, c.records)  # a random subset, not the first rows
    for u in range(3):
        rows = a.records[a.offsets[u] : a.offsets[u + 1]].numpy()
        assert set(owners[rows]) == {u}
    secure = UserIndex.build(owners, 5, secure=True)
    assert secure.kept == 13


def _events(n_users=300, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 30, n_users)
    users = np.repeat(np.arange(n_users), counts)
    X = rng.normal(size=(len(users), 5)).astype("float32")
    y = (X[:, 0] + 0.5 * rng.normal(size=len(users)) > 0).astype("int64")
    return X, y, users


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_is_opacus_accountant_for_the_user_level_history(accountant):
    from opacus.accountants import PRVAccountant, RDPAccountant

    X, y, users = _events()
    t = PrivateTrainer(
        nn.Linear(5, 2),
        epsilon=2.0,
        delta=1e-4,
        privacy_unit="user",
        max_records_per_user=8,
        epochs=2,
        batch_size=50,
        accountant=accountant,
        seed=0,
        progress=False,
    )
    t.fit((X, y), users=users)
    assert t.n_users_ == 300 and t.privacy_unit == "user"
    per_epoch = math.ceil(300 / 50)
    assert t.sample_rate_ == pytest.approx(1 / per_epoch)  # q over users, not records
    assert t.steps_ == 2 * per_epoch
    acc = PRVAccountant() if accountant == "prv" else RDPAccountant()
    acc.history = [(t.noise_multiplier_, t.sample_rate_, t.steps_)]
    assert t.accountant_history_ == [(t.noise_multiplier_, t.sample_rate_, t.steps_)]
    assert t.epsilon == pytest.approx(acc.get_epsilon(delta=1e-4), rel=1e-2, abs=0.02)
    assert t.epsilon <= 2.0 + 0.02


def test_dataframe_fit_keeps_the_user_column_out_of_the_features():
    pd = pytest.importorskip("pandas")
    X, y, users = _events(80)
    frame = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "user_pseudonym": [f"u{u}" for u in users], "t": y})
    from privdl import TableEncoder

    enc = TableEncoder(domains="learned-unprotected")
    t = PrivateTrainer(
        nn.Linear(6, 2),  # a and b: three encoded features each
        epsilon=2.0,
        privacy_unit="user",
        max_records_per_user=4,
        epochs=1,
        batch_size=20,
        encoder=enc,
        seed=0,
        progress=False,
    )
    with pytest.warns(UserWarning):
        t.fit(frame, target="t", user_column="user_pseudonym")
    assert len(t.feature_names_) == 6
    assert "user_pseudonym" not in " ".join(t.feature_names_)
    assert t.n_users_ == 80


def test_refusals():
    X, y, users = _events(20)
    with pytest.raises(UsageError, match="max_records_per_user"):
        PrivateTrainer(nn.Linear(5, 2), privacy_unit="user").fit((X, y), users=users)
    with pytest.raises(UsageError, match="privacy_unit"):
        PrivateTrainer(nn.Linear(5, 2), progress=False).fit((X, y), users=users)
    with pytest.raises(UsageError, match="grad_sample_mode"):
        PrivateTrainer(
            nn.Linear(5, 2), privacy_unit="user", max_records_per_user=3, grad_sample_mode="ghost"
        ).fit((X, y), users=users)
    with pytest.raises(UsageError, match="user_column"):
        PrivateTrainer(nn.Linear(5, 2), privacy_unit="user", max_records_per_user=3).fit((X, y))
    bad = users.astype(float)
    bad[3] = np.nan
    with pytest.raises(InputError, match="without a user id"):
        PrivateTrainer(nn.Linear(5, 2), privacy_unit="user", max_records_per_user=3, progress=False).fit(
            (X, y), users=bad
        )
    conv = nn.Sequential(nn.Conv1d(1, 2, 2), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(UsageError, match="hooks"):
        PrivateTrainer(
            conv, privacy_unit="user", max_records_per_user=3, grad_sample_mode="bk", progress=False
        ).fit((X[:, None, :], y), users=users)


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_physical_chunks_train_the_same_model(mode):
    X, y, users = _events(120)

    def fit(chunk):
        torch.manual_seed(0)
        t = PrivateTrainer(
            nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)),
            epsilon=2.0,
            privacy_unit="user",
            max_records_per_user=10,
            epochs=1,
            batch_size=30,
            seed=3,
            grad_sample_mode=mode,
            max_physical_batch_size=chunk,
            progress=False,
        )
        return t.fit((X, y), users=users)

    a, b = fit(None), fit(25)  # chunks of at most 25 records, never splitting a user
    for p, q in zip(a.model_.parameters(), b.model_.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)
    assert a.grad_sample_mode_ == mode


def test_secure_mode():
    # checkpoints and resume (secure mode too): tests/train/test_user_checkpoint.py
    X, y, users = _events(60)
    t = PrivateTrainer(
        nn.Linear(5, 2), epsilon=2.0, privacy_unit="user", max_records_per_user=5, epochs=1,
        batch_size=20, secure_mode=True, progress=False,
    )
    t.fit((X, y), users=users)
    assert t.steps_ == 3 and t.secure_mode


def test_dataframe_dp_domains_are_refused_at_user_level():
    pd = pytest.importorskip("pandas")
    X, y, users = _events(40)
    frame = pd.DataFrame({"a": X[:, 0], "u": users, "t": y})
    t = PrivateTrainer(nn.Linear(3, 2), epsilon=2.0, privacy_unit="user", max_records_per_user=4, progress=False)
    with pytest.raises(UsageError, match="protects records, not users"):
        t.fit(frame, target="t", user_column="u")  # "a" has no public bounds
    assert t.steps_ == 0
