"""Scoring a model saved by PrivateTrainer (safetensors + meta.json + encoder.json)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

pytest.importorskip("opacus")

from privdl.cli import main
from privdl.encrypted.models import load_model_spec

COLUMNS = ["age", "sex", "race", "salary-class"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, adult):
    from privdl.train.encoding import TableEncoder
    from privdl.train.trainer import PrivateTrainer

    d = tmp_path_factory.mktemp("trained")
    frame = adult[COLUMNS].head(600).reset_index(drop=True)
    encoder = TableEncoder(
        numeric_bounds={"age": (17, 90)},
        categories={
            "sex": ["Male", "Female"],
            "race": ["White", "Black", "Other"],
            "salary-class": ["<=50K", ">50K"],
        },
        target="salary-class",
    )
    model = nn.Sequential(nn.Linear(12, 1))
    trainer = PrivateTrainer(model, epsilon=5.0, epochs=1, batch_size=64, encoder=encoder,
                             seed=0, progress=False)  # fmt: skip
    trainer.fit(frame, target="salary-class")
    trainer.save(d / "model")
    frame.drop(columns=["salary-class"]).to_csv(d / "users.csv", index=False)
    x = trainer.encoder_.transform(frame)
    with torch.no_grad():
        logits = trainer.model_(torch.tensor(x)).double().numpy()[:, 0]
    return d, frame, 1 / (1 + np.exp(-logits))


def test_load_saved_model(saved):
    d, _, _ = saved
    spec = load_model_spec(d / "model")
    assert spec.link == "logit" and spec.is_linear
    assert spec.columns[:3] == ("age:mid", "age:width", "age:missing")
    assert "encoder" in spec.info


def test_cli_hybrid_scoring_of_a_trainer_model(saved, capsys):
    d, _, expected = saved
    run = lambda *a: main([str(x) for x in a])  # noqa: E731
    assert run("he", "keygen", "--out", d / "keys") == 0
    assert (
        run(
            "he",
            "encrypt",
            d / "users.csv",
            "--keys",
            d / "keys",
            "--columns",
            "age,sex",
            "--model",
            d / "model",
            "-o",
            d / "users.he",
        )
        == 0
    )
    assert (
        run(
            "he",
            "score",
            d / "users.he",
            "--model",
            d / "model",
            "--public",
            d / "keys",
            "--plain",
            d / "users.csv",
            "--plain-columns",
            "race",
            "-o",
            d / "s.he",
        )
        == 0
    )
    assert run("he", "decrypt", d / "s.he", "--keys", d / "keys", "-o", d / "out.csv") == 0
    got = pd.read_csv(d / "out.csv")["score"].to_numpy()
    assert np.max(np.abs(got - expected)) < 1e-4


def test_api_with_the_encoder(saved):
    from privdl.encrypted.keys import HEKeys
    from privdl.encrypted.scorer import EncryptedScorer

    d, frame, expected = saved
    spec = load_model_spec(d / "model")
    keys = HEKeys.generate()
    sensitive = [c for c in spec.columns if c.startswith(("age", "sex"))]
    batch = keys.encrypt(frame[["age", "sex"]], columns=sensitive, encoder=spec.info["encoder"])
    scores = EncryptedScorer.from_model(spec, keys.public()).score(batch, plain=frame[["race"]])
    assert np.max(np.abs(keys.decrypt(scores) - expected)) < 1e-4


def test_cli_scores_signed_models_with_their_verifying_key(saved, tmp_path, monkeypatch, capsys):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from privdl import PrivateTrainer
    from privdl.audit.checkpoint import verifier_key
    from privdl.keys import Secret

    d, _, expected = saved
    trainer = PrivateTrainer.load(d / "model")
    import secrets

    mac_key = "hex:" + secrets.token_hex(32)  # random: a key that decodes to text is refused
    monkeypatch.setenv("MODEL_KEY", mac_key)
    trainer.save(tmp_path / "hmac", key=Secret.from_env("MODEL_KEY"))
    signer = Ed25519PrivateKey.generate()
    trainer.save(tmp_path / "ed", key=signer)
    run = lambda *a: main([str(x) for x in a])  # noqa: E731
    assert run("he", "keygen", "--out", tmp_path / "keys") == 0
    enc = ["he", "encrypt", d / "users.csv", "--keys", tmp_path / "keys", "--columns", "age,sex"]
    plain = ["--plain", d / "users.csv", "--plain-columns", "race"]
    # HMAC-signed: the key comes from a variable; without it, a one-line refusal
    assert run(*enc, "--model", tmp_path / "hmac", "-o", tmp_path / "a.he") == 2
    assert "HMAC-signed" in capsys.readouterr().err
    assert not (tmp_path / "a.he").exists()
    assert (
        run(*enc, "--model", tmp_path / "hmac", "--model-key-env", "MODEL_KEY", "-o", tmp_path / "a.he") == 0
    )
    score = ["he", "score", tmp_path / "a.he", "--public", tmp_path / "keys", *plain]
    assert run(*score, "--model", tmp_path / "hmac", "-o", tmp_path / "s.he") == 2
    assert not (tmp_path / "s.he").exists()
    assert (
        run(*score, "--model", tmp_path / "hmac", "--model-key-env", "MODEL_KEY", "-o", tmp_path / "s.he")
        == 0
    )
    assert run("he", "decrypt", tmp_path / "s.he", "--keys", tmp_path / "keys", "-o", tmp_path / "a.csv") == 0
    assert np.max(np.abs(pd.read_csv(tmp_path / "a.csv")["score"].to_numpy() - expected)) < 1e-4
    # Ed25519-signed: the public key as a verifier key; a wrong key is refused
    other = verifier_key(Ed25519PrivateKey.generate().public_key())
    args = [*score, "--model", tmp_path / "ed", "-o", tmp_path / "e.he"]
    assert run(*args, "--model-public-key", other) == 1
    assert "does not verify" in capsys.readouterr().err
    assert run(*args, "--model-public-key", verifier_key(signer.public_key())) == 0
    assert run(*args[:-2], "-o", tmp_path / "e2.he", "--model-key-env", "MODEL_KEY",
               "--model-public-key", other) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "give one of" in err and "5c5c" not in err
