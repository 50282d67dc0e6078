"""make_private (your own loop) under torchrun: one DP run over several processes.

One launch of ``python -m torch.distributed.run --nproc_per_node 2 --standalone`` on
tests/train/dist_loop_worker.py (gloo, CPU) runs the unchanged Opacus-style loop at
record and at user level with book-keeping and Opacus' hooks, and four refusals. Checked
against one process replaying the union of the ranks' batches with the same seed (rank
0's noise stream is the one-process stream): per step the applied gradient (all-reduced
clipped sums, one noise draw, divided by the global ``n q``) equals the one-process one,
the epsilon, sigma, rate and steps are the one-process figures, both ranks end with the
same weights, the ledger holds one run charged once and the audit log one entry.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from privdl.budget.ledger import BudgetLedger  # noqa: E402
from privdl.errors import UsageError  # noqa: E402
from privdl.train.private_loop import make_private  # noqa: E402
from tests.train.dist_loop_worker import BATCH, replay  # noqa: E402
from tests.train.dist_worker import blobs  # noqa: E402
from tests.train.test_distributed import POSTGRES_URL, _postgres_driver  # noqa: E402
from tests.train.torchrun import ROOT, launch, rank_results  # noqa: E402

WORKER = Path(__file__).with_name("dist_loop_worker.py")
FITS = [("record", "bk"), ("record", "hooks"), ("user", "bk"), ("user", "hooks")]


def budget(ledger: BudgetLedger, dataset: str, unit: str, epsilon: float = 10.0) -> None:
    extra = {"privacy_unit": "user", "max_records_per_user": 4} if unit == "user" else {}
    ledger.set_budget(dataset, epsilon=epsilon, delta=1e-4, **extra)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One ``torchrun --nproc_per_node 2`` launch for every test of it."""
    out = tmp_path_factory.mktemp("torchrun-loop")
    path = out / "budget.db"
    ledger = BudgetLedger(path)
    runs = [{"name": f"{u}-{m}", "dataset": f"loop-{u}-{m}", "mode": m, "unit": u, "kind": "fit"} for u, m in FITS]
    runs += [
        {"name": "other-data", "dataset": "loop-other-data", "mode": "bk", "unit": "record", "kind": "other-data"},
        {"name": "other-users", "dataset": "loop-other-users", "mode": "bk", "unit": "user", "kind": "other-users"},
        {"name": "refused", "dataset": "loop-refused", "mode": "bk", "unit": "record", "kind": "refused"},
        {"name": "bad-audit", "dataset": "loop-bad-audit", "mode": "bk", "unit": "record", "kind": "bad-audit"},
        # last: DistributedDataParallel needs the process group a make_private above made
        {"name": "ddp", "dataset": "loop-ddp", "mode": "bk", "unit": "record", "kind": "ddp"},
    ]
    for run in runs:
        run["ledger"] = str(path)
        budget(ledger, run["dataset"], run["unit"], epsilon=1.0 if run["kind"] == "refused" else 10.0)
    pg_dataset, pg_error = f"loop-{uuid.uuid4().hex[:12]}", None
    if POSTGRES_URL and _postgres_driver():
        try:  # a PostgreSQL problem fails the PostgreSQL test only
            budget(BudgetLedger(POSTGRES_URL), pg_dataset, "record")
        except Exception as exc:
            pg_error = f"{type(exc).__name__}: {exc}"
        else:  # before the DDP run (which fails on every rank)
            runs.insert(-1, {"name": "postgres", "ledger": POSTGRES_URL, "dataset": pg_dataset, "mode": "hooks",
                             "unit": "record", "kind": "fit"})
    launch(WORKER, out, json.dumps(runs), cwd=out)
    ranks = rank_results(out)
    return {"out": out, "ledger": BudgetLedger(path), "ranks": ranks, "postgres": pg_dataset, "pg_error": pg_error}


@pytest.mark.parametrize(("unit", "mode"), FITS)
def test_two_processes_run_one_loop_as_one_process_would(launched, tmp_path, unit, mode):
    a, b = (r[f"{unit}-{mode}"] for r in launched["ranks"])
    assert a["world"] == b["world"] == a["processes"] == 2 and a["mode"] == b["mode"] == mode
    # one plan, rank 0's: every rank the same mechanism and epsilon
    for key in ("noise_multiplier", "sample_rate", "steps", "planned_steps", "per_epoch", "delta", "run_id",
                "epsilon", "accountant", "n_users", "records_dropped"):
        assert a[key] == b[key], key
    assert a["steps"] == a["planned_steps"] == 2 * a["per_epoch"]
    assert a["report_epsilon"] == b["report_epsilon"] == pytest.approx(a["epsilon"])
    # each rank's loader holds its shard: half the records, or its block of users
    if unit == "record":
        assert [a["shard"], b["shard"]] == [200, 200]
    else:
        assert a["shard"] + b["shard"] == 400 - a["records_dropped"]
    # the ranks started from different weights and end bit-identical
    assert a["weights"] == b["weights"]
    # one process, same seed, the union of the ranks' batches: the same plan and epsilon
    single_ledger = BudgetLedger(tmp_path / "single.db")
    budget(single_ledger, "single", unit)
    single, seen = replay(unit, mode, single_ledger, "single", [a, b])
    assert single.processes == 1 and single.steps == a["steps"]
    assert a["noise_multiplier"] == pytest.approx(single.noise_multiplier, rel=1e-12)
    assert a["sample_rate"] == single.sample_rate and a["per_epoch"] == len(single.data_loader)
    assert a["epsilon"] == pytest.approx(single.epsilon, rel=1e-9) and a["epsilon"] <= 2.0 + 1e-9
    if unit == "user":
        assert single.n_users == a["n_users"] and single.sample_rate == pytest.approx(1 / np.ceil(a["n_users"] / 10))
    # per step: the gradient applied on both ranks (the all-reduced clipped sums plus one
    # noise draw, divided by the global n q) is the one-process gradient of the union;
    # a second noise draw (rank 1's) or a division by a rank's own batch would be far off
    two, one = np.array(a["grads"]), np.array(seen["grads"])
    assert np.array_equal(two, np.array(b["grads"]))
    assert two.shape == one.shape and np.abs(two - one).max() < 1e-6
    std = a["noise_multiplier"] * 1.0 / (BATCH[unit] if unit == "record" else a["sample_rate"] * a["n_users"])
    assert np.std(two - one) < 1e-3 * std  # (the noise alone moves a coordinate by ~std)
    final = torch.cat([p.detach().reshape(-1) for p in single.model.parameters()]).numpy()
    assert np.abs(np.array(a["final"]) - final).max() < 1e-6
    # the batches drawn: at the global rate, every record (user) in one shard only
    assert all(not set(x) & set(y) for x, y in zip(a["records"], b["records"], strict=True))


@pytest.mark.parametrize(("unit", "mode"), FITS)
def test_one_ledger_run_charged_once_and_one_audit_entry(launched, unit, mode):
    from privdl.audit import iter_entries

    a, b = (r[f"{unit}-{mode}"] for r in launched["ranks"])
    assert [a["charged_here"], b["charged_here"]] == [True, False]  # rank 0 alone settles
    ledger = launched["ledger"]
    runs = ledger.runs(f"loop-{unit}-{mode}")
    assert len(runs) == 1 and runs[0].run_id == a["run_id"] and runs[0].status == "settled"
    assert runs[0].privacy_unit == unit
    assert [tuple(s) for s in runs[0].history] == [(a["noise_multiplier"], a["sample_rate"], a["steps"])]
    assert ledger.spent(f"loop-{unit}-{mode}") == pytest.approx(a["epsilon"], rel=1e-6)
    entries = [e for e in iter_entries(launched["out"] / f"{unit}-{mode}" / "audit.jsonl") if e.get("event") == "train"]
    assert [e["outcome"] for e in entries] == ["started", "ok"]  # one run, one entry
    params = entries[1]["params"]
    assert params["api"] == "make_private" and params["processes"] == 2 and params["run_id"] == a["run_id"]
    assert params["steps"] == a["steps"] and params["epsilon_spent"] == pytest.approx(a["epsilon"])


@pytest.mark.parametrize(
    ("kind", "error", "words"),
    [
        ("other-data", "InputError", "differs between the ranks"),
        ("other-users", "InputError", "group the records differently"),
        ("refused", "BudgetExceededError", ""),
        ("bad-audit", "TamperDetectedError", "not a JSON audit entry"),
        ("ddp", "UsageError", "make_private does not train a DistributedDataParallel model"),
    ],
)
def test_a_refusal_is_raised_on_every_rank_and_nothing_is_charged(launched, kind, error, words):
    seen = [r[kind] for r in launched["ranks"]]
    assert [s["error"] for s in seen] == [error, error]  # on every rank: no rank hangs
    assert seen[0]["message"] == seen[1]["message"] and words in seen[0]["message"]
    assert "person-" not in seen[0]["message"]  # no user id
    assert launched["ledger"].runs(f"loop-{kind}") == []


@pytest.mark.postgres
def test_a_postgres_ledger_is_charged_once(launched):
    if not POSTGRES_URL:
        pytest.skip("PRIVDL_TEST_POSTGRES_URL is not set")
    if not _postgres_driver():
        pytest.skip("privdl[postgres] is not installed")
    if launched["pg_error"]:
        pytest.fail(f"the PostgreSQL ledger could not be set up: {launched['pg_error']}")
    a, b = (r["postgres"] for r in launched["ranks"])
    assert a["weights"] == b["weights"] and a["epsilon"] == b["epsilon"] <= 2.0 + 1e-9
    assert [a["charged_here"], b["charged_here"]] == [True, False]
    ledger = BudgetLedger(POSTGRES_URL)
    runs = ledger.runs(launched["postgres"])
    assert len(runs) == 1 and runs[0].run_id == a["run_id"] and runs[0].status == "settled"
    assert ledger.spent(launched["postgres"]) == pytest.approx(a["epsilon"], rel=1e-6)


# -- in one process ----------------------------------------------------------------------
def test_no_two_seeded_streams_of_a_run_coincide():
    from privdl.train import distributed

    # offsets 0 (sampler), 1 (noise), 2 (kept records, drawn on rank 0): rank 1's sampler
    # must not replay rank 0's kept-record draw, in any epoch
    for epoch in (0, 1, 5):
        seeds = [
            distributed.stream_seed(distributed.Group(rank=r, world_size=8), 11, o, epoch)
            for r in range(8)
            for o in range(3)
        ]
        assert len(set(seeds)) == len(seeds)
    # rank 0 keeps the one-process streams
    assert distributed.stream_seed(distributed.Group(0, 2), 11, 2) == distributed.stream_seed(None, 11, 2)


def _loop(run):
    for _ in range(2):
        for xb, yb in run.data_loader:
            run.optimizer.zero_grad()
            nn.functional.cross_entropy(run.model(xb), yb).backward()
            run.optimizer.step()


@pytest.mark.parametrize("unit", ["record", "user"])
def test_a_one_process_group_runs_the_loop_exactly_like_no_group(tmp_path, unit):
    import torch.distributed as dist

    from tests.train.dist_user_worker import user_ids

    X, y = (torch.from_numpy(a) for a in blobs())
    extra = {"privacy_unit": "user", "users": user_ids(), "max_records_per_user": 4} if unit == "user" else {}

    def run_once():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        data = DataLoader(TensorDataset(X, y), batch_size=BATCH[unit])
        with make_private(model, opt, data, epsilon=2.0, epochs=2, seed=3, **extra) as run:
            _loop(run)
        return run

    alone = run_once()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        grouped = run_once()
        assert grouped._group is not None and grouped.processes == 1
        ddp = nn.parallel.DistributedDataParallel(nn.Linear(6, 2))
        with pytest.raises(UsageError, match=r"make_private does not train a DistributedDataParallel"):
            make_private(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1), DataLoader(TensorDataset(X, y), batch_size=50),
                         epsilon=1.0, epochs=1).__enter__()
    finally:
        dist.destroy_process_group()
    # the distributed path with one rank is the one-process run: samples, noise, kept records
    for p, q in zip(alone.model.parameters(), grouped.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert grouped.epsilon == alone.epsilon and grouped.steps == alone.steps


def test_world_size_without_the_rest_of_torchrun_is_refused_before_any_charge(monkeypatch, tmp_path):
    X, y = (torch.from_numpy(a) for a in blobs(n=200))
    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget("ds", epsilon=5.0, delta=1e-4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = nn.Linear(6, 2)
    run = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(TensorDataset(X, y), batch_size=50),
                       epsilon=1.0, epochs=1, ledger=ledger, dataset_id="ds")
    with pytest.raises(UsageError, match="WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT"), run:
        pass
    assert ledger.runs("ds") == [] and run.steps == 0


@pytest.mark.slow
def test_the_torchrun_loop_example_trains_one_run_on_two_processes(tmp_path):
    import secrets

    done = launch(
        ROOT / "examples" / "train_torchrun_loop.py", "--out", tmp_path / "run", cwd=tmp_path,
        env={"PRIVDL_AUDIT_KEY": "hex:" + secrets.token_hex(32)},
    )  # fmt: skip
    assert "2 process(es), record level: epsilon" in done.stdout
    assert "rank 0: 10000 records in its shard, 120 steps" in done.stdout
    assert "rank 1: 10000 records in its shard, 120 steps" in done.stdout
    ledger = BudgetLedger(tmp_path / "run" / "budget.db")
    runs = ledger.runs("torchrun-loop")
    assert len(runs) == 1 and runs[0].status == "settled" and 0 < ledger.spent("torchrun-loop") <= 2.0 + 1e-9
    from privdl.audit import iter_entries

    entries = [e for e in iter_entries(tmp_path / "run" / "audit.jsonl") if e.get("event") == "train"]
    assert [e["outcome"] for e in entries] == ["started", "ok"]
