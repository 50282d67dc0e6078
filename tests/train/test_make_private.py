"""make_private: your own training loop with the trainer's engines, ledger and report
(real torch, real Opacus, a real SQLite ledger)."""

from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

import privdl  # noqa: E402
from privdl.budget.accounting import epsilon_of  # noqa: E402
from privdl.budget.ledger import BudgetLedger  # noqa: E402
from privdl.errors import BudgetExceededError, UsageError  # noqa: E402
from privdl.keys import Secret  # noqa: E402
from privdl.train.bookkeeping import BookKeeping  # noqa: E402
from privdl.train.private_loop import make_private  # noqa: E402


def data(n=300, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
    return X, y


def mlp(d=6, seed=0, inplace=False):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(inplace=inplace), nn.Linear(16, 2))


def ledger_at(tmp_path, epsilon=10.0, dataset="ds-loop"):
    ledger = BudgetLedger(tmp_path / "budget.db")
    ledger.set_budget(dataset, epsilon=epsilon, delta=1e-4)
    return ledger


def train(run, passes, stop_after=None, raise_after=None):
    for _ in range(passes):
        for xb, yb in run.data_loader:
            if raise_after is not None and run.steps == raise_after:
                raise RuntimeError("the user's loop failed")
            run.optimizer.zero_grad()
            nn.functional.cross_entropy(run.model(xb), yb).backward()
            run.optimizer.step()
            if stop_after is not None and run.steps == stop_after:
                return


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def test_loop_trains_charges_and_reports(tmp_path):
    X, y = data()
    ledger = ledger_at(tmp_path)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(TensorDataset(X, y), batch_size=50)
    with privdl.make_private(
        model, opt, loader, epsilon=2.0, epochs=3, ledger=ledger, dataset_id="ds-loop", seed=3
    ) as run:
        assert run.grad_sample_mode == "bk"
        # the loader's batch size is the expected Poisson batch size
        assert len(run.data_loader) == 6 and run.sample_rate == pytest.approx(1 / 6)
        assert run.planned_steps == 18
        sizes = []
        for _ in range(3):
            for xb, yb in run.data_loader:
                sizes.append(len(xb))
                run.optimizer.zero_grad()
                nn.functional.cross_entropy(run.model(xb), yb).backward()
                run.optimizer.step()
    assert run.steps == 18 and len(set(sizes)) > 1  # Poisson: the sizes vary
    assert abs(sum(sizes) / len(sizes) - 50) < 15
    # epsilon: the accountant's for the exact history, and what the ledger charged
    expected = epsilon_of([(run.noise_multiplier, 1 / 6, 18)], delta=run.delta, accountant="prv")
    assert run.epsilon == pytest.approx(expected) and run.epsilon <= 2.0 + 1e-6
    assert ledger.spent("ds-loop") == pytest.approx(run.epsilon, rel=1e-6)
    # the model learned, and after the block run.model is the plain module
    assert isinstance(run.model, nn.Sequential)
    acc = float((run.model(X).argmax(1) == y).float().mean())
    assert acc > 0.8
    report = run.report()
    assert report.epsilon == pytest.approx(run.epsilon)
    report.save(tmp_path / "privacy.html")
    html = (tmp_path / "privacy.html").read_text()
    assert "<html" in html.lower() and f"{run.epsilon:.2f}" in html
    assert run.run_facts().batch_size == 50 and run.run_facts().grad_sample_mode == "bk"
    # the run's manifest: in the report, with the trained weights' digests
    from privdl.manifest import RunManifest
    from privdl.train.provenance import tensor_digests

    assert RunManifest.load(tmp_path / "privacy.html") == run.manifest
    assert dict(run.manifest.model_state) == tensor_digests(run.model)
    assert run.manifest.data["training data (features)"]["rows"] == len(X)
    assert run.manifest.reproducibility["bitwise"] is True


def test_refused_before_any_step(tmp_path):
    X, y = data()
    ledger = ledger_at(tmp_path, epsilon=1.0)
    torch.manual_seed(0)  # a BatchNorm: the run works on a fixed copy, the refusal on none
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    before = params_of(model)
    log = privdl.AuditLog(tmp_path / "audit.jsonl", key=Secret.generate())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    run = make_private(
        model,
        opt,
        DataLoader(TensorDataset(X, y), batch_size=50),
        epsilon=2.0,
        epochs=2,
        ledger=ledger,
        dataset_id="ds-loop",
        audit_log=log,
    )
    with pytest.raises(BudgetExceededError), run:
        raise AssertionError("the block must not run")
    assert run.steps == 0 and ledger.spent("ds-loop") == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # the optimizer is left as it was: its own step, the model's parameters
    assert "step" not in vars(opt)
    assert [id(q) for q in opt.param_groups[0]["params"]] == [id(q) for q in model.parameters()]
    from privdl.audit import iter_entries

    outcomes = [e["outcome"] for e in iter_entries(tmp_path / "audit.jsonl") if e["event"] == "train"]
    assert outcomes == ["started", "refused"]


def test_early_stop_spends_less(tmp_path):
    X, y = data()
    ledger = ledger_at(tmp_path)
    model = mlp()
    loader = DataLoader(TensorDataset(X, y), batch_size=50)
    with make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.5), loader,
        epsilon=2.0, epochs=5, ledger=ledger, dataset_id="ds-loop",
    ) as run:
        train(run, passes=5, stop_after=7)
    assert run.steps == 7 and run.planned_steps == 30
    expected = epsilon_of([(run.noise_multiplier, run.sample_rate, 7)], delta=run.delta, accountant="prv")
    assert run.epsilon == pytest.approx(expected) and run.epsilon < 2.0
    assert ledger.spent("ds-loop") == pytest.approx(expected, rel=1e-6)


def test_exception_in_the_loop_settles_the_steps_taken(tmp_path):
    X, y = data()
    ledger = ledger_at(tmp_path)
    model = mlp()
    loader = DataLoader(TensorDataset(X, y), batch_size=50)
    with pytest.raises(RuntimeError, match="loop failed"), make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.5), loader,
        epsilon=2.0, epochs=3, ledger=ledger, dataset_id="ds-loop",
    ) as run:
        train(run, passes=3, raise_after=4)
    assert run.steps == 4
    expected = epsilon_of([(run.noise_multiplier, run.sample_rate, 4)], delta=run.delta, accountant="prv")
    assert ledger.spent("ds-loop") == pytest.approx(expected, rel=1e-6)


class FailingSGD(torch.optim.SGD):
    """Applies its update, then fails on its third step (a noisy update was released)."""

    calls = 0

    def step(self, closure=None):
        super().step(closure)
        FailingSGD.calls += 1
        if FailingSGD.calls == 3:
            raise RuntimeError("optimizer failed after its update")


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_a_step_that_raises_is_charged_too(tmp_path, mode):
    X, y = data()
    ledger = ledger_at(tmp_path)
    model = mlp()
    FailingSGD.calls = 0
    loader = DataLoader(TensorDataset(X, y), batch_size=50)
    with pytest.raises(RuntimeError, match="after its update"), make_private(
        model, FailingSGD(model.parameters(), lr=0.5), loader, epsilon=2.0, epochs=3,
        ledger=ledger, dataset_id="ds-loop", grad_sample_mode=mode,
    ) as run:
        train(run, passes=3)
    assert run.steps == 3  # two counted steps and the one that raised
    expected = epsilon_of([(run.noise_multiplier, run.sample_rate, 3)], delta=run.delta, accountant="prv")
    assert ledger.spent("ds-loop") == pytest.approx(expected, rel=1e-6)


def test_step_over_the_reservation_raises_before_changing_anything(tmp_path):
    X, y = data()
    ledger = ledger_at(tmp_path)
    model = mlp()
    loader = DataLoader(TensorDataset(X, y), batch_size=100)
    with pytest.raises(BudgetExceededError, match="step 4 would exceed"), make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.5), loader,
        epsilon=2.0, epochs=1, ledger=ledger, dataset_id="ds-loop",
    ) as run:
        train(run, passes=1)
        assert run.steps == 3
        xb, yb = next(iter(run.data_loader))
        run.optimizer.zero_grad()
        nn.functional.cross_entropy(run.model(xb), yb).backward()
        before = params_of(run.model)
        try:
            run.optimizer.step()
        finally:
            assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))
    assert run.steps == 3
    assert ledger.spent("ds-loop") == pytest.approx(run.epsilon, rel=1e-6)
    assert run.epsilon <= 2.0 + 1e-6


def test_one_step_per_batch(tmp_path):
    X, y = data()
    model = mlp()
    with make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.5), DataLoader(TensorDataset(X, y), batch_size=50),
        epsilon=2.0, epochs=1,
    ) as run:
        xb, yb = next(iter(run.data_loader))
        nn.functional.cross_entropy(run.model(xb), yb).backward()
        run.optimizer.step()
        with pytest.raises(UsageError, match="new batch"):
            run.optimizer.step()
    with pytest.raises(UsageError, match="not open"):
        run.optimizer.step()


def test_audit_entry_written(tmp_path):
    from privdl.audit import iter_entries

    X, y = data()
    log_path = tmp_path / "audit.jsonl"
    log = privdl.AuditLog(log_path, key=Secret.generate())
    model = mlp()
    with make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.5), DataLoader(TensorDataset(X, y), batch_size=50),
        epsilon=2.0, epochs=1, audit_log=log,
    ) as run:
        train(run, passes=1)
    entries = [e for e in iter_entries(log_path) if e["event"] == "train"]
    assert [e["outcome"] for e in entries] == ["started", "ok"]
    ok = entries[1]
    assert ok["started"] == entries[0]["seq"]
    assert ok["params"]["api"] == "make_private" and ok["params"]["steps"] == run.steps == 6
    assert ok["params"]["epsilon_spent"] == pytest.approx(run.epsilon)
    assert ok["params"]["grad_sample_mode"] == "bk" and ok["params"]["batch_size"] == 50
    assert len(ok["inputs"]) == 2 and all(len(i["sha256"]) == 64 for i in ok["inputs"])


def test_validator_fix_and_inplace_reported_with_opacus_hooks(tmp_path):
    X, y = data()
    torch.manual_seed(0)
    # an LSTM is not a book-keeping layer: Opacus' hooks train it; BatchNorm is replaced
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    with make_private(
        model, opt, DataLoader(TensorDataset(X, y), batch_size=50), epsilon=3.0, epochs=2,
        grad_sample_mode="hooks",
    ) as run:
        assert run.grad_sample_mode == "hooks"
        assert "1: BatchNorm1d -> GroupNorm" in run.replaced_modules
        assert "2: inplace=True -> inplace=False" in run.replaced_modules
        start = params_of(run.model)
        train(run, passes=2)
    # the user's optimizer now updates the fixed copy's parameters
    assert any(not torch.equal(a, b) for a, b in zip(start, run.model.parameters(), strict=True))
    assert run.report().to_dict()["training"]["replaced_modules"]


def test_reused_layer_goes_to_hooks_and_trains():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(6, 6)
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            return self.out(torch.tanh(self.inner(torch.tanh(self.inner(x)))))

    X, y = data()
    torch.manual_seed(0)
    model = Tied()
    with make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.5), DataLoader(TensorDataset(X, y), batch_size=50),
        epsilon=2.0, epochs=1,
    ) as run:
        assert run.grad_sample_mode == "hooks"  # the probe saw the reuse, as in the trainer
        train(run, passes=1)
    assert run.steps == 6


def test_bk_from_the_users_backward_equals_bk_from_per_sample_losses():
    X, y = data(n=40)
    m1 = mlp()
    m2 = copy.deepcopy(m1)
    o1 = torch.optim.SGD(m1.parameters(), lr=1.0)
    o2 = torch.optim.SGD(m2.parameters(), lr=1.0)
    kw = dict(noise_multiplier=0.0, max_grad_norm=0.05, expected_batch_size=40)
    own = BookKeeping(m1, o1, nn.CrossEntropyLoss(), **kw)
    loop = BookKeeping(m2, o2, None, **kw)
    loop.from_backward = True
    own.zero_grad()
    own.accumulate(own.per_sample_loss(own(X), y))
    own.step()
    loop.zero_grad()
    nn.functional.cross_entropy(loop(X), y).backward()  # the mean loss of a user's loop
    loop.accumulate_backward("mean")
    loop.step()
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # the clipping was active (C is small): one record moves the sum by at most C
    assert not torch.allclose(next(m1.parameters()), next(mlp().parameters()))


class Records(Dataset):
    """A map-style dataset of dicts, collated by the default collate_fn."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i]


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_empty_poisson_batches_are_steps_and_other_datasets_collate(mode):
    X, y = data(n=20)
    model = mlp()
    sizes = []
    with make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(Records(X, y), batch_size=1),
        epsilon=5.0, epochs=2, seed=0, grad_sample_mode=mode,
    ) as run:
        for _ in range(2):
            for xb, yb in run.data_loader:
                sizes.append(len(xb))
                run.optimizer.zero_grad()
                out = run.model(xb)
                assert out.shape == (len(xb), 2)
                if len(xb):  # an empty batch: no loss, the step is noise only
                    nn.functional.cross_entropy(out, yb).backward()
                run.optimizer.step()
    assert 0 in sizes and run.steps == 40
    assert all(math.isfinite(float(p.detach().sum())) for p in run.model.parameters())


def test_arguments_checked_before_anything(tmp_path):
    X, y = data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(TensorDataset(X, y), batch_size=50)
    with pytest.raises(UsageError, match="ghost"), make_private(
        model, opt, loader, epsilon=2.0, epochs=1, grad_sample_mode="ghost"
    ):
        pass
    with pytest.raises(UsageError, match="dataset_id"), make_private(
        model, opt, loader, epsilon=2.0, epochs=1, ledger=tmp_path / "b.db"
    ):
        pass
    # nothing is prepared or reserved before the block is entered
    assert make_private(model, opt, loader, epsilon=2.0, epochs=1).data_loader is None


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_the_optimizers_own_step_is_refused_inside_the_run(mode):
    X, y = data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with make_private(
        model, opt, DataLoader(TensorDataset(X, y), batch_size=50), epsilon=2.0, epochs=1,
        grad_sample_mode=mode,
    ) as run:
        xb, yb = next(iter(run.data_loader))
        run.optimizer.zero_grad()
        nn.functional.cross_entropy(run.model(xb), yb).backward()
        before = params_of(run.model)
        with pytest.raises(UsageError, match=r"run\.optimizer\.step"):
            opt.step()  # the exact gradients of backward(), unclipped and without noise
        assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))
        run.optimizer.step()  # the DP step still runs the optimizer's update
        assert run.steps == 1
        assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))
    opt.step()  # after the run it is the plain optimizer again
    assert "step" not in vars(opt)


def test_remaining_budget_and_secure_mode(tmp_path):
    X, y = data()
    ledger = ledger_at(tmp_path, epsilon=3.0)
    model = mlp()
    with make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.5), DataLoader(TensorDataset(X, y), batch_size=50),
        epsilon="remaining", epochs=1, ledger=ledger, dataset_id="ds-loop", secure_mode=True,
    ) as run:
        train(run, passes=1)
    assert run.steps == 6 and run.epsilon <= 3.0 + 1e-6 and run.epsilon > 2.5
    assert ledger.remaining("ds-loop") == pytest.approx(3.0 - run.epsilon, abs=1e-6)
    assert run.report().to_dict()["training"]["secure_mode"] is True
