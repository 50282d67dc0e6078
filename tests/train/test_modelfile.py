"""The model folder format is read and verified without torch (train/modelfile.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch import nn  # noqa: E402

from privdl.errors import InputError, KeyMissingError, TamperDetectedError  # noqa: E402
from privdl.keys import Secret  # noqa: E402
from privdl.train.modelfile import CHECKPOINT_FORMAT, MODEL_FORMAT, read_model_folder  # noqa: E402
from privdl.train.trainer import PrivateTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def table(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.integers(18, 80, size=n), "sex": rng.choice(["f", "m"], size=n)})
    frame["retained"] = np.where((frame["age"] > 40) ^ (frame["sex"] == "f"), "yes", "no")
    return frame


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from privdl.train.encoding import TableEncoder

    d = tmp_path_factory.mktemp("modelfile")
    frame = table()
    encoder = TableEncoder(
        numeric_bounds={"age": (17, 90)},
        categories={"sex": ["f", "m"], "retained": ["no", "yes"]},
        target="retained",
    )
    width = len(encoder.fit(frame, target="retained").feature_names_)
    torch.manual_seed(0)
    tr = PrivateTrainer(nn.Linear(width, 1), epsilon=4.0, epochs=2, batch_size=50, encoder=encoder,
                        seed=0, progress=False)  # fmt: skip
    tr.fit(frame, target="retained")
    tr.save(d / "model")
    frame.drop(columns=["retained"]).to_csv(d / "users.csv", index=False)
    return d, tr


def test_a_saved_folder_reads_as_numpy_with_its_encoder(saved):
    d, tr = saved
    folder = read_model_folder(d / "model")
    assert folder.meta["format"] == MODEL_FORMAT and not folder.is_checkpoint
    assert folder.signature["alg"] == "sha256"
    assert folder.meta["feature_names"] == tr.feature_names_
    weights = folder.arrays()
    assert isinstance(weights["weight"], np.ndarray)
    assert np.array_equal(weights["weight"], tr.model_.weight.detach().numpy())
    assert json.loads(folder.encoder_json)["feature_names"] == tr.feature_names_


def test_the_reader_verifies_before_it_reads(saved, tmp_path):
    d, tr = saved
    key = Secret.generate()
    signed = tr.save(tmp_path / "signed", key=key)
    with pytest.raises(KeyMissingError):
        read_model_folder(signed)
    assert read_model_folder(signed, key=key).signature["alg"] == "hmac-sha256"
    meta = signed / "meta.json"
    meta.write_text(meta.read_text().replace('"task"', '"Task"'))
    with pytest.raises(TamperDetectedError):
        read_model_folder(signed, key=key)
    with pytest.raises(InputError):  # a saved model is not a training checkpoint
        read_model_folder(d / "model", kind=CHECKPOINT_FORMAT)
    with pytest.raises(InputError):
        read_model_folder(tmp_path / "nothing-here")


def test_the_reader_and_he_score_never_import_torch(saved, tmp_path):
    pytest.importorskip("tenseal")
    from privdl.cli import main

    d, _ = saved
    assert main(["he", "keygen", "--out", str(tmp_path / "keys")]) == 0
    users, batch = d / "users.csv", tmp_path / "users.he"
    encrypt = ["he", "encrypt", str(users), "--keys", str(tmp_path / "keys"), "--columns", "age,sex"]
    assert main([*encrypt, "--model", str(d / "model"), "-o", str(batch)]) == 0
    probe = textwrap.dedent(
        f"""
        import sys
        from privdl.cli import main
        from privdl.train.modelfile import read_model_folder

        read_model_folder({str(d / "model")!r}).arrays()
        code = main(["he", "score", {str(batch)!r}, "--model", {str(d / "model")!r},
                     "--public", {str(tmp_path / "keys")!r}, "-o", {str(tmp_path / "s.he")!r}])
        print(code, ",".join(m for m in ("torch", "opacus") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0", out.stdout + out.stderr
    assert (tmp_path / "s.he").exists()
