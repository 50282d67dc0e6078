"""privdl.tune under torchrun: one search over several processes (issue 16 point 3).

One launch of ``python -m torch.distributed.run --nproc_per_node 2 --standalone`` on
tests/train/tune_worker.py (gloo, CPU) runs an unchanged ``privdl.tune`` script on both
ranks, for several searches. Before this, tune refused to run on several processes; a
search run by each rank on its own would draw its own K and candidates, charge the
ledger once per rank, and release a different model on each.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

import privdl  # noqa: E402
from privdl.budget.accounting.tuning import search_epsilon  # noqa: E402
from privdl.budget.ledger import BudgetLedger  # noqa: E402
from privdl.errors import BudgetExceededError, InputError, UsageError  # noqa: E402
from privdl.train.distributed import Group  # noqa: E402
from privdl.train.tune_ranks import argument_digests  # noqa: E402
from tests.train.test_tune import _independent_bound  # noqa: E402
from tests.train.torchrun import launch, rank_results  # noqa: E402
from tests.train.tune_worker import GRID, RECORD, blobs  # noqa: E402

WORKER = Path(__file__).with_name("tune_worker.py")
POSTGRES_URL = os.environ.get("PRIVDL_TEST_POSTGRES_URL", "")


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One 2-process launch for every test of this file (imports cost tens of seconds)."""
    out = tmp_path_factory.mktemp("tune-torchrun")
    path = out / "budget.db"
    for dataset, eps in (("tune-dist", 10.0), ("tune-small", 1.0), ("tune-refuse", 10.0)):
        BudgetLedger(path).set_budget(dataset, epsilon=eps, delta=1e-5)
    args = [out, path]
    pg_dataset = None
    if POSTGRES_URL and _postgres_driver():  # a PostgreSQL problem fails the PostgreSQL test only
        try:
            pg_dataset = f"tune-dist-{uuid.uuid4().hex[:12]}"
            BudgetLedger(POSTGRES_URL).set_budget(pg_dataset, epsilon=10.0, delta=1e-5)
        except Exception:
            pg_dataset = None
        else:
            args += [POSTGRES_URL, pg_dataset]
    launch(WORKER, *args, cwd=out, timeout=400)
    ranks = rank_results(out)
    return {"out": out, "ledger": BudgetLedger(path), "ranks": ranks, "postgres": pg_dataset}


def _postgres_driver() -> bool:
    try:
        import psycopg  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError:
        return False
    return True


def _histories(result: dict) -> list[list[tuple]]:
    return [[tuple(seg) for seg in c["history"]] for c in result["candidates"]]


def test_one_search_on_every_rank(launched):
    """(1) the same K, candidates and best on both ranks, bit-identical released weights."""
    for name in ("record", "user", "secure", "public"):
        a, b = (r[name] for r in launched["ranks"])
        assert "error" not in a and "error" not in b, (a, b)
        assert a["world"] == b["world"] == 2
        assert a["k"] == b["k"] >= 1, name  # these seeds draw at least one candidate
        for key in ("candidates", "best_params", "best_score", "epsilon", "delta", "run_id", "trainer_epsilon"):
            assert a[key] == b[key], (name, key)
        assert a["best_params"] in [c["params"] for c in a["candidates"]]
        # each rank built other initial weights: the released model is one run's
        assert a["weights"] == b["weights"], name
    record, user, public = (launched["ranks"][0][n] for n in ("record", "user", "public"))
    # the score is the whole held-out split's (the ranks' blocks summed): exact on public
    # data, and near the model's accuracy with the noise of the held-out score
    assert public["best_score"] == pytest.approx(public["public_accuracy"], abs=1e-6)
    assert abs(record["best_score"] - record["accuracy"]) < 0.1
    assert user["privacy_unit"] == "user"
    assert all(len(h) == 2 and h[-1][1:] == (1.0, 1) for h in _histories(user))  # noisy score
    assert all(len(h) == 1 for h in _histories(public))  # public score: not charged
    assert public["n_samples"] == 600  # all of the data trains
    assert record["n_samples"] < 600  # the held-out split does not


def test_one_ledger_run_and_the_papernot_steinke_bound(launched, tmp_path):
    """(2) one ledger run for the search, charged by rank 0; epsilon is the bound of the
    recorded histories, and the one-process search draws the same candidates and bound."""
    ranks = launched["ranks"]
    a = ranks[0]["record"]
    runs = launched["ledger"].runs("tune-dist")
    assert len(runs) == 1 and runs[0].run_id == a["run_id"] and runs[0].status == "settled"
    histories = _histories(a)
    for name, dist in (("record", "poisson"), ("user", "truncated_negative_binomial"),
                       ("secure", "truncated_negative_binomial"), ("public", "truncated_negative_binomial")):
        r = ranks[0][name]
        mean = RECORD["mean_runs"] if name == "record" else 2
        want = _independent_bound(_histories(r), delta=r["delta"], distribution=dist, mean_runs=mean)
        assert r["epsilon"] == pytest.approx(want, rel=1e-6), name
        assert r["trainer_epsilon"] == pytest.approx(want, rel=1e-6), name
    assert runs[0].charge.epsilon == pytest.approx(a["epsilon"], rel=1e-9)
    # the model saved under torchrun (rank 0 writes) keeps the search's epsilon
    assert ranks[0]["record"]["saved_epsilon"] == ranks[1]["record"]["saved_epsilon"] == pytest.approx(a["epsilon"])
    assert a["delta"] == pytest.approx(0.5e-5)
    # the one-process search with the same seed: same split, K, candidates, histories, bound
    led = BudgetLedger(tmp_path / "one.db")
    led.set_budget("tune-dist", epsilon=10.0, delta=1e-5)
    one = privdl.tune(lambda: torch.nn.Linear(6, 2), GRID, blobs(), ledger=led, dataset_id="tune-dist", **RECORD)
    assert [c["params"] for c in one.candidates_] == [c["params"] for c in a["candidates"]]
    assert [[tuple(s) for s in c["history"]] for c in one.candidates_] == histories
    assert one.epsilon == pytest.approx(a["epsilon"], rel=1e-12)
    assert search_epsilon(histories, delta=a["delta"], distribution="poisson", mean_runs=3) == pytest.approx(
        a["epsilon"], rel=1e-12
    )
    # one audit entry for the search, written by rank 0 (the candidates write none)
    from privdl.audit import iter_entries

    entries = [e for e in iter_entries(launched["out"] / "audit.jsonl")]
    assert [(e["event"], e["outcome"]) for e in entries] == [("tune", "started"), ("tune", "ok")]
    assert entries[-1]["params"]["processes"] == 2


def test_refusals_on_every_rank_before_any_charge(launched):
    """(3) other arguments or data on one rank, or a refusal on one, stop every rank
    before anything is charged; so does the budget."""
    ranks = launched["ranks"]
    expected = {
        "over-budget": BudgetExceededError,
        "other-grid": UsageError,
        "other-data": InputError,
        "refused-on-one": UsageError,
    }
    for name, error in expected.items():
        seen = [r[name] for r in ranks]
        assert [s.get("error") for s in seen] == [error.__name__] * 2, (name, seen)
    assert "'grid'" in ranks[0]["other-grid"]["message"] and "rank(s) 1" in ranks[0]["other-grid"]["message"]
    assert "differs between the ranks" in ranks[1]["other-data"]["message"]
    assert "epsilon" in ranks[0]["refused-on-one"]["message"]  # rank 1's own refusal, on rank 0 too
    assert launched["ledger"].runs("tune-small") == []
    assert launched["ledger"].runs("tune-refuse") == []


def test_argument_digests_compare_values_not_addresses():
    class Opt:
        pass

    base = argument_digests({"grid": GRID, "epsilon": 3.0}, {"optimizer": Opt(), "device": "cuda:0"})
    assert base == argument_digests({"grid": dict(GRID), "epsilon": 3.0}, {"optimizer": Opt(), "device": "cuda:1"})
    other = argument_digests({"grid": {**GRID, "lr": [0.05, 0.3]}, "epsilon": 3.0}, {"optimizer": Opt()})
    assert other["grid"] != base["grid"] and other["epsilon"] == base["epsilon"]
    assert argument_digests({"seed": np.int64(3)}, {}) == argument_digests({"seed": 3}, {})


def test_together_on_one_process():
    group = Group(rank=0, world_size=1)
    assert group.together(lambda: 7) == 7
    with pytest.raises(UsageError, match="bad"):
        group.together(lambda: (_ for _ in ()).throw(UsageError("bad")))


def test_a_search_charged_to_postgresql(launched):
    if launched["postgres"] is None:
        pytest.skip("PRIVDL_TEST_POSTGRES_URL is not set (or the PostgreSQL ledger is not reachable)")
    a, b = (r["postgres"] for r in launched["ranks"])
    assert "error" not in a and "error" not in b, (a, b)
    assert a["k"] >= 1  # this seed draws a candidate
    for key in ("k", "candidates", "best_params", "best_score", "epsilon", "run_id", "weights"):
        assert a[key] == b[key], key
    runs = BudgetLedger(POSTGRES_URL).runs(launched["postgres"])
    assert len(runs) == 1 and runs[0].run_id == a["run_id"] and runs[0].status == "settled"
    want = _independent_bound(_histories(a), delta=a["delta"], distribution="poisson", mean_runs=RECORD["mean_runs"])
    assert runs[0].charge.epsilon == pytest.approx(want, rel=1e-6)
