"""make_private at user level: your own loop, each person with all their records the
sampled, clipped and accounted unit (real torch, real Opacus, a real SQLite ledger)."""

from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

import privdl  # noqa: E402
from privdl.budget.ledger import BudgetLedger  # noqa: E402
from privdl.errors import InputError, PolicyError, UsageError  # noqa: E402
from privdl.keys import Secret  # noqa: E402
from privdl.train.dp_step import StepSettings  # noqa: E402
from privdl.train.private_loop import make_private  # noqa: E402
from privdl.train.user_level import OpacusUserStep, UserBookKeeping, UserIndex  # noqa: E402
from tests.train.user_bound import check_one_user_bound, flat  # noqa: E402

C = 0.5


# ---------------------------------------------------------------------------- data
def events(n_users=60, seed=0, d=5):
    """Users with 1-19 records each (one heavy user with 40), a learnable target."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 20, (n_users,), generator=g)
    counts[0] = 40
    owners = torch.repeat_interleave(torch.arange(n_users), counts)
    X = torch.randn(len(owners), d, generator=g)
    y = (X[:, 0] + 0.3 * torch.randn(len(owners), generator=g) > 0).long()
    return X, y, owners


def mlp(d=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 2))


def loop(run, passes):
    for _ in range(passes):
        for xb, yb in run.data_loader:
            run.optimizer.zero_grad()
            if len(xb):  # an empty sample of users: the step is noise only
                F.cross_entropy(run.model(xb), yb).backward()
            run.optimizer.step()


def user_run(X, y, owners, *, m=6, batch_size=10, **kw):
    model = kw.pop("model", None) or mlp(X.shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=kw.pop("lr", 0.5))
    return make_private(
        model, opt, DataLoader(TensorDataset(X, y), batch_size=batch_size),
        epsilon=kw.pop("epsilon", 2.0), epochs=kw.pop("epochs", 2),
        privacy_unit="user", users=owners, max_records_per_user=m, **kw,
    )


# ------------------------------------------------------- (1) the per-user bound, per step
def _settings():
    # lr=1 SGD, no noise, divisor 1: the update is minus the summed clipped gradients
    return StepSettings(
        noise_multiplier=0.0,
        max_grad_norm=C,
        expected_batch_size=1,
        criterion=None,  # the loop computes its own loss
        shape_for_loss=lambda out, y: (out, y),
        make_optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
    )


def _loop_update(model, mode, X, y, index, users):
    """One step of the loop's engine: the caller's backward of the batch's mean loss."""
    m = copy.deepcopy(model)
    before = flat(m)
    batch = index.gather(torch.tensor(users, dtype=torch.int64))
    rows = batch.records
    if mode == "bk":
        engine = UserBookKeeping(
            m, torch.optim.SGD(m.parameters(), lr=1.0), None,
            noise_multiplier=0.0, max_grad_norm=C, expected_batch_size=1,
        )
        engine.from_backward = True
        engine.zero_grad()
        if users:
            F.cross_entropy(engine(X[rows]), y[rows]).backward()
        engine.accumulate_backward_users(batch)
        engine.step()
        return before - flat(engine.to_standard_module())
    step = OpacusUserStep(mode, m, _settings())
    if users:
        F.cross_entropy(step.module(X[rows]), y[rows]).backward()
    step.step_from_backward(batch)
    return before - flat(step.release())


def _fixture(kind):
    X, y, owners = events(n_users=12)
    if kind == "seq":
        g = torch.Generator().manual_seed(5)
        X = torch.randint(0, 30, (len(owners), 4), generator=g)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(30, 6), nn.LayerNorm(6), nn.Flatten(), nn.Linear(24, 2))
    elif kind == "conv":
        X = X[:, None, :]
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv1d(1, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    else:
        X = X * 3
        model = mlp()
    for p in model.parameters():
        nn.init.normal_(p, std=1.0)  # large gradients: every user is clipped
    index = UserIndex.build(owners.numpy(), 12, generator=torch.Generator().manual_seed(1))
    return model, X, y, index


@pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")
@pytest.mark.parametrize(
    ("mode", "kind"),
    [("bk", "mlp"), ("bk", "seq"), ("hooks", "mlp"), ("hooks", "conv"), ("functorch", "mlp")],
)
def test_removing_one_user_moves_the_loops_update_by_at_most_C(mode, kind):
    model, X, y, index = _fixture(kind)
    # the loop's mean-loss backward gives exactly the per-user brute force, and the heavy
    # user (12 kept records) is clipped to C as one unit
    check_one_user_bound(lambda users: _loop_update(model, mode, X, y, index, users), model, X, y, index, C)
    assert float(_loop_update(model, mode, X, y, index, []).norm()) == 0.0


# ---------------------------------------------- the loader: users sampled, records capped
def test_batches_are_the_kept_records_of_sampled_users():
    X, y, owners = events()
    rows_per_batch, users_per_batch = [], []
    with user_run(X, y, owners, m=6, batch_size=10, seed=2, epochs=1) as run:
        assert run.privacy_unit == "user" and run.n_users == 60
        assert run.records_dropped == sum(max(0, int(c) - 6) for c in torch.bincount(owners))
        assert len(run.data_loader) == math.ceil(60 / 10)
        seen: dict[int, set[int]] = {}
        for xb, yb in run.data_loader:
            batch = run.last_users
            assert torch.equal(xb, X[batch.records]) and torch.equal(yb, y[batch.records])
            who = owners[batch.records]
            # the batch's records, user by user (batch.owner: whose), at most m of each
            assert len(who.unique_consecutive()) == len(who.unique()) == batch.n_users
            assert torch.equal(who, who.unique_consecutive()[batch.owner])
            if len(who):
                assert int(torch.bincount(who).max()) <= 6
            for u, r in zip(who.tolist(), batch.records.tolist(), strict=True):
                seen.setdefault(u, set()).add(r)
            rows_per_batch.append(len(xb))
            users_per_batch.append(batch.n_users)
            run.optimizer.zero_grad()
            if len(xb):
                F.cross_entropy(run.model(xb), yb).backward()
            run.optimizer.step()
    assert all(len(r) <= 6 for r in seen.values())  # the subset is drawn once, on entry
    assert len(set(users_per_batch)) > 1  # Poisson over users: the count varies
    assert max(rows_per_batch) > max(users_per_batch)  # users bring several records


def test_a_step_must_follow_the_batch_it_trains_on():
    """At user level the step groups the backward's rows by the last batch's owners: a
    batch drawn before the last one is refused, not clipped with the wrong owners."""
    X, y, owners = events()
    with user_run(X, y, owners, batch_size=30, epochs=1, seed=4) as run:
        first, _second = list(run.data_loader)  # both drawn before any step
        xb, yb = first
        run.optimizer.zero_grad()
        F.cross_entropy(run.model(xb), yb).backward()
        before = [p.detach().clone() for p in run.model.parameters()]
        with pytest.raises(UsageError, match="before drawing the next"):
            run.optimizer.step()
        assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))
        assert run.steps == 0


# ------------------------------------------------------------------ (2) the accountant
@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_is_opacus_accountant_for_the_user_level_history(accountant):
    from opacus.accountants import PRVAccountant, RDPAccountant

    X, y, owners = events()
    with user_run(X, y, owners, batch_size=15, epochs=2, accountant=accountant, delta=1e-4, seed=0) as run:
        loop(run, 2)
    per_epoch = math.ceil(60 / 15)  # over users, not records
    assert run.sample_rate == pytest.approx(1 / per_epoch)
    assert run.steps == run.planned_steps == 2 * per_epoch
    facts = run.run_facts()
    assert facts.accountant_history == ((run.noise_multiplier, run.sample_rate, run.steps),)
    acc = PRVAccountant() if accountant == "prv" else RDPAccountant()
    acc.history = [(run.noise_multiplier, run.sample_rate, run.steps)]
    assert run.epsilon == pytest.approx(acc.get_epsilon(delta=1e-4), rel=1e-2, abs=0.02)
    assert run.epsilon <= 2.0 + 0.02


# ------------------------------------------------------ (3) the loop equals the trainer
@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_the_loop_trains_the_trainers_model_for_the_same_seed(mode):
    X, y, owners = events()
    trainer = privdl.PrivateTrainer(
        mlp(), epsilon=2.0, epochs=2, batch_size=10, lr=0.5, optimizer=torch.optim.SGD, loss="cross_entropy",
        privacy_unit="user", max_records_per_user=6, seed=7, grad_sample_mode=mode, progress=False,
    ).fit((X, y), users=owners)
    with user_run(X, y, owners, m=6, batch_size=10, epochs=2, seed=7, grad_sample_mode=mode) as run:
        loop(run, 2)
    assert run.grad_sample_mode == trainer.grad_sample_mode_ == mode
    assert (run.noise_multiplier, run.sample_rate, run.steps) == pytest.approx(
        (trainer.noise_multiplier_, trainer.sample_rate_, trainer.steps_)
    )
    assert run.epsilon == pytest.approx(trainer.epsilon)
    for a, b in zip(run.model.parameters(), trainer.model_.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- (4) argument errors
class Pairs(Dataset):
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i]


def test_argument_errors_before_anything(tmp_path):
    X, y, owners = events(n_users=10)
    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget("ds-u", epsilon=5.0, delta=1e-5, privacy_unit="user")
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(TensorDataset(X, y), batch_size=5)
    kw = dict(epsilon=2.0, epochs=1, ledger=ledger, dataset_id="ds-u")

    def entered(**more):
        with make_private(model, opt, loader, **kw, **more):
            raise AssertionError("the block must not run")

    with pytest.raises(UsageError, match="max_records_per_user"):
        entered(privacy_unit="user", users=owners)
    with pytest.raises(UsageError, match="max_records_per_user must be a positive integer"):
        entered(privacy_unit="user", users=owners, max_records_per_user=0)
    with pytest.raises(UsageError, match=r"needs users="):
        entered(privacy_unit="user", max_records_per_user=3)
    with pytest.raises(UsageError, match='users= needs privacy_unit="user"'):
        entered(users=owners)
    with pytest.raises(UsageError, match="privacy_unit must be one of"):
        entered(privacy_unit="person", users=owners, max_records_per_user=3)
    with pytest.raises(UsageError, match="'ew'"):
        entered(privacy_unit="user", users=owners, max_records_per_user=3, grad_sample_mode="ew")
    with pytest.raises(UsageError, match="ghost"):
        entered(privacy_unit="user", users=owners, max_records_per_user=3, grad_sample_mode="ghost")
    with pytest.raises(InputError, match="has 5 entries for"):
        entered(privacy_unit="user", users=owners[:5], max_records_per_user=3)
    bad = owners.double()
    bad[4] = float("nan")
    with pytest.raises(InputError, match="1 record\\(s\\) without a user id"):
        entered(privacy_unit="user", users=bad, max_records_per_user=3)
    with pytest.raises(InputError, match="at least 2 users"):
        entered(privacy_unit="user", users=["same person"] * len(X), max_records_per_user=3)
    conv = nn.Sequential(nn.Conv1d(1, 2, 2), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(UsageError, match="hooks"), make_private(
        conv, torch.optim.SGD(conv.parameters(), lr=0.1), DataLoader(Pairs(X[:, None, :], y), batch_size=5),
        **kw, privacy_unit="user", users=owners, max_records_per_user=3, grad_sample_mode="bk",
    ):
        raise AssertionError("the block must not run")
    assert ledger.runs("ds-u") == []  # nothing was reserved
    assert "step" not in vars(opt)


def test_conv_model_trains_with_hooks_and_any_hashable_user_ids():
    X, y, owners = events(n_users=20)
    names = [f"pseudonym-{int(u)}" for u in owners]
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv1d(1, 2, 2), nn.Flatten(), nn.Linear(8, 2))
    with make_private(
        conv, torch.optim.SGD(conv.parameters(), lr=0.1), DataLoader(Pairs(X[:, None, :], y), batch_size=5),
        epsilon=3.0, epochs=1, privacy_unit="user", users=names, max_records_per_user=4, seed=0,
    ) as run:
        assert run.grad_sample_mode == "hooks"  # auto: Conv layers go to Opacus
        loop(run, 1)
    assert run.steps == 4 and run.n_users == 20
    assert all(math.isfinite(float(p.detach().sum())) for p in run.model.parameters())


# ------------------------------------------------------------------------- (5) ledger
def test_user_level_run_on_user_and_on_record_level_budgets(tmp_path):
    from privdl.budget.accounting import epsilon_of

    X, y, owners = events()
    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget("people", epsilon=5.0, delta=1e-5, privacy_unit="user")
    ledger.set_budget("rows", epsilon=10.0, delta=1e-5)
    with user_run(X, y, owners, ledger=ledger, dataset_id="people", seed=1) as run:
        loop(run, 2)
    rec = ledger.runs("people")[0]
    assert rec.privacy_unit == "user" and rec.charge is None  # composed by its history
    assert ledger.spent("people") == pytest.approx(run.epsilon, rel=1e-6)
    # on a record-level budget: removing one record changes one user's data, a group
    # of two users: (2 eps, 2 e^eps delta), written out here apart from the library.
    # At the budget's own delta the charge's 2 e^eps delta takes more than the budget
    # has: refused before any step, as for the trainer
    from privdl.errors import BudgetExceededError

    with pytest.raises(BudgetExceededError), user_run(X, y, owners, ledger=ledger, dataset_id="rows"):
        raise AssertionError("the block must not run")
    assert ledger.spent("rows") == 0.0
    with user_run(X, y, owners, ledger=ledger, dataset_id="rows", delta=1e-7, seed=1) as run2:
        loop(run2, 2)
    rec2 = next(r for r in ledger.runs("rows") if r.run_id == run2.run_id)
    eps = epsilon_of([(run2.noise_multiplier, run2.sample_rate, run2.steps)], delta=run2.delta, accountant="prv")
    assert rec2.privacy_unit == "user"
    assert rec2.charge.epsilon == pytest.approx(2 * eps, rel=1e-6)
    assert rec2.charge.delta == pytest.approx(2 * math.exp(eps) * run2.delta, rel=1e-6)
    assert ledger.spent("rows") == pytest.approx(2 * eps, rel=1e-6)
    # what is left of the user-level budget, in secure mode (ChaCha20 subset, sampling, noise)
    with user_run(X, y, owners, ledger=ledger, dataset_id="people", epsilon="remaining", epochs=1,
                  secure_mode=True) as run3:
        loop(run3, 1)
    assert run3.steps == math.ceil(60 / 10) and run3.epsilon > 0
    both = [(r.noise_multiplier, r.sample_rate, r.steps) for r in (run, run3)]
    assert ledger.spent("people") == pytest.approx(epsilon_of(both, delta=1e-5, accountant="prv"), rel=1e-6)
    assert 0 <= ledger.remaining("people") < 0.1  # the calibration took (almost) all of it
    assert run3.report().to_dict()["training"]["secure_mode"] is True
    # a record-level loop on the user-level budget, no declared maximum: refused first
    model = mlp()
    with pytest.raises(PolicyError, match="max_records_per_user"), make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.5), DataLoader(TensorDataset(X, y), batch_size=50),
        epsilon=1.0, epochs=1, ledger=ledger, dataset_id="people",
    ):
        raise AssertionError("the block must not run")
    assert len(ledger.runs("people")) == 2


# ----------------------------------------------------- (6) report, audit entry, manifest
def test_report_headline_audit_and_manifest_state_the_unit(tmp_path):
    from privdl.audit import iter_entries
    from privdl.budget import report_document

    X, y, owners = events()
    names = [f"secret-pseudonym-{int(u):03d}" for u in owners]
    log_path = tmp_path / "audit.jsonl"
    log = privdl.AuditLog(log_path, key=Secret.generate())
    ledger = BudgetLedger(tmp_path / "ids.db")
    ledger.set_budget("people-ids", epsilon=5.0, delta=1e-5, privacy_unit="user")
    with user_run(X, y, names, m=6, audit_log=log, seed=0, ledger=ledger, dataset_id="people-ids") as run:
        loop(run, 2)
    facts = run.run_facts()
    assert (facts.privacy_unit, facts.max_records_per_user, facts.n_users) == ("user", 6, 60)
    assert facts.n_samples == len(X)  # records; the accountant's unit count is n_users
    report = run.report()
    text = report_document.statement(report)
    assert text.startswith("This training run satisfies user-level (")
    assert "one person (user) with all their records (at most 6 used per person)" in text
    assert "Poisson sampling of users" in text
    assert report.privacy_unit.method == "user-level DP-SGD"
    entries = [e for e in iter_entries(log_path) if e["event"] == "train"]
    assert [e["outcome"] for e in entries] == ["started", "ok"]
    for e in entries:
        assert e["params"]["privacy_unit"] == "user"
        assert e["params"]["max_records_per_user"] == 6 and e["params"]["n_users"] == 60
    config = run.manifest.config
    assert (config["privacy_unit"], config["max_records_per_user"], config["n_users"]) == ("user", 6, 60)
    # never a user id: not in the log, the ledger, the report or the manifest
    ledger_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("ids.db*"))
    written = log_path.read_text() + report.to_json() + run.manifest.to_json()
    assert "secret-pseudonym" not in written and b"secret-pseudonym" not in ledger_bytes
    assert ledger.runs("people-ids")[0].privacy_unit == "user"


def test_record_level_stays_record_level():
    X, y, _ = events()
    model = mlp()
    with make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.5), DataLoader(TensorDataset(X, y), batch_size=50),
        epsilon=2.0, epochs=1, seed=0,
    ) as run:
        loop(run, 1)
        assert run.last_users is None
    assert run.steps == math.ceil(len(X) / 50) and run.sample_rate == pytest.approx(1 / run.steps)
    facts = run.run_facts()
    assert facts.privacy_unit == "record" and facts.n_users is None and facts.max_records_per_user is None
    from privdl.budget import report_document

    assert "record-level (" in report_document.statement(run.report())


def test_remaining_in_the_other_unit_plans_a_run_the_ledger_accepts(tmp_path):
    """epsilon="remaining" for a user-level loop on a record-level budget: the largest
    target whose group-of-two charge fits what is left (the trainer's planning), accepted
    by the reservation, leaving almost nothing."""
    X, y, owners = events()
    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget("rows", epsilon=4.0, delta=1e-5)
    with user_run(X, y, owners, ledger=ledger, dataset_id="rows", epsilon="remaining", epochs=1, seed=2) as run:
        loop(run, 1)
    rec = next(r for r in ledger.runs("rows") if r.run_id == run.run_id)
    assert rec.privacy_unit == "user" and rec.charge is not None
    assert rec.charge.epsilon == pytest.approx(2 * run.epsilon, rel=1e-6)  # the group of two
    assert 0 <= ledger.remaining("rows") < 0.05 * 4.0
    assert run.delta < 1e-5  # its charge 2 e^eps delta fits the budget's delta
