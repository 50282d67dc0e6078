"""Scoring a model saved by PrivateTrainer (safetensors + meta.json + encoder.json)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

pytest.importorskip("opacus")

from privdl.cli import main
from privdl.encrypted.models import load_model

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
    spec = load_model(d / "model")
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
    spec = load_model(d / "model")
    keys = HEKeys.generate()
    sensitive = [c for c in spec.columns if c.startswith(("age", "sex"))]
    batch = keys.encrypt(frame[["age", "sex"]], columns=sensitive, encoder=spec.info["encoder"])
    scores = EncryptedScorer.from_model(spec, keys.public()).score(batch, plain=frame[["race"]])
    assert np.max(np.abs(keys.decrypt(scores) - expected)) < 1e-4
