"""DP training under torchrun (issue 13 items 2-3): one DP run over several processes.

The launch tests run ``python -m torch.distributed.run --nproc_per_node 2 --standalone``
on tests/train/dist_worker.py (gloo, CPU): an unchanged ``PrivateTrainer(...).fit``
script. They check what the old behaviour (each rank a run of its own, or a DDP model
with ranks out of sync) gets wrong: the ledger holds one run, the audit log one entry,
the epsilon is the one-process epsilon for the same global batch and steps, and the
two ranks end with bit-identical weights although each started from its own.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch import nn  # noqa: E402

from privdl.budget.ledger import BudgetLedger  # noqa: E402
from privdl.errors import UsageError  # noqa: E402
from privdl.train import distributed  # noqa: E402
from privdl.train.trainer import PrivateTrainer  # noqa: E402
from tests.train.dist_worker import blobs  # noqa: E402
from tests.train.torchrun import launch, rank_results  # noqa: E402

WORKER = Path(__file__).with_name("dist_worker.py")
POSTGRES_URL = os.environ.get("PRIVDL_TEST_POSTGRES_URL", "")


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One ``torchrun --nproc_per_node 2`` launch for every test of it (each costs tens of
    seconds of imports on a small machine): a SQLite run (book-keeping), and a
    PostgreSQL run (Opacus hooks) when PRIVDL_TEST_POSTGRES_URL is set; both ranks name
    the same ledger."""
    out = tmp_path_factory.mktemp("torchrun")
    path = out / "budget.db"
    BudgetLedger(path).set_budget("dist", epsilon=10.0, delta=1e-4)
    BudgetLedger(path).set_budget("dist-table", epsilon=10.0, delta=1e-4)
    BudgetLedger(path).set_budget("dist-small", epsilon=1.0, delta=1e-4)
    BudgetLedger(path).set_budget("dist-resume", epsilon=10.0, delta=1e-4)
    runs = [
        # first: the trainer initializes the process group; the budget refuses the run
        {"name": "refused", "ledger": str(path), "dataset": "dist-small", "mode": "bk", "refused": True},
        {"name": "sqlite", "ledger": str(path), "dataset": "dist", "mode": "bk"},
        {"name": "table", "ledger": str(path), "dataset": "dist-table", "mode": "auto", "table": True},
        {"name": "resume", "ledger": str(path), "dataset": "dist-resume", "mode": "bk", "resume": True},
    ]
    pg_dataset, pg_error = f"dist-{uuid.uuid4().hex[:12]}", None
    if POSTGRES_URL and _postgres_driver():
        try:  # a PostgreSQL problem fails the PostgreSQL test only
            BudgetLedger(POSTGRES_URL).set_budget(pg_dataset, epsilon=10.0, delta=1e-4)
        except Exception as exc:
            pg_error = f"{type(exc).__name__}: {exc}"
        else:
            runs.append({"name": "postgres", "ledger": POSTGRES_URL, "dataset": pg_dataset, "mode": "hooks"})
    launch(WORKER, out, json.dumps(runs), cwd=out)
    ranks = rank_results(out)
    return {"out": out, "sqlite": path, "postgres": pg_dataset, "pg_error": pg_error, "ranks": ranks}


def _postgres_driver() -> bool:
    try:
        import psycopg  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError:
        return False
    return True


def one_process(tmp_path: Path, mode: str) -> PrivateTrainer:
    """The same run on one process: the same global batch, steps and epsilon target."""
    ledger = BudgetLedger(tmp_path / "single.db")
    ledger.set_budget("single", epsilon=10.0, delta=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PrivateTrainer(
            mlp(),
            epsilon=2.0,
            epochs=2,
            batch_size=50,
            ledger=ledger,
            dataset_id="single",
            grad_sample_mode=mode,
        ).fit(blobs())


def check_one_run(ranks: list[dict], ledger: BudgetLedger, dataset: str, single: PrivateTrainer) -> None:
    a, b = ranks
    assert a["world"] == b["world"] == 2
    # one DP run: every rank holds rank 0's plan, and its accountant figures are those
    # of one process with the same global batch and steps
    for key in ("noise_multiplier", "sample_rate", "steps", "delta", "run_id", "epsilon"):
        assert a[key] == b[key], key
    assert a["noise_multiplier"] == pytest.approx(single.noise_multiplier_, rel=1e-12)
    assert a["sample_rate"] == single.sample_rate_ and a["steps"] == single.steps_ == 16
    assert a["epsilon"] == pytest.approx(single.epsilon, rel=1e-9)
    assert a["epsilon"] <= 2.0 + 1e-9
    # the ranks started from different weights and end bit-identical
    assert a["weights"] == b["weights"]
    # one reservation, settled once, by rank 0
    assert [a["charged_here"], b["charged_here"]] == [True, False]
    runs = ledger.runs(dataset)
    assert len(runs) == 1 and runs[0].run_id == a["run_id"] and runs[0].status == "settled"
    assert [tuple(s) for s in runs[0].history] == [(a["noise_multiplier"], a["sample_rate"], a["steps"])]
    assert ledger.spent(dataset) == pytest.approx(a["epsilon"], rel=1e-6)


def check_evidence(folder: Path, ranks: list[dict]) -> None:
    from privdl.audit import iter_entries

    entries = [e for e in iter_entries(folder / "audit.jsonl") if e.get("event") == "train"]
    assert [e["outcome"] for e in entries] == ["started", "ok"]  # one fit, one entry
    assert entries[1]["params"]["processes"] == 2
    assert entries[1]["params"]["run_id"] == ranks[0]["run_id"]
    assert ranks[0]["saved"] == ranks[1]["saved"] == str(folder / "model")
    loaded = PrivateTrainer.load(folder / "model")
    assert loaded.run_id_ == ranks[0]["run_id"] and loaded.steps_ == ranks[0]["steps"]


def test_torchrun_two_processes_train_one_dp_run(launched, tmp_path):
    ranks = [r["sqlite"] for r in launched["ranks"]]
    check_one_run(ranks, BudgetLedger(launched["sqlite"]), "dist", one_process(tmp_path, "bk"))
    check_evidence(launched["out"] / "sqlite", ranks)


def test_torchrun_raises_a_refusal_on_every_rank_before_any_charge(launched):
    # epsilon 2 asked of a dataset with 1 left: rank 0's refusal reaches rank 1 (no hang)
    assert [r["refused"] for r in launched["ranks"]] == [{"error": "BudgetExceededError"}] * 2
    assert BudgetLedger(launched["sqlite"]).runs("dist-small") == []
    from privdl.audit import iter_entries

    entries = [
        e for e in iter_entries(launched["out"] / "refused" / "audit.jsonl") if e.get("event") == "train"
    ]
    assert [e["outcome"] for e in entries] == ["started", "refused"]


def test_torchrun_resumes_a_killed_run_from_rank_0s_checkpoint(launched):
    a, b = (r["resume"] for r in launched["ranks"])
    assert a["crashed_steps"] == b["crashed_steps"] == 8  # killed in epoch 2, on both ranks
    # every rank resumed the same run: its reservation, its steps, the same weights
    assert a["run_id"] == b["run_id"] == a["first_run_id"]
    assert a["steps"] == b["steps"] == a["planned_steps"] == 24
    assert a["weights"] == b["weights"] and a["epsilon"] == b["epsilon"] <= 2.0 + 1e-9
    runs = BudgetLedger(launched["sqlite"]).runs("dist-resume")
    assert len(runs) == 1 and runs[0].run_id == a["run_id"] and runs[0].status == "settled"
    assert BudgetLedger(launched["sqlite"]).spent("dist-resume") == pytest.approx(a["epsilon"], rel=1e-6)


def test_torchrun_fits_a_dataframe_encoder_once_on_rank_0(launched):
    a, b = (r["table"] for r in launched["ranks"])
    # one DP domain estimate (drawn and charged by rank 0), the same encoder on both ranks
    assert a["domain_run_id"] is not None and a["domain_run_id"] == b["domain_run_id"]
    assert a["encoded"] == b["encoded"]
    assert a["weights"] == b["weights"] and a["epsilon"] == b["epsilon"] <= 2.0 + 1e-9
    runs = BudgetLedger(launched["sqlite"]).runs("dist-table")
    assert sorted(r.run_id for r in runs) == sorted([a["domain_run_id"], a["run_id"]])
    assert all(r.status == "settled" for r in runs)


def test_torchrun_all_reduces_clipped_sums_and_adds_the_noise_once(launched):
    # each engine's step: the all-reduced clipped sum is the one-process clipped sum of
    # the union of the two ranks' batches, and the noise is drawn once: total std sigma C
    # (each rank adding its own N(0, sigma^2 C^2) would give sqrt(2) sigma C)
    # also with secure_mode noise (ChaCha20, rank 0) and with physical chunks (the
    # all-reduce once, after the last chunk)
    for mode in ("bk", "hooks", "ghost", "bk-secure", "hooks-secure", "bk-chunks", "hooks-chunks"):
        m0, m1 = (r["mechanism"][mode] for r in launched["ranks"])
        assert m0["sum_norm"] > 0.01
        assert m0["sum_max_abs_diff"] < 1e-6 and m1["sum_max_abs_diff"] < 1e-6
        assert m0["noise_sha256"] == m1["noise_sha256"]  # the same noisy update on both
        assert m0["noise_std"] == pytest.approx(1.3 * 0.5, rel=0.01)


@pytest.mark.postgres
def test_torchrun_charges_a_postgres_ledger_once(launched, tmp_path):
    if not POSTGRES_URL:
        pytest.skip("PRIVDL_TEST_POSTGRES_URL is not set")
    if not _postgres_driver():
        pytest.skip("privdl[postgres] is not installed")
    if launched["pg_error"]:
        pytest.fail(f"the PostgreSQL ledger could not be set up: {launched['pg_error']}")
    ranks = [r["postgres"] for r in launched["ranks"]]
    check_one_run(ranks, BudgetLedger(POSTGRES_URL), launched["postgres"], one_process(tmp_path, "hooks"))
    check_evidence(launched["out"] / "postgres", ranks)


# -- in one process ----------------------------------------------------------------------
def test_a_one_process_group_trains_exactly_like_no_group(tmp_path):
    import torch.distributed as dist

    X, y = blobs()
    ledger = BudgetLedger(tmp_path / "b.db")
    for name in ("alone", "group"):
        ledger.set_budget(name, epsilon=5.0, delta=1e-4)
    kw = dict(epsilon=2.0, epochs=1, batch_size=50, ledger=ledger, seed=3)
    alone = PrivateTrainer(mlp(), dataset_id="alone", **kw).fit((X, y))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        grouped = PrivateTrainer(mlp(), dataset_id="group", **kw)
        grouped.fit((X, y))
        assert grouped._group is not None and grouped._group.world_size == 1
        ddp = nn.parallel.DistributedDataParallel(mlp())
    finally:
        dist.destroy_process_group()
    # the distributed path with one rank is the one-process run, noise and samples included
    for p, q in zip(alone.model_.parameters(), grouped.model_.parameters(), strict=True):
        assert torch.equal(p, q)
    assert [len(ledger.runs(n)) for n in ("alone", "group")] == [1, 1]
    # a DDP-wrapped model averages unclipped gradients: refused, with or without a group
    with pytest.raises(UsageError, match=r"DistributedDataParallel.*plain module"):
        PrivateTrainer(ddp, epsilon=1.0, epochs=1).fit((X, y))


def test_world_size_without_the_rest_of_torchrun_is_refused(monkeypatch, tmp_path):
    X, y = blobs(n=200)
    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget("ds", epsilon=5.0, delta=1e-4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    tr = PrivateTrainer(mlp(), epsilon=1.0, epochs=1, ledger=ledger, dataset_id="ds")
    with pytest.raises(UsageError, match="WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT are not set"):
        tr.fit((X, y))
    assert ledger.runs("ds") == [] and tr.steps_ == 0


def test_tune_and_user_level_runs_go_to_the_rendezvous(monkeypatch, tmp_path):
    from privdl.train.tune import tune

    X, y = blobs(n=200)
    monkeypatch.setenv("WORLD_SIZE", "2")
    tr = PrivateTrainer(mlp(), epsilon=1.0, epochs=1, privacy_unit="user", max_records_per_user=2)
    # a user-level run goes on to the rendezvous (tests/train/test_distributed_users.py
    # trains one on 2 processes); here the rest of the torchrun environment is missing
    with pytest.raises(UsageError, match="WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT are not set"):
        tr.fit((X, y), users=np.arange(200) // 2)
    # so does a search (tests/train/test_tune_distributed.py runs them on 2 processes),
    # refused here before anything is charged
    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget("ds", epsilon=5.0, delta=1e-4)
    with pytest.raises(UsageError, match="WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT are not set"):
        tune(mlp, {"lr": [0.1, 0.2]}, (X, y), epsilon=1.0, ledger=ledger, dataset_id="ds")
    assert tr.steps_ == 0 and ledger.runs("ds") == []


@pytest.mark.parametrize(
    "env",
    [
        {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"},
        {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "2"},
        {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "NNODES": "2"},
    ],
)
def test_a_sqlite_ledger_across_machines_is_refused_before_any_step(monkeypatch, tmp_path, env):
    X, y = blobs(n=200)
    path = tmp_path / "b.db"
    BudgetLedger(path).set_budget("ds", epsilon=5.0, delta=1e-4)
    # a full torchrun environment whose rendezvous would never complete: the refusal
    # must come before the process group is initialized
    for k, v in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1",
        **env,
    }.items():
        monkeypatch.setenv(k, v)
    for ledger in (str(path), BudgetLedger(path)):
        tr = PrivateTrainer(mlp(), epsilon=1.0, epochs=1, ledger=ledger, dataset_id="ds")
        with pytest.raises(UsageError, match="SQLite file but this torchrun run spans several machines"):
            tr.fit((X, y))
        assert tr.steps_ == 0
    assert BudgetLedger(path).runs("ds") == []
    assert not torch.distributed.is_initialized()


def test_the_machine_count_comes_from_the_torchrun_environment():
    read = distributed.TorchrunEnv.read
    assert not read({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "1"}).several_machines
    assert read({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}).several_machines
    assert read({"WORLD_SIZE": "2", "NNODES": "2"}).several_machines
    # a postgresql:// ledger is shared by every machine: accepted
    several = read({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"})
    distributed.refuse_sqlite_across_machines("postgresql://u:p@db/privdl", several)
    distributed.refuse_sqlite_across_machines(None, several)
    with pytest.raises(UsageError, match="postgresql://"):
        distributed.refuse_sqlite_across_machines("budget.db", several)


def test_shards_partition_the_records_and_samplers_differ_per_rank():
    from privdl.train.data import TensorData

    data = TensorData(torch.arange(10).reshape(10, 1), torch.arange(10))
    shards = [distributed.Group(rank=r, world_size=3).shard(data) for r in range(3)]
    rows = torch.cat([s.X.reshape(-1) for s in shards])
    assert rows.tolist() == list(range(10))  # every record in exactly one shard
    # each rank draws from its own stream, with or without a seed (a script seeding
    # torch alike on every rank must not give the shards the same Poisson draws)
    for seed in (None, 5):
        draws = [
            torch.rand(8, generator=distributed.generator(distributed.Group(r, 2), seed, "cpu", 0))
            for r in range(2)
        ]
        assert not torch.equal(draws[0], draws[1])
    # rank 0 with a seed keeps the one-process stream
    one = torch.rand(8, generator=distributed.generator(None, 5, "cpu", 0))
    rank0 = torch.rand(8, generator=distributed.generator(distributed.Group(0, 2), 5, "cpu", 0))
    assert torch.equal(one, rank0)
    assert distributed.generator(None, None, "cpu", 0) is None
    with pytest.raises(Exception, match="fewer than the 3 processes"):
        distributed.Group(rank=0, world_size=3).shard(TensorData(torch.zeros(2, 1), None))


def test_the_ranks_compare_a_sample_of_their_records():
    from privdl.train.data import IndexedData, TensorData

    X, y = (torch.from_numpy(a) for a in blobs(n=5000))
    same = distributed.sample_digest(TensorData(X.clone(), y.clone()))
    assert same == distributed.sample_digest(TensorData(X, y))
    # a rank holding its own part of the same size (or other labels) is told apart
    other = TensorData(torch.from_numpy(blobs(n=5000, seed=1)[0]), y)
    assert distributed.sample_digest(other) != same
    assert distributed.sample_digest(TensorData(X, 1 - y)) != same
    assert distributed.sample_digest(IndexedData(list(range(5)), list)) is None
