"""Signed safetensors model files and resumable training checkpoints."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from torch import nn  # noqa: E402

from privdl.errors import (  # noqa: E402
    InputError,
    KeyMissingError,
    SecurityError,
    TamperDetectedError,
    UsageError,
)
from privdl.keys import Secret  # noqa: E402
from privdl.train.checkpoint import read_model_files  # noqa: E402
from privdl.train.trainer import PrivateTrainer  # noqa: E402
from tests.train.crash import CrashingLoss  # noqa: E402


def blobs(n=300, d=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    X = (rng.normal(size=(n, d)) + 2.0 * y[:, None]).astype(np.float32)
    return X, y


@pytest.fixture(scope="module")
def fitted():
    X, y = blobs()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    tr = PrivateTrainer(model, epsilon=3.0, epochs=2, batch_size=50, seed=0).fit((X, y))
    return tr, X


def flip(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset % len(data)
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_round_trip_with_hmac_signature(fitted, tmp_path):
    tr, X = fitted
    key = Secret.generate()
    folder = tr.save(tmp_path / "model", key=key)
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json",
        "meta.json",
        "model.safetensors",
        "signature.json",
    ]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format"] == "privdl-model/1"
    assert meta["layers"][0] == {"type": "Linear", "in_features": 5, "out_features": 8, "bias": True}
    assert meta["task"] == "binary" or meta["task"] == "multiclass"
    assert meta["privacy"]["accountant_history"] == [list(s) for s in tr.accountant_history_]
    sig = json.loads((folder / "signature.json").read_text())
    assert sig["alg"] == "hmac-sha256" and key.reveal().hex() not in json.dumps(sig)
    assert "manifest.json" in sig["files"]  # the run manifest is signed with the weights

    back = PrivateTrainer.load(folder, key=key)
    assert np.array_equal(back.predict(X), tr.predict(X))
    assert back.epsilon == pytest.approx(tr.epsilon)
    assert back.noise_multiplier_ == tr.noise_multiplier_


def test_unsigned_and_ed25519_files(fitted, tmp_path):
    tr, X = fitted
    plain = tr.save(tmp_path / "plain")
    assert np.array_equal(PrivateTrainer.load(plain).predict(X), tr.predict(X))
    with pytest.raises(SecurityError):
        PrivateTrainer.load(plain, key=Secret.generate())

    private = Ed25519PrivateKey.generate()
    signed = tr.save(tmp_path / "ed", key=private)
    back = PrivateTrainer.load(signed, key=private.public_key())
    assert np.array_equal(back.predict(X), tr.predict(X))
    with pytest.raises(KeyMissingError):
        PrivateTrainer.load(signed)
    with pytest.raises(TamperDetectedError):
        PrivateTrainer.load(signed, key=Ed25519PrivateKey.generate().public_key())


def test_wrong_or_missing_hmac_key(fitted, tmp_path):
    tr, _ = fitted
    folder = tr.save(tmp_path / "m", key=Secret.generate())
    with pytest.raises(TamperDetectedError):
        PrivateTrainer.load(folder, key=Secret.generate())
    with pytest.raises(KeyMissingError):
        PrivateTrainer.load(folder)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["model.safetensors", "meta.json"]), offset=st.integers(0, 10**6))
def test_any_flipped_byte_is_detected(fitted, tmp_path_factory, name, offset):
    tr, _ = fitted
    key = Secret.generate()
    folder = tr.save(tmp_path_factory.mktemp("flip") / "m", key=key)
    flip(folder / name, offset)
    with pytest.raises(TamperDetectedError):
        PrivateTrainer.load(folder, key=key)


def test_resigned_manifest_without_the_key_is_detected(fitted, tmp_path):
    tr, _ = fitted
    key = Secret.generate()
    folder = tr.save(tmp_path / "m", key=key)
    meta = json.loads((folder / "meta.json").read_text())
    meta["privacy"]["epsilon"] = 0.01  # an attacker lowers the reported epsilon
    (folder / "meta.json").write_text(json.dumps(meta))
    sig = json.loads((folder / "signature.json").read_text())
    import hashlib

    sig["files"]["meta.json"] = hashlib.sha256((folder / "meta.json").read_bytes()).hexdigest()
    (folder / "signature.json").write_text(json.dumps(sig))
    with pytest.raises(TamperDetectedError):
        PrivateTrainer.load(folder, key=key)


def test_added_or_removed_files_are_detected(fitted, tmp_path):
    tr, _ = fitted
    folder = tr.save(tmp_path / "m")
    (folder / "encoder.json").write_text("{}")
    with pytest.raises(TamperDetectedError):
        PrivateTrainer.load(folder)
    (folder / "encoder.json").unlink()
    (folder / "signature.json").unlink()
    with pytest.raises(TamperDetectedError):
        PrivateTrainer.load(folder)


def test_loading_never_unpickles(fitted, tmp_path, monkeypatch):
    tr, X = fitted
    folder = tr.save(tmp_path / "m")

    def refuse(*_a, **_k):
        raise AssertionError("unpickling during load")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert np.array_equal(PrivateTrainer.load(folder).predict(X), tr.predict(X))


def test_custom_architecture_needs_the_module(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(5, 2)

        def forward(self, x):
            return self.body(x)

    X, y = blobs()
    torch.manual_seed(0)
    tr = PrivateTrainer(Net(), epsilon=3.0, epochs=1, batch_size=50).fit((X, y))
    folder = tr.save(tmp_path / "net")
    assert json.loads((folder / "meta.json").read_text())["layers"] is None
    with pytest.raises(UsageError):
        PrivateTrainer.load(folder)
    back = PrivateTrainer.load(folder, model=Net())
    assert np.array_equal(back.predict(X), tr.predict(X))
    with pytest.raises(InputError):
        PrivateTrainer.load(folder, model=nn.Linear(5, 3))


def test_a_sequential_cnn_is_rebuilt_from_its_description(tmp_path):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)[:400]
    y = y[:400]
    model = nn.Sequential(
        nn.Conv2d(1, 4, (3, 2), padding="same", bias=False),
        nn.BatchNorm2d(4),  # -> GroupNorm
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 10),
    )
    tr = PrivateTrainer(model, epsilon=3.0, epochs=1, seed=0).fit((X, y))
    folder = tr.save(tmp_path / "cnn")
    layers = json.loads((folder / "meta.json").read_text())["layers"]
    assert [layer["type"] for layer in layers][:4] == ["Conv2d", "GroupNorm", "ReLU", "MaxPool2d"]
    back = PrivateTrainer.load(folder)  # no code: the description rebuilds it
    assert np.allclose(back.decision_function(X), tr.decision_function(X), atol=1e-6)
    # a description that does not build is a clear error, never a traceback
    meta = json.loads((folder / "meta.json").read_text())
    from privdl.train.checkpoint import build_layers

    meta["layers"][0]["kernel_size"] = "wide"
    with pytest.raises(InputError, match="Conv2d"):
        build_layers(meta["container"], meta["layers"])


def test_single_linear_layer_exposes_weights_for_scoring(tmp_path):
    X, y = blobs()
    torch.manual_seed(0)
    tr = PrivateTrainer(nn.Linear(5, 1), epsilon=3.0, epochs=1, batch_size=50).fit((X, y))
    folder = tr.save(tmp_path / "lr")
    meta, state, encoder = read_model_files(folder)
    assert meta["container"] == "single" and meta["layers"][0]["type"] == "Linear"
    assert set(state) == {"weight", "bias"} and encoder is None
    logits = X @ state["weight"].numpy().T + state["bias"].numpy()
    assert np.allclose(logits.ravel(), tr.decision_function(X).ravel(), atol=1e-5)


def test_save_refuses_to_overwrite_a_foreign_folder(fitted, tmp_path):
    tr, _ = fitted
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "precious.csv").write_text("a,b\n")
    with pytest.raises(UsageError):
        tr.save(foreign)
    assert (foreign / "precious.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temp folder left behind


def test_unfitted_trainer_cannot_be_saved(tmp_path):
    with pytest.raises(UsageError):
        PrivateTrainer(nn.Linear(2, 2), epsilon=1.0).save(tmp_path / "m")


def test_resume_continues_the_same_ledger_reservation(tmp_path):
    from privdl.budget.ledger import BudgetLedger

    X, y = blobs()
    ledger = BudgetLedger(tmp_path / "budget.db")
    ledger.set_budget("ds", epsilon=5.0, delta=1e-5)
    key = Secret.generate()
    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    tr = PrivateTrainer(
        model,
        epsilon=2.0,
        epochs=4,
        batch_size=50,
        ledger=ledger,
        dataset_id="ds",
        checkpoint_dir=ckpt,
        checkpoint_key=key,
    )
    tr.loss = CrashingLoss(steps=2 * 6)  # the power goes off in epoch 3
    with pytest.raises(RuntimeError, match="power cut"):
        tr.fit((X, y))
    reserved = ledger.runs("ds")
    assert [r.status for r in reserved] == ["reserved"]

    resumed = PrivateTrainer.resume(ckpt, key=key, ledger=ledger)
    assert resumed.steps_ == 2 * 6 and resumed.run_id_ == reserved[0].run_id
    resumed.fit((X, y))
    runs = ledger.runs("ds")
    assert len(runs) == 1 and runs[0].status == "settled"
    assert runs[0].run_id == tr.run_id_
    assert resumed.steps_ == tr.planned_steps_ == 4 * 6
    assert [r["epoch"] for r in resumed.history_] == [1, 2, 3, 4]
    assert resumed.epsilon <= 2.0
    assert ledger.spent("ds") == pytest.approx(resumed.epsilon, rel=1e-6)
    with pytest.raises(InputError):
        PrivateTrainer.resume(ckpt, key=key, ledger=ledger).fit(blobs(n=100))


def test_a_saved_model_is_not_a_checkpoint(fitted, tmp_path):
    tr, _ = fitted
    folder = tr.save(tmp_path / "m")
    with pytest.raises(InputError):
        PrivateTrainer.resume(folder)


def test_table_model_round_trip_keeps_the_encoder(tmp_path):
    pytest.importorskip("privdl.train.encoding")
    import pandas as pd

    from privdl.train.encoding import TableEncoder

    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {"age": rng.integers(18, 80, size=200), "plan": rng.choice(["a", "b", "c"], size=200)}
    )
    frame["retained"] = np.where(frame["plan"] == "c", "yes", "no")
    enc = TableEncoder(categories={"retained": ["no", "yes"]}).fit(frame, target="retained")
    width = len(enc.feature_names_)
    torch.manual_seed(0)
    tr = PrivateTrainer(nn.Linear(width, 2), epsilon=3.0, epochs=2, batch_size=40, encoder=enc)
    tr.fit(frame, target="retained")
    key = Secret.generate()
    folder = tr.save(tmp_path / "table", key=key)
    assert (folder / "encoder.json").exists()
    back = PrivateTrainer.load(folder, key=key)
    assert back.feature_names_ == tr.feature_names_
    assert np.array_equal(back.predict(frame), tr.predict(frame))
    flip(folder / "encoder.json")
    with pytest.raises(TamperDetectedError):
        PrivateTrainer.load(folder, key=key)


def test_checkpoints_hold_no_training_loss_and_resume_without_it(tmp_path, capsys):
    X, y = blobs()
    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    tr = PrivateTrainer(model, epsilon=2.0, epochs=2, batch_size=50, seed=0, checkpoint_dir=ckpt)
    tr.loss = CrashingLoss(steps=6)  # 300 records, 6 steps per epoch
    with pytest.raises(RuntimeError, match="power cut"):
        tr.fit((X, y), val=(X[:40] + 3.0, y[:40]))
    (live,) = [row["loss"] for row in tr.history_]
    text = (ckpt / "meta.json").read_text()
    meta = json.loads(text)
    (saved,) = meta["history"]
    assert sorted(saved) == ["epoch", "epsilon", "metric", "metric_name", "steps"]
    assert repr(live) not in text and f"{live:.6g}" not in text
    by_item = {c["item"]: c for c in meta["coverage"]}
    state = by_item["optimizer state and training progress (epoch, steps)"]
    assert state["dp_protected"] is True and state["released_in"] == ["checkpoint"]
    # the resumed run shows the saved epoch without a loss (none was saved) and goes on
    resumed = PrivateTrainer.resume(ckpt)
    resumed.progress = True
    resumed.fit((X, y))
    assert [("loss" in row) for row in resumed.history_] == [False, True]
    assert "epoch 2/2" in capsys.readouterr().err
