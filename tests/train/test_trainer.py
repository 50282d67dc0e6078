"""PrivateTrainer: training, accounting, ledger and audit integration."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
opacus_acc = pytest.importorskip("opacus.accountants")

from torch import nn  # noqa: E402

from privdl.errors import BudgetExceededError, SecurityError, UsageError  # noqa: E402
from privdl.keys import Secret  # noqa: E402
from privdl.train.bookkeeping import forward_probe  # noqa: E402
from privdl.train.dp_step import DPStep, StepSettings, choose_mode, make_dp_step  # noqa: E402
from privdl.train.trainer import PrivateTrainer  # noqa: E402
from tests.train.crash import CrashingLoss  # noqa: E402


def blobs(n=600, d=6, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.5, size=(classes, d))
    y = rng.integers(0, classes, size=n)
    X = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    return X, y


def mlp(d=6, out=2, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, out))


def opacus_eps(history, delta, accountant):
    acc = opacus_acc.create_accountant(mechanism=accountant)
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return acc.get_epsilon(delta=delta)


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_fit_learns_and_epsilon_equals_opacus_recomputation(accountant):
    X, y = blobs()
    tr = PrivateTrainer(mlp(), epsilon=4.0, epochs=4, batch_size=64, seed=0, accountant=accountant)
    tr.fit((X, y), val=(X, y))
    assert tr.score(X, y) > 0.8
    assert tr.epsilon <= 4.0
    assert tr.accountant_history_ == [(tr.noise_multiplier_, tr.sample_rate_, tr.steps_)]
    assert tr.steps_ == 4 * 10  # ceil(600 / 64) steps per epoch
    indep = opacus_eps(tr.accountant_history_, tr.delta_, accountant)
    assert tr.epsilon == pytest.approx(indep, rel=0.01)
    # the per-epoch record is the accountant's too
    assert [r["epoch"] for r in tr.history_] == [1, 2, 3, 4]
    assert tr.history_[-1]["epsilon"] == pytest.approx(tr.epsilon)
    assert tr.history_[0]["epsilon"] < tr.history_[-1]["epsilon"]
    assert tr.history_[-1]["metric_name"] == "accuracy"


def test_a_second_fit_continues_and_composes_both_runs():
    X, y = blobs(n=300)
    tr = PrivateTrainer(mlp(), epsilon=1.0, epochs=2, batch_size=50, seed=0).fit((X, y))
    first = tr.epsilon
    model = tr.model_
    tr.fit((X, y))
    assert tr.model_ is model
    assert len(tr.accountant_history_) == 2 and tr.accountant_history_[0] == tr.accountant_history_[1]
    assert tr.epsilon > first
    assert tr.epsilon == pytest.approx(opacus_eps(tr.accountant_history_, tr.delta_, "prv"), rel=0.01)


def test_delta_default_and_limit():
    X, y = blobs(n=200)
    tr = PrivateTrainer(mlp(), epsilon=2.0, epochs=1, batch_size=50).fit((X, y))
    assert tr.delta_ == pytest.approx(1 / (10 * 200))
    with pytest.raises(UsageError, match="delta"):
        PrivateTrainer(mlp(), epsilon=2.0, delta=1 / 200, epochs=1).fit((X, y))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": -1.0},
        {"epsilon": "all"},
        {"epsilon": "remaining"},
        {"ledger": "x.db"},
        {"epochs": 0},
        {"batch_size": 0},
        {"optimizer": "lbfgs"},
        {"grad_sample_mode": "magic"},
        {"accountant": "gdp"},
    ],
)
def test_bad_configuration_is_refused_before_training(kwargs):
    X, y = blobs(n=100)
    with pytest.raises(UsageError):
        PrivateTrainer(mlp(), **kwargs).fit((X, y))


def test_model_is_required():
    with pytest.raises(UsageError):
        PrivateTrainer(None, epsilon=1.0).fit(blobs(n=50))


def test_batchnorm_is_replaced_and_reported():
    X, y = blobs()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    tr = PrivateTrainer(model, epsilon=4.0, epochs=2, batch_size=64, seed=0).fit((X, y))
    assert tr.replaced_modules_ == ["1: BatchNorm1d -> GroupNorm"]
    assert isinstance(tr.model_[1], nn.GroupNorm)
    assert tr.predict(X).shape == (600,)


def test_frozen_layers_stay_frozen():
    X, y = blobs()
    model = mlp()
    for p in model[0].parameters():
        p.requires_grad_(False)
    before = params_of(model)
    PrivateTrainer(model, epsilon=4.0, epochs=2, batch_size=64, seed=0).fit((X, y))
    after = params_of(model)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert not torch.equal(before[2], after[2])


def dp_step(mode, model, **overrides):
    """A DPStep over ``model`` as the trainer builds one (sigma 1, C 1)."""
    settings = StepSettings(
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=5,
        criterion=nn.CrossEntropyLoss(),
        shape_for_loss=lambda out, y: (out, y.long()),
        make_optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        **overrides,
    )
    return make_dp_step(mode, model, settings)


@pytest.mark.parametrize("mode", ["bk", "ghost", "hooks"])
def test_empty_poisson_batch_is_a_noise_only_step(mode):
    model = mlp()
    step = dp_step(mode, model)
    assert isinstance(step, DPStep) and step.mode == mode
    before = params_of(model)
    step.train()
    loss = step.step([], lambda part: (None, None))
    after = params_of(step.release())
    assert float(loss) == 0.0
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(torch.isfinite(a).all() for a in after)


def test_tiny_data_with_many_empty_batches_trains_and_accounts_every_step():
    X, y = blobs(n=20)
    tr = PrivateTrainer(mlp(), epsilon=8.0, delta=1e-3, epochs=3, batch_size=1, seed=1)
    tr.fit((X, y))
    assert tr.steps_ == 3 * 20
    assert tr.accountant_history_ == [(tr.noise_multiplier_, 1 / 20, 60)]


@pytest.mark.parametrize("mode", ["bk", "ghost", "hooks"])
def test_physical_batch_splitting_gives_the_same_update(mode):
    X, y = blobs(n=300)
    common = {"epsilon": 3.0, "epochs": 2, "batch_size": 100, "seed": 7, "optimizer": "sgd"}
    whole = PrivateTrainer(mlp(), grad_sample_mode=mode, **common).fit((X, y))
    split = PrivateTrainer(mlp(), grad_sample_mode=mode, max_physical_batch_size=16, **common).fit((X, y))
    for a, b in zip(params_of(whole.model_), params_of(split.model_), strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_auto_mode_picks_the_fastest_exact_engine():
    X, y = blobs(n=100)
    tr = PrivateTrainer(mlp(), epsilon=2.0, epochs=1, batch_size=50).fit((X, y))
    assert tr.grad_sample_mode_ == "bk"
    example = torch.tensor(X[:2])

    class Embedded(nn.Module):  # bk does not renormalize rows (max_norm); ghost does
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4, max_norm=1.0)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.emb(x.abs().long() % 10).mean(dim=1))

    emb = Embedded()
    assert choose_mode("auto", emb, example) == "ghost"
    normed = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    assert choose_mode("auto", normed, example) == "bk"
    rms = nn.Sequential(nn.Linear(6, 8), nn.RMSNorm(8), nn.Linear(8, 2))
    assert choose_mode("auto", rms, example) == "hooks"

    class Reused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 6)
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            return self.out(self.a(self.a(x)))

    reused = Reused()
    assert choose_mode("auto", reused, example) == "hooks"
    shared = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    shared[1].weight = shared[0].weight
    assert choose_mode("auto", shared, example) == "hooks"
    with pytest.raises(UsageError):
        PrivateTrainer(rms, epsilon=2.0, grad_sample_mode="bk").fit((X, y))
    # the reused layer trains with hooks, end to end
    tr2 = PrivateTrainer(Reused(), epsilon=2.0, epochs=1, batch_size=50).fit((X, y))
    assert tr2.grad_sample_mode_ == "hooks"


def test_multiclass_binary_and_regression_tasks():
    X, y = blobs(classes=3)
    tr = PrivateTrainer(mlp(out=3), epsilon=4.0, epochs=3, batch_size=64, seed=0).fit((X, y))
    proba = tr.predict_proba(X)
    assert tr.task_ == "multiclass" and proba.shape == (600, 3)
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    losses = tr.loss_per_sample(X, y)
    assert losses.shape == (600,) and (losses >= 0).all()

    Xb, yb = blobs()
    trb = PrivateTrainer(mlp(out=1), epsilon=4.0, epochs=3, batch_size=64, seed=0).fit((Xb, yb))
    assert trb.task_ == "binary" and set(np.unique(trb.predict(Xb))) <= {0, 1}
    assert trb.predict_proba(Xb).shape == (600, 2)

    rng = np.random.default_rng(0)
    Xr = rng.normal(size=(400, 3)).astype(np.float32)
    yr = (Xr @ np.array([0.5, -0.2, 0.1]) + 0.05 * rng.normal(size=400)).astype(np.float32)
    trr = PrivateTrainer(nn.Linear(3, 1), epsilon=4.0, epochs=5, batch_size=64, seed=0)
    trr.fit((Xr, yr))
    assert trr.task_ == "regression" and trr.predict(Xr).shape == (400,)
    with pytest.raises(UsageError):
        trr.predict_proba(Xr)


def test_seeded_runs_are_reproducible():
    X, y = blobs(n=200)
    a = PrivateTrainer(mlp(), epsilon=2.0, epochs=2, batch_size=32, seed=5).fit((X, y))
    b = PrivateTrainer(mlp(), epsilon=2.0, epochs=2, batch_size=32, seed=5).fit((X, y))
    for p, q in zip(params_of(a.model_), params_of(b.model_), strict=True):
        assert torch.equal(p, q)


def test_secure_mode_trains_and_refuses_a_seed():
    X, y = blobs(n=200)
    tr = PrivateTrainer(mlp(), epsilon=4.0, epochs=3, batch_size=32, secure_mode=True)
    tr.fit((X, y))
    assert tr.score(X, y) > 0.7
    with pytest.raises(SecurityError):
        PrivateTrainer(mlp(), epsilon=4.0, secure_mode=True, seed=1).fit((X, y))
    # Opacus' optimizers get the same CSPRNG noise
    ghost = PrivateTrainer(
        mlp(), epsilon=4.0, epochs=3, batch_size=32, secure_mode=True, grad_sample_mode="ghost"
    ).fit((X, y))
    assert ghost.grad_sample_mode_ == "ghost" and ghost.score(X, y) > 0.7
    secure = dp_step("ghost", mlp(), secure=True)
    assert type(secure.dp_optimizer).__name__.startswith("Secure")


def test_dataloader_and_generic_dataset_inputs():
    X, y = blobs(n=200)
    ds = torch.utils.data.TensorDataset(torch.tensor(X), torch.tensor(y))
    loader = torch.utils.data.DataLoader(ds, batch_size=32)
    tr = PrivateTrainer(mlp(), epsilon=4.0, epochs=2, batch_size=32, seed=0).fit(loader)
    assert tr.n_samples_ == 200

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 200

        def __getitem__(self, i):
            return torch.tensor(X[i]), int(y[i])

    tr2 = PrivateTrainer(mlp(), epsilon=4.0, epochs=2, batch_size=32, seed=0).fit(Plain())
    assert tr2.steps_ == 2 * 7
    assert tr2.predict(X).shape == (200,)


def test_dataframe_input_uses_the_table_encoder():
    pytest.importorskip("privdl.train.encoding")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, size=300),
            "plan": rng.choice(["basic", "plus", "pro"], size=300),
        }
    )
    frame["retained"] = np.where(frame["plan"] == "pro", "yes", "no")
    width = None
    from privdl.train.encoding import TableEncoder

    # a text label needs a public label set; the other domains are estimated with DP
    enc = TableEncoder(categories={"retained": ["no", "yes"]}).fit(frame, target="retained")
    width = len(enc.feature_names_)
    tr = PrivateTrainer(
        nn.Linear(width, 2), epsilon=4.0, epochs=4, batch_size=32, seed=0, lr=0.1, encoder=enc
    )
    tr.fit(frame, target="retained")
    assert tr.encoder_ is not None and len(tr.feature_names_) == width
    assert tr.predict(frame).shape == (300,)
    assert tr.score(frame, "retained") > 0.6
    assert tr.loss_per_sample(frame, "retained").shape == (300,)
    with pytest.raises(UsageError):
        PrivateTrainer(nn.Linear(width, 2), epsilon=1.0).fit(frame)


def test_ledger_reserves_before_the_first_step_and_refuses_overspending(tmp_path):
    from privdl.budget.ledger import BudgetLedger

    X, y = blobs(n=300)
    ledger = BudgetLedger(tmp_path / "budget.db")
    ledger.set_budget("ds", epsilon=2.0, delta=1e-5)
    tr = PrivateTrainer(mlp(), epsilon=1.5, epochs=2, batch_size=50, ledger=ledger, dataset_id="ds")
    tr.fit((X, y))
    assert tr.delta_ == 1e-5  # the ledger's delta
    assert ledger.spent("ds") == pytest.approx(tr.epsilon, rel=1e-6)
    assert ledger.spent("ds") == pytest.approx(opacus_eps(ledger.history("ds"), 1e-5, "prv"), rel=0.01)
    assert [r.status for r in ledger.runs("ds")] == ["settled"]

    model = mlp(seed=3)
    before = params_of(model)
    refused = PrivateTrainer(model, epsilon=1.5, epochs=2, ledger=ledger, dataset_id="ds")
    with pytest.raises(BudgetExceededError) as info:
        refused.fit((X, y))
    assert info.value.dataset_id == "ds" and info.value.remaining < 0.6
    assert refused.steps_ == 0
    assert all(torch.equal(a, b) for a, b in zip(before, params_of(model), strict=True))
    assert len(ledger.runs("ds")) == 1

    rest = PrivateTrainer(
        mlp(), epsilon="remaining", epochs=2, batch_size=50, ledger=ledger, dataset_id="ds"
    ).fit((X, y))
    assert rest.target_epsilon == "remaining"
    assert 1.95 < ledger.spent("ds") <= 2.0 * (1 + 1e-6)


def test_a_crashed_run_keeps_its_reservation(tmp_path):
    from privdl.budget.ledger import BudgetLedger

    X, y = blobs(n=300)
    ledger = BudgetLedger(tmp_path / "budget.db")
    ledger.set_budget("ds", epsilon=3.0, delta=1e-5)
    tr = PrivateTrainer(mlp(), epsilon=1.0, epochs=3, batch_size=50, ledger=ledger, dataset_id="ds")
    # the power goes off in the second epoch (6 steps per epoch)
    tr.loss = CrashingLoss(steps=6, error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        tr.fit((X, y))
    runs = ledger.runs("ds")
    assert [r.status for r in runs] == ["reserved"]
    # the whole planned run is counted, not the one epoch that ran
    assert ledger.spent("ds") == pytest.approx(
        opacus_eps([(tr.noise_multiplier_, tr.sample_rate_, tr.planned_steps_)], 1e-5, "prv"),
        rel=0.01,
    )


def test_audit_log_gets_one_entry_per_fit(tmp_path):
    audit = pytest.importorskip("privdl.audit")
    log_path = tmp_path / "audit.jsonl"
    log = audit.AuditLog(log_path, key=Secret.generate())
    X, y = blobs(n=200)
    PrivateTrainer(mlp(), epsilon=2.0, epochs=1, batch_size=50, audit_log=log).fit((X, y))
    with pytest.raises(UsageError):
        PrivateTrainer(mlp(), epsilon=2.0, delta=0.5, audit_log=log).fit((X, y))
    entries = [e for e in audit.iter_entries(log_path) if e.get("event") == "train"]
    # each fit: a "started" entry, then its final entry naming it
    assert [e["outcome"] for e in entries] == ["started", "ok", "started", "failed"]
    assert entries[1]["started"] == entries[0]["seq"] and entries[3]["started"] == entries[2]["seq"]
    ok, failed = entries[1], entries[3]
    assert ok["outcome"] == "ok" and ok["params"]["steps"] == 4
    assert len(ok["inputs"]) == 2 and all(len(i["sha256"]) == 64 for i in ok["inputs"])
    assert ok["params"]["epsilon"] == 2.0 and ok["params"]["epsilon_spent"] <= 2.0
    assert failed["outcome"] == "failed"


def test_unfitted_trainer_refuses_to_predict():
    with pytest.raises(UsageError):
        PrivateTrainer(mlp(), epsilon=1.0).predict(np.zeros((2, 6), np.float32))
    assert PrivateTrainer(mlp(), epsilon=1.0).epsilon == 0.0


def small_cnn(inplace=True):
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),  # Opacus' ModuleValidator makes it a GroupNorm
        nn.ReLU(inplace=inplace),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding="same"),
        nn.ReLU(inplace=inplace),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )


def test_a_cnn_with_batch_norm_and_in_place_relu_trains_with_one_backward():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    tr = PrivateTrainer(small_cnn(), epsilon=4.0, epochs=4, seed=0).fit((X[:1400], y[:1400]))
    assert tr.grad_sample_mode_ == "bk"
    assert any("BatchNorm2d -> GroupNorm" in r for r in tr.replaced_modules_)
    # in-place activations are switched off (same outputs) and said
    assert "2: inplace=True -> inplace=False" in tr.replaced_modules_
    assert not any(getattr(m, "inplace", False) for m in tr.model_.modules())
    assert tr.score(X[1400:], y[1400:]) > 0.75
    # Opacus' hooks mode (which raises on in-place outputs) trains the same model
    tr2 = PrivateTrainer(small_cnn(), epsilon=4.0, epochs=1, seed=0, grad_sample_mode="hooks")
    tr2.fit((X[:600], y[:600]))
    assert "5: inplace=True -> inplace=False" in tr2.replaced_modules_


class Relu(nn.Module):
    """Linear, ReLU, Linear with the ReLU in place (``relu_``) or not."""

    def __init__(self, in_place):
        super().__init__()
        self.in_place = in_place
        self.a = nn.Linear(6, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.a(x)
        return self.out(h.relu_() if self.in_place else h.relu())


def test_an_in_place_op_in_forward_trains_exactly_like_its_out_of_place_twin():
    X, y = blobs(n=200)
    common = {"epsilon": 2.0, "epochs": 2, "batch_size": 50, "seed": 3}
    results = []
    for in_place in (True, False):
        torch.manual_seed(0)
        tr = PrivateTrainer(Relu(in_place), **common).fit((X, y))
        assert tr.grad_sample_mode_ == "bk"
        # the DP step copies the layer output before relu_ modifies it
        assert forward_probe(tr.model_, torch.tensor(X[:2])).modified == ({"a"} if in_place else set())
        results.append(params_of(tr.model_))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_an_in_place_functional_op_opacus_cannot_train_is_a_clear_error():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 8)
            self.norm = nn.RMSNorm(8)  # not in bk: Opacus' hooks train this model
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            return self.out(self.norm(self.a(x).relu_()))

    X, y = blobs(n=100)
    with pytest.raises(UsageError, match="'a' is modified in place"):
        PrivateTrainer(Functional(), epsilon=2.0, epochs=1).fit((X, y))


def test_model_passed_in_is_not_deep_copied_unless_fixed():
    X, y = blobs(n=100)
    model = mlp()
    tr = PrivateTrainer(model, epsilon=2.0, epochs=1, batch_size=50).fit((X, y))
    assert tr.model_ is model
    assert copy.deepcopy(tr.model_) is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_device_trains_on_the_gpu():
    X, y = blobs(n=400)
    tr = PrivateTrainer(mlp(), epsilon=4.0, epochs=2, batch_size=64, seed=0).fit((X, y))
    assert tr.device_.startswith("cuda")
    assert next(tr.model_.parameters()).is_cuda
    assert tr.score(X, y) > 0.8
    rms = nn.Sequential(nn.Linear(6, 8), nn.RMSNorm(8), nn.Linear(8, 2))
    tr2 = PrivateTrainer(rms, epsilon=4.0, epochs=1, batch_size=64, secure_mode=True).fit((X, y))
    assert tr2.grad_sample_mode_ == "hooks" and next(tr2.model_.parameters()).is_cuda
    from sklearn.datasets import load_digits

    Xd, yd = load_digits(return_X_y=True)
    Xd = (Xd / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    tr3 = PrivateTrainer(small_cnn(), epsilon=4.0, epochs=4, seed=0).fit((Xd[:1400], yd[:1400]))
    assert tr3.grad_sample_mode_ == "bk" and next(tr3.model_.parameters()).is_cuda
    assert tr3.score(Xd[1400:], yd[1400:]) > 0.75


def test_progress_bar_shows_loss_metric_and_epsilon_per_epoch(capsys):
    X, y = blobs(n=300)
    tr = PrivateTrainer(mlp(), epsilon=2.0, epochs=2, batch_size=100, progress=True)
    tr.fit((X, y), val=(X[:50], y[:50]))
    err = capsys.readouterr().err
    for row in tr.history_:
        line = next(x for x in err.splitlines() if x.startswith(f"epoch {row['epoch']}/2"))
        assert "3/3" in line  # steps of the epoch
        assert f"val accuracy {row['metric']:.4f}" in line and f"epsilon {row['epsilon']:.3f}" in line
    PrivateTrainer(mlp(), epsilon=2.0, epochs=1, progress=False).fit((X, y))
    assert capsys.readouterr().err == ""


# -- issue 10.2: nothing DP does not cover in a model folder or a report --------------------
def _numbers(value):
    """Every number in parsed JSON."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def test_exact_training_loss_is_in_no_model_folder_checkpoint_or_report(tmp_path):
    import json

    X, y = blobs(n=300)
    X[0], y[0] = 40.0, 1 - y[0]  # one outlier record, far away and mislabelled
    ckpt = tmp_path / "ckpt"
    tr = PrivateTrainer(mlp(), epsilon=1.0, epochs=3, batch_size=50, seed=0, checkpoint_dir=ckpt)
    tr.fit((X, y), val=(X[150:] + 0.5, y[150:]))
    live = [row["loss"] for row in tr.history_]  # the live, exact figures (this process only)
    assert len(live) == 3 and all(v > 0 for v in live)
    folder = tr.save(tmp_path / "model")
    report = tr.report(baseline=0.9, audit_data=((X[:100], y[:100]), (X[200:], y[200:])))
    texts = {
        "report.json": report.save(tmp_path / "r.json").read_text(),
        "report.html": report.save(tmp_path / "r.html").read_text(),
        "report.md": report.save(tmp_path / "r.md").read_text(),
    }
    for where in (folder, ckpt):
        texts.update({f"{where.name}/{f.name}": f.read_text() for f in where.glob("*.json")})
    assert "model/meta.json" in texts and "ckpt/meta.json" in texts
    for name, text in texts.items():
        for loss in live:
            for shown in (repr(loss), f"{loss:.4g}", f"{loss:.4f}", f"{loss:.6g}"):
                assert shown not in text, (name, shown)
        if name.endswith(".json"):
            assert all(not math.isclose(v, x, rel_tol=1e-6) for v in _numbers(json.loads(text)) for x in live)
    for where in (folder, ckpt):
        meta = json.loads((where / "meta.json").read_text())
        released = [sorted(row) for row in meta["history"]]
        assert released == [["epoch", "epsilon", "metric", "metric_name", "steps"]] * 3
    assert all("loss" not in row for row in report.epochs)
    assert "mean_loss_members" not in report.membership_inference
    # a loaded model has no loss to show
    assert all("loss" not in row for row in PrivateTrainer.load(folder).history_)


def test_model_folder_states_its_coverage(tmp_path):
    import json

    X, y = blobs(n=200)
    tr = PrivateTrainer(mlp(), epsilon=2.0, epochs=1, batch_size=50, seed=0)
    tr.fit((X, y), val=(X[:40] + 1.0, y[:40]))
    meta = json.loads((tr.save(tmp_path / "m") / "meta.json").read_text())
    by_item = {c["item"]: c for c in meta["coverage"]}
    assert by_item["model weights (trainable parameters)"]["dp_protected"] is True
    n = by_item["number of training records (n)"]
    assert n["dp_protected"] is False and n["data_dependent"] is True
    val = by_item["validation metric per epoch"]
    assert val["dp_protected"] is False and val["data_dependent"] is True
    # loss= not given: the task was inferred from the targets
    assert by_item["task (binary, multiclass or regression)"]["data_dependent"] is True
    assert all("checkpoint" not in c["released_in"] for c in meta["coverage"])  # none written


def test_val_sharing_rows_with_the_training_data_warns_with_a_count_only():
    X, y = blobs(n=300)
    tr = PrivateTrainer(mlp(), epsilon=2.0, epochs=1, batch_size=100, seed=0)
    val_X = np.concatenate([X[:7], X[200:230] + 100.0])
    val_y = np.concatenate([y[:7], y[200:230]])
    with pytest.warns(UserWarning, match=r"val shares 7 row\(s\) with the training data") as caught:
        tr.fit((X[:200], y[:200]), val=(val_X, val_y))
    assert tr.val_overlap_ == 7
    text = " ".join(str(w.message) for w in caught)
    assert f"{X[0, 0]:.3f}" not in text and f"{X[0, 0]:.4g}" not in text  # no data values
    (shared,) = [w for w in tr.report().warnings if "shares rows with the training data" in w]
    assert not any(ch.isdigit() for ch in shared)  # a report gets no count computed from the data
    # same features with another label is not the same row; disjoint data: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tr2 = PrivateTrainer(mlp(), epsilon=2.0, epochs=1, batch_size=100, seed=0)
        tr2.fit((X[:200], y[:200]), val=(X[:5], 1 - y[:5]))
        assert tr2.val_overlap_ == 0
        assert not any("shares rows" in w for w in tr2.report().warnings)


def test_val_frames_are_compared_on_their_raw_rows_not_on_lookalike_features():
    """Two people who look alike after generalization are not a shared record: with
    DataFrames the raw rows (pseudonyms included) decide, not the encoded features."""
    from privdl.train.encoding import TableEncoder

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "user": [f"u{i:04d}" for i in range(400)],
            "band": rng.choice(["20-29", "30-39"], size=400),
            "retained": rng.integers(0, 2, size=400),
        }
    )
    enc = TableEncoder(features=["band"], categories={"band": ["20-29", "30-39"], "retained": [0, 1]})
    train, val = frame.iloc[:300], frame.iloc[300:]
    width = len(enc.fit(train, target="retained").feature_names_)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tr = PrivateTrainer(nn.Linear(width, 2), epsilon=2.0, epochs=1, batch_size=100, seed=0, encoder=enc)
        tr.fit(train, target="retained", val=val)
    assert tr.val_overlap_ == 0  # every encoded val row equals some training row, none is one
    leaky = pd.concat([val, train.iloc[:9]])
    tr = PrivateTrainer(nn.Linear(width, 2), epsilon=2.0, epochs=1, batch_size=100, seed=0, encoder=enc)
    with pytest.warns(UserWarning, match=r"val shares 9 row\(s\)"):
        tr.fit(train, target="retained", val=leaky)


def test_val_that_is_a_subset_of_the_same_dataset_is_detected():
    from torch.utils.data import Dataset, Subset

    X, y = blobs(n=200)

    class Records(Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return torch.from_numpy(X[i]), int(y[i])

    base = Records()
    tr = PrivateTrainer(mlp(), epsilon=2.0, epochs=1, batch_size=50, seed=0, grad_sample_mode="hooks")
    with pytest.warns(UserWarning, match=r"val shares 20 row\(s\)"):
        tr.fit(Subset(base, range(150)), val=Subset(base, range(130, 200)))


# -- issue 10.8's refusal of torch.distributed became issue 13's distributed training:
# see tests/train/test_distributed.py
