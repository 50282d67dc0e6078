"""The RunManifest of a training run: in checkpoints, model folders, reports and the audit entry."""

from __future__ import annotations

import json
import secrets

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from torch import nn  # noqa: E402

from privdl.audit import AuditLog  # noqa: E402
from privdl.keys import Secret  # noqa: E402
from privdl.manifest import RunManifest  # noqa: E402
from privdl.train.provenance import tensor_digests  # noqa: E402
from privdl.train.trainer import PrivateTrainer  # noqa: E402


def blobs(n=200, d=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    X = (rng.normal(size=(n, d)) + 2.0 * y[:, None]).astype(np.float32)
    return X, y


def test_checkpoint_and_model_folder_hold_the_run_manifest(tmp_path, run_cli):
    X, y = blobs()
    key = Secret.generate()
    log = AuditLog(tmp_path / "audit.jsonl", key=Secret(secrets.token_bytes(32)))
    trainer = PrivateTrainer(
        nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)), epsilon=2.0, epochs=2, batch_size=50,
        seed=1, checkpoint_dir=tmp_path / "ckpt", checkpoint_key=key, audit_log=log, progress=False,
    )  # fmt: skip
    trainer.fit((X, y))
    ckpt = RunManifest.load(tmp_path / "ckpt")
    assert dict(ckpt.model_state) == tensor_digests(trainer.model_)  # the last epoch's weights
    assert set(ckpt.data) == {"training data (features)", "training data (labels)"}
    assert ckpt.data["training data (features)"]["rows"] == 200
    assert ckpt.reproducibility == {"bitwise": True, "reason": "seeded run on the CPU without secure mode"}
    trainer.save(tmp_path / "model", key=key)
    saved = RunManifest.load(tmp_path / "model")
    final = [json.loads(line)["entry"] for line in log.path.read_text().splitlines()][-1]
    assert final["params"]["manifest_sha256"] == saved.sha256() == trainer.manifest_.sha256()
    # the report embeds it; a checkpoint, the model and the report name the same run
    trainer.report().save(tmp_path / "privacy.html")
    assert RunManifest.load(tmp_path / "privacy.html") == saved
    code, out, _ = run_cli("diff", tmp_path / "ckpt", tmp_path / "model")
    assert code == 0, out
    # a loaded model keeps the manifest it was saved with
    assert PrivateTrainer.load(tmp_path / "model", key=key).manifest_ == saved


def test_changed_weights_after_fit_are_what_the_folder_records(tmp_path):
    X, y = blobs()
    trainer = PrivateTrainer(nn.Linear(4, 1), epsilon=2.0, epochs=1, batch_size=50, seed=2, progress=False)
    trainer.fit((X, y))
    fitted = trainer.manifest_
    with torch.no_grad():
        trainer.model_.weight.add_(1.0)
    trainer.save(tmp_path / "m")
    saved = RunManifest.load(tmp_path / "m")
    assert saved.model_state != fitted.model_state
    assert dict(saved.model_state) == tensor_digests(trainer.model_)


def test_manifest_holds_no_key_and_no_seed(tmp_path):
    X, y = blobs()
    key = Secret.generate()
    trainer = PrivateTrainer(
        nn.Linear(4, 1), epsilon=2.0, epochs=1, batch_size=50, seed=987654321, progress=False
    )
    trainer.fit((X, y)).save(tmp_path / "m", key=key)
    text = (tmp_path / "m" / "manifest.json").read_text()
    assert key.reveal().hex() not in text and "987654321" not in text
    assert json.loads(text)["config"]["seed_given"] is True
