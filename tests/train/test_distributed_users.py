"""User-level DP-SGD under torchrun (issue 16 follow-up): users sharded, not records.

One launch of ``python -m torch.distributed.run --nproc_per_node 2 --standalone`` on
tests/train/dist_user_worker.py (gloo, CPU) trains the unchanged user-level script
(``fit((X, y), users=...)``) with each engine, a run killed and resumed, and two
refusals (a rank with other users), then measures the user-level step under the
process group. Checked: one ledger run at user level, the one-process epsilon for the
same users, batch and epochs, bit-identical weights, the all-reduced clipped sum equal
to the one-process sum over the same sampled users, the noise drawn once, and removing
one user moving the all-reduced update by at most C.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch import nn  # noqa: E402

from privdl.budget.ledger import BudgetLedger  # noqa: E402
from privdl.train import distributed  # noqa: E402
from privdl.train.trainer import PrivateTrainer  # noqa: E402
from tests.train.dist_user_worker import CLIP, user_ids  # noqa: E402
from tests.train.dist_worker import blobs  # noqa: E402
from tests.train.torchrun import launch, rank_results  # noqa: E402

WORKER = Path(__file__).with_name("dist_user_worker.py")


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One ``torchrun --nproc_per_node 2`` launch for every test of it."""
    out = tmp_path_factory.mktemp("torchrun-users")
    path = out / "budget.db"
    names = ("users-bk", "users-hooks", "users-other", "users-count", "users-resume")
    for name in names:
        BudgetLedger(path).set_budget(
            name, epsilon=10.0, delta=1e-4, privacy_unit="user", max_records_per_user=4
        )
    runs = [
        {"name": "bk", "dataset": "users-bk", "mode": "bk", "kind": "fit"},
        {"name": "hooks", "dataset": "users-hooks", "mode": "hooks", "kind": "fit"},
        {"name": "other-users", "dataset": "users-other", "mode": "bk", "kind": "other-users"},
        {"name": "other-count", "dataset": "users-count", "mode": "bk", "kind": "other-count"},
        {"name": "resume", "dataset": "users-resume", "mode": "bk", "kind": "resume"},
    ]
    for run in runs:
        run["ledger"] = str(path)
    launch(WORKER, out, json.dumps(runs), cwd=out)
    ranks = rank_results(out)
    return {"out": out, "ledger": BudgetLedger(path), "ranks": ranks}


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same user-level run on one process: the same users, batch, steps and target."""
    ledger = BudgetLedger(tmp_path_factory.mktemp("single") / "single.db")
    ledger.set_budget("single", epsilon=10.0, delta=1e-4, privacy_unit="user", max_records_per_user=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PrivateTrainer(
            mlp(),
            epsilon=2.0,
            epochs=2,
            batch_size=10,
            ledger=ledger,
            dataset_id="single",
            privacy_unit="user",
            max_records_per_user=4,
        ).fit(blobs(), users=user_ids())


@pytest.mark.parametrize("engine", ["bk", "hooks"])
def test_two_processes_train_one_user_level_run(launched, single, engine):
    a, b = (r[engine] for r in launched["ranks"])
    assert a["world"] == b["world"] == 2 and a["mode"] == b["mode"] == engine
    # one draw of every user's kept records (unseeded: rank 0's, sent to rank 1)
    for key in ("noise_multiplier", "sample_rate", "steps", "delta", "run_id", "epsilon", "n_users", "draw"):
        assert a[key] == b[key], key
    # the accountant's figures are those of one process over all U users: (sigma, q_user, steps)
    assert a["n_users"] == single.n_users_ and a["records_dropped"] == single.records_dropped_
    assert a["noise_multiplier"] == pytest.approx(single.noise_multiplier_, rel=1e-12)
    assert a["sample_rate"] == single.sample_rate_ and a["steps"] == single.steps_
    assert a["sample_rate"] == pytest.approx(1 / np.ceil(single.n_users_ / 10))
    assert a["epsilon"] == pytest.approx(single.epsilon, rel=1e-9) and a["epsilon"] <= 2.0 + 1e-9
    # the ranks started from different weights and end bit-identical
    assert a["weights"] == b["weights"]
    # the ledger: one reservation at user level, settled once, by rank 0
    assert [a["charged_here"], b["charged_here"]] == [True, False]
    ledger = launched["ledger"]
    runs = ledger.runs(f"users-{engine}")
    assert len(runs) == 1 and runs[0].run_id == a["run_id"] and runs[0].status == "settled"
    assert runs[0].privacy_unit == "user" and runs[0].charge is None  # composed in its own unit
    assert [tuple(s) for s in runs[0].history] == [(a["noise_multiplier"], a["sample_rate"], a["steps"])]
    assert ledger.spent(f"users-{engine}") == pytest.approx(a["epsilon"], rel=1e-6)
    # one audit entry; one model folder, at user level
    from privdl.audit import iter_entries

    folder = launched["out"] / engine
    entries = [e for e in iter_entries(folder / "audit.jsonl") if e.get("event") == "train"]
    assert [e["outcome"] for e in entries] == ["started", "ok"]
    assert entries[1]["params"]["processes"] == 2 and entries[1]["params"]["privacy_unit"] == "user"
    assert entries[1]["params"]["n_users"] == a["n_users"]
    loaded = PrivateTrainer.load(folder / "model")
    assert loaded.run_id_ == a["run_id"] and loaded.privacy_unit == "user" and loaded.steps_ == a["steps"]


@pytest.mark.parametrize("kind", ["other-users", "other-count"])
def test_ranks_with_other_users_refuse_before_any_charge(launched, kind):
    seen = [r[kind] for r in launched["ranks"]]
    assert [s["error"] for s in seen] == ["InputError", "InputError"]  # on every rank (no hang)
    assert seen[0]["message"] == seen[1]["message"]
    assert "users=" in seen[0]["message"] and "person-" not in seen[0]["message"]  # no user id
    dataset = {"other-users": "users-other", "other-count": "users-count"}[kind]
    assert launched["ledger"].runs(dataset) == []
    from privdl.audit import iter_entries

    entries = [e for e in iter_entries(launched["out"] / kind / "audit.jsonl") if e.get("event") == "train"]
    assert [e["outcome"] for e in entries] == ["started", "failed"]


def test_user_level_run_resumes_from_rank_0s_checkpoint(launched):
    a, b = (r["resume"] for r in launched["ranks"])
    assert a["crashed_steps"] == b["crashed_steps"] == a["per_epoch"]  # killed in epoch 2, on both
    assert a["run_id"] == b["run_id"] == a["first_run_id"]
    assert a["steps"] == b["steps"] == a["planned_steps"] == 3 * a["per_epoch"]
    assert a["privacy_unit"] == "user" and a["n_users"] == b["n_users"]
    assert a["weights"] == b["weights"] and a["epsilon"] == b["epsilon"] <= 2.0 + 1e-9
    runs = launched["ledger"].runs("users-resume")
    assert len(runs) == 1 and runs[0].status == "settled" and runs[0].privacy_unit == "user"
    assert launched["ledger"].spent("users-resume") == pytest.approx(a["epsilon"], rel=1e-6)


def test_user_level_steps_all_reduce_clipped_user_sums_and_add_the_noise_once(launched):
    m0, m1 = (r["mechanism"] for r in launched["ranks"])
    assert m0["block"] == [0, 7] and m1["block"] == [7, 14]  # contiguous blocks of users
    for mode in ("bk", "hooks", "bk-secure", "hooks-secure", "bk-chunks", "hooks-chunks"):
        a, b = m0[mode], m1[mode]
        # per step: the all-reduced clipped sum over the two blocks is the one-process
        # clipped sum over the same sampled users (noise off)
        assert a["sum_norm"] > 0.01
        assert a["sum_max_abs_diff"] < 1e-6 and b["sum_max_abs_diff"] < 1e-6
        # one noise draw (rank 0's), the same noisy update on both: std sigma C, not sqrt(2) sigma C
        assert a["noise_sha256"] == b["noise_sha256"]
        assert a["noise_std"] == pytest.approx(1.3 * CLIP, rel=0.01)
        # removing one user (9 records, 4 kept) moves the all-reduced update by at most C;
        # their gradient exceeds C, so it moves by C: clipped as one unit, not per record
        assert a["removed_user_change"] == b["removed_user_change"]
        assert 0.99 * CLIP < a["removed_user_change"] <= CLIP * (1 + 1e-5)


# -- in one process ----------------------------------------------------------------------
def test_user_blocks_partition_the_users_with_all_their_kept_records():
    from privdl.train.data import IndexedData, TensorData
    from privdl.train.user_level import UserIndex, users_of

    codes = users_of(None, user_ids(), None, 400, what="data")
    index = UserIndex.build(codes, 4, generator=torch.Generator().manual_seed(1))
    data = TensorData(torch.arange(400).reshape(400, 1), torch.arange(400))
    seen: list[int] = []
    for r in range(3):
        group = distributed.Group(rank=r, world_size=3)
        local_data, local = group.shard_users(data, index)
        start, stop = group.shard_range(index.n_users)
        assert local.n_users == stop - start
        # every user of the block with exactly their kept records of the whole index
        for u in range(local.n_users):
            mine = local_data.X[local.gather(torch.tensor([u])).records].reshape(-1)
            assert mine.tolist() == index.gather(torch.tensor([start + u])).records.tolist()
        seen += local_data.X.reshape(-1).tolist()
        # a dataset read record by record: a Subset of the block's records only
        lazy, lazy_index = group.shard_users(IndexedData(list(range(400)), list), index)
        assert list(lazy.dataset) == local_data.X.reshape(-1).tolist()
        assert torch.equal(lazy_index.offsets, local.offsets)
    assert sorted(seen) == sorted(index.records.tolist())  # every kept record in one block
    with pytest.raises(Exception, match="fewer than the 3 processes"):
        few = UserIndex.build(np.array([0, 0, 1]), 4)
        distributed.Group(rank=0, world_size=3).shard_users(TensorData(torch.zeros(3, 1), None), few)


def test_a_one_process_group_trains_users_exactly_like_no_group(tmp_path):
    import torch.distributed as dist

    X, y = blobs()
    kw = dict(epsilon=2.0, epochs=1, batch_size=10, seed=3, privacy_unit="user", max_records_per_user=4)
    alone = PrivateTrainer(mlp(), **kw).fit((X, y), users=user_ids())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        grouped = PrivateTrainer(mlp(), **kw)
        grouped.fit((X, y), users=user_ids())
        assert grouped._group is not None and grouped._group.world_size == 1
    finally:
        dist.destroy_process_group()
    # the distributed path with one rank: the same draw of kept records, samples and noise
    for p, q in zip(alone.model_.parameters(), grouped.model_.parameters(), strict=True):
        assert torch.equal(p, q)
    assert grouped.n_users_ == alone.n_users_ and grouped.epsilon == alone.epsilon
