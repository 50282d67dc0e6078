"""User-level training checkpoints: a killed run resumes the same run (same users, same
kept records, same reservation) and ends where the uninterrupted run ends."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")
pytest.importorskip("safetensors")

from torch import nn  # noqa: E402

from privdl import PrivateTrainer  # noqa: E402
from privdl.budget.ledger import BudgetLedger  # noqa: E402
from privdl.errors import InputError, TamperDetectedError  # noqa: E402
from privdl.keys import Secret  # noqa: E402
from tests.train.crash import CrashingLoss  # noqa: E402

PER_EPOCH = 5  # 150 users, 30 expected per step


def _events(n_users=150, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat([f"user-{i:05d}" for i in range(n_users)], rng.integers(1, 12, n_users))
    X = rng.normal(size=(len(users), 4)).astype("float32")
    y = (X[:, 0] + 0.3 * rng.normal(size=len(users)) > 0).astype("int64")
    return X, y, users


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))


def _params(**kw):
    base = dict(
        epsilon=2.0, delta=1e-5, epochs=4, batch_size=30, privacy_unit="user", max_records_per_user=5,
        seed=3, progress=False,
    )
    return {**base, **kw}


def _killed(tmp_path, X, y, users, *, ledger=None, key=None, **kw):
    """A user-level run whose power goes off in epoch 3, after the epoch-2 checkpoint."""
    t = PrivateTrainer(
        _model(), ledger=ledger, dataset_id="ds" if ledger is not None else None,
        checkpoint_dir=tmp_path / "ck", checkpoint_key=key, **_params(**kw),
    )
    t.loss = CrashingLoss(steps=2 * PER_EPOCH)
    with pytest.raises(RuntimeError, match="power cut"):
        t.fit((X, y), users=users)
    return t


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_a_killed_user_level_run_resumes_to_the_uninterrupted_model(tmp_path, mode):
    X, y, users = _events()
    # the uninterrupted run writes checkpoints too (such a run reseeds per epoch)
    full = PrivateTrainer(_model(), checkpoint_dir=tmp_path / "full", **_params(grad_sample_mode=mode))
    full.fit((X, y), users=users)

    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget("ds", epsilon=5.0, delta=1e-5, privacy_unit="user")
    key = Secret.generate()
    killed = _killed(tmp_path, X, y, users, ledger=ledger, key=key, grad_sample_mode=mode)
    (reserved,) = ledger.runs("ds")
    assert reserved.status == "reserved" and reserved.privacy_unit == "user"

    resumed = PrivateTrainer.resume(tmp_path / "ck", key=key, ledger=ledger, seed=3)
    assert resumed.privacy_unit == "user" and resumed.max_records_per_user == 5
    assert resumed.steps_ == 2 * PER_EPOCH and resumed.n_users_ == 150
    assert resumed.run_id_ == reserved.run_id
    resumed.fit((X, y), users=users)

    # the same run: its reservation settled once, its steps, its epsilon
    (run,) = ledger.runs("ds")
    assert run.status == "settled" and run.run_id == killed.run_id_ and run.charge is None
    assert resumed.steps_ == full.steps_ == 4 * PER_EPOCH
    assert resumed.accountant_history_ == full.accountant_history_
    assert resumed.epsilon == pytest.approx(full.epsilon, rel=1e-12)
    assert ledger.spent("ds") == pytest.approx(resumed.epsilon, rel=1e-6)
    assert [r["epoch"] for r in resumed.history_] == [1, 2, 3, 4]
    assert (resumed.n_users_, resumed.records_dropped_) == (full.n_users_, full.records_dropped_)
    # the same kept records, batches and noise: the same final model, bit for bit
    for p, q in zip(resumed.model_.parameters(), full.model_.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_record_level_run_resumed_with_its_seed_ends_where_the_uninterrupted_one_does(tmp_path):
    X, y, _ = _events()
    params = dict(epsilon=2.0, delta=1e-4, epochs=3, batch_size=100, seed=5, progress=False)
    full = PrivateTrainer(_model(), checkpoint_dir=tmp_path / "full", **params).fit((X, y))
    per_epoch = full.planned_steps_ // 3
    t = PrivateTrainer(_model(), checkpoint_dir=tmp_path / "ck", **params)
    t.loss = CrashingLoss(steps=per_epoch)
    with pytest.raises(RuntimeError, match="power cut"):
        t.fit((X, y))
    resumed = PrivateTrainer.resume(tmp_path / "ck", seed=5).fit((X, y))
    assert resumed.epsilon == pytest.approx(full.epsilon, rel=1e-12)
    for p, q in zip(resumed.model_.parameters(), full.model_.parameters(), strict=True):
        assert torch.equal(p, q)


def test_resume_refuses_other_data_users_or_cap(tmp_path):
    X, y, users = _events()
    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget("ds", epsilon=5.0, delta=1e-5, privacy_unit="user")
    _killed(tmp_path, X, y, users, ledger=ledger)
    before = ledger.runs("ds")

    def resume():
        return PrivateTrainer.resume(tmp_path / "ck", ledger=ledger)

    with pytest.raises(InputError, match=rf"trained on {len(users)} records, not {len(users) - 1}"):
        resume().fit((X[:-1], y[:-1]), users=users[:-1])
    merged = users.copy()
    merged[merged == "user-00001"] = "user-00000"  # same records, one user fewer
    with pytest.raises(InputError, match="trained on 150 users, not 149"):
        resume().fit((X, y), users=merged)
    shuffled = np.random.default_rng(1).permutation(users)  # same users and counts, other records
    with pytest.raises(InputError, match=r"group the \d+ records differently"):
        resume().fit((X, y), users=shuffled)
    other_cap = resume().set_params(max_records_per_user=3)
    with pytest.raises(InputError, match="max_records_per_user=5, not 3"):
        other_cap.fit((X, y), users=users)
    # no value in any message; nothing charged or settled by a refusal
    assert ledger.runs("ds") == before
    again = resume()
    again.fit((X, y), users=users)  # the right users still resume the run
    assert [r.status for r in ledger.runs("ds")] == ["settled"]


def test_a_checkpoint_resumes_in_its_own_privacy_unit(tmp_path):
    X, y, users = _events()
    _killed(tmp_path / "u", X, y, users)
    as_record = PrivateTrainer.resume(tmp_path / "u" / "ck").set_params(privacy_unit="record")
    with pytest.raises(InputError, match="user-level run"):
        as_record.fit((X, y))

    t = PrivateTrainer(_model(), epsilon=2.0, epochs=2, batch_size=100, progress=False, checkpoint_dir=tmp_path / "r")
    per_epoch = -(-len(X) // 100)
    t.loss = CrashingLoss(steps=per_epoch)  # killed in epoch 2, after the epoch-1 checkpoint
    with pytest.raises(RuntimeError, match="power cut"):
        t.fit((X, y))
    as_user = PrivateTrainer.resume(tmp_path / "r").set_params(privacy_unit="user", max_records_per_user=5)
    with pytest.raises(InputError, match="record-level run"):
        as_user.fit((X, y), users=users)
    assert as_user.steps_ == per_epoch  # nothing trained


def test_the_checkpoint_holds_no_user_id(tmp_path):
    pd = pytest.importorskip("pandas")
    from privdl import TableEncoder

    X, y, users = _events()
    frame = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "who": users, "t": y})
    t = PrivateTrainer(
        nn.Linear(6, 2), encoder=TableEncoder(domains="learned-unprotected"),
        checkpoint_dir=tmp_path / "ck", **_params(epochs=2),
    )
    t.loss = CrashingLoss(steps=PER_EPOCH)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="power cut"):
        t.fit(frame, target="t", user_column="who")
    folder = tmp_path / "ck"
    names = sorted(p.name for p in folder.iterdir())
    assert "users.safetensors" in names
    blob = b"".join((folder / name).read_bytes() for name in names)
    assert b"user-0" not in blob
    meta = json.loads((folder / "meta.json").read_text())
    state = meta["checkpoint"]["users"]
    assert state["n_users"] == 150 and state["max_records_per_user"] == 5
    by_item = {c["item"]: c for c in meta["coverage"]}
    (resume_state,) = [c for item, c in by_item.items() if item.startswith("user-level resume state")]
    assert resume_state["dp_protected"] is False and resume_state["released_in"] == ["checkpoint"]
    # the DataFrame run resumes from its checkpoint (the same user column), and its
    # second checkpoint holds no id either
    again = PrivateTrainer.resume(folder, seed=3)
    again.fit(frame, target="t", user_column="who")
    assert again.steps_ == 2 * PER_EPOCH and again.n_users_ == 150
    blob = b"".join(p.read_bytes() for p in folder.iterdir())
    assert b"user-0" not in blob


def test_secure_mode_resume_keeps_the_drawn_records_and_the_draw_is_signed(tmp_path):
    X, y, users = _events()
    key = Secret.generate()
    killed = _killed(tmp_path, X, y, users, key=key, seed=None, secure_mode=True)
    resumed = PrivateTrainer.resume(tmp_path / "ck", key=key)
    resumed.fit((X, y), users=users)
    # a CSPRNG draw is not reproducible: the checkpoint's keys are the run's own
    assert np.array_equal(resumed._user_draw.keys, killed._user_draw.keys)
    assert resumed.records_dropped_ == killed.records_dropped_ and resumed.steps_ == 4 * PER_EPOCH
    # the draw is signed with the rest of the checkpoint
    path = tmp_path / "ck" / "users.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(TamperDetectedError):
        PrivateTrainer.resume(tmp_path / "ck", key=key)
