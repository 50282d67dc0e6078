"""`privdl diff` verifies model folders before comparing their manifests (a real signed
folder from a real PrivateTrainer.save)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch")

from privdl.keys import Secret  # noqa: E402


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    import numpy as np

    import privdl

    d = tmp_path_factory.mktemp("diff")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)).astype("float32")
    y = (X[:, 0] > 0).astype("int64")
    key = Secret.generate()
    tr = privdl.PrivateTrainer(torch.nn.Linear(3, 2), epsilon=3.0, epochs=1, batch_size=50, seed=0, progress=False)
    tr.fit((X, y))
    folder = tr.save(d / "model", key=key)
    key_file = d / "model.key"
    key_file.write_text(key.reveal().hex())
    os.chmod(key_file, 0o600)
    return d, folder, key_file


def test_a_signed_folder_is_verified_with_the_key(signed, run_cli):
    _, folder, key_file = signed
    code, out, err = run_cli("diff", folder, folder, "--model-key-file", key_file)
    assert code == 0 and "no differences" in out and err == ""


def test_a_tampered_manifest_is_a_failed_check_not_a_comparison(signed, tmp_path, run_cli):
    _, folder, key_file = signed
    copy = shutil.copytree(folder, tmp_path / "copy")
    manifest = copy / "manifest.json"
    data = json.loads(manifest.read_text())
    data["config"]["epsilon"] = 0.5  # a claim rewritten after the run
    manifest.write_text(json.dumps(data))
    before = manifest.read_bytes()
    code, out, err = run_cli("diff", folder, copy, "--model-key-file", key_file)
    assert code == 1 and out == ""  # nothing compared
    assert len(err.strip().splitlines()) == 1 and "manifest.json" in err and "Traceback" not in err
    assert manifest.read_bytes() == before  # the input is left as it was
    # without the key the files still fail their signed digests
    code, out, err = run_cli("diff", folder, copy)
    assert code == 1 and out == "" and "manifest.json" in err


def test_without_a_key_a_signed_folder_is_compared_with_a_note(signed, run_cli):
    _, folder, _ = signed
    code, out, err = run_cli("diff", folder, folder)
    assert code == 0 and "no differences" in out
    assert err.count("without checking its signature") == 2


def test_a_wrong_key_is_refused(signed, tmp_path, run_cli):
    _, folder, _ = signed
    other = tmp_path / "other.key"
    other.write_text(Secret.generate().reveal().hex())
    os.chmod(other, 0o600)
    code, out, err = run_cli("diff", folder, folder, "--model-key-file", other)
    assert code in (1, 2) and out == "" and len(err.strip().splitlines()) == 1
    assert other.read_text() not in err
