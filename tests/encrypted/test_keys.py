from __future__ import annotations

import os
import pickle
import stat

import numpy as np
import pytest

from privdl.encrypted.keys import PUBLIC_FILE, SECRET_FILE, HEKeys, PublicKeys
from privdl.errors import KeyMissingError, SecurityError, UsageError


def test_public_context_holds_no_secret_and_cannot_decrypt(keys):
    import tenseal as ts

    public = keys.public()
    assert public.is_private() is False
    assert public.context().is_private() is False
    batch = keys.encrypt(np.arange(6.0).reshape(3, 2))
    vec = ts.ckks_vector_from(public.context(), batch.chunks[0].blobs[0])
    with pytest.raises(ValueError, match="secret"):
        vec.decrypt()
    # and the data owner can: same ciphertext, private context
    mine = ts.ckks_vector_from(keys.context(), batch.chunks[0].blobs[0])
    assert np.allclose(mine.decrypt(), [0, 2, 4], atol=1e-6)


def test_linear_public_context_has_no_evaluation_keys(keys):
    public = keys.public()
    ctx = public.context()
    assert not ctx.has_galois_keys() and not ctx.has_relin_keys()
    assert len(public.to_bytes()) < 10_000  # parameters only: no relin/Galois/secret keys


def test_deep_public_context_has_relin_but_no_galois_keys(deep_keys):
    ctx = deep_keys.public().context()
    assert ctx.has_relin_keys() and not ctx.has_galois_keys() and not ctx.is_private()


def test_save_load_modes_and_roundtrip(tmp_path, keys):
    folder = keys.save(tmp_path / "k")
    secret = folder / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    loaded = HEKeys.load(folder)
    assert loaded.key_id == keys.key_id and loaded.params == keys.params
    batch = keys.encrypt(np.array([[1.5], [-2.0]]))
    from privdl.encrypted.ciphertext import decrypt_block

    assert np.allclose(decrypt_block(loaded.context(), batch.chunks[0])[:, 0], [1.5, -2.0], atol=1e-6)
    public = PublicKeys.load(folder)
    assert public.key_id == keys.key_id and not public.is_private()
    with pytest.raises(UsageError, match="already exists"):
        keys.save(folder)


def test_generate_into_writes_keys_with_one_keygen_entry(tmp_path):
    from privdl.audit import AuditLog, iter_entries
    from privdl.keys import Secret

    log = AuditLog(tmp_path / "audit.jsonl", key=Secret.generate())
    keys = HEKeys.generate_into(tmp_path / "k", audit_log=log)
    assert stat.S_IMODE((tmp_path / "k" / SECRET_FILE).stat().st_mode) == 0o600
    assert HEKeys.load(tmp_path / "k").key_id == keys.key_id
    [entry] = list(iter_entries(log.path))
    assert entry["event"] == "he.keygen" and entry["outcome"] == "ok"
    assert entry["params"] == {"key_id": keys.key_id, "he_params": keys.params.to_dict()}
    assert "outputs" not in entry  # key files are recorded by key_id only
    with pytest.raises(UsageError, match="already exists"):
        HEKeys.generate_into(tmp_path / "k", audit_log=log)
    with pytest.raises(UsageError, match="not both"):
        HEKeys.generate_into(tmp_path / "k2", model="model.json", depth=2)
    # a request below 128 bits is logged as failed and leaves no key files
    with pytest.raises(SecurityError):
        HEKeys.generate_into(tmp_path / "k3", security=100, audit_log=log)
    assert not (tmp_path / "k3").exists()
    assert [e["outcome"] for e in iter_entries(log.path)] == ["ok", "failed"]


def test_load_refuses_group_readable_secret(tmp_path, keys):
    folder = keys.save(tmp_path / "k")
    os.chmod(folder / SECRET_FILE, 0o644)
    with pytest.raises(SecurityError, match="chmod 600"):
        HEKeys.load(folder)


def test_public_loader_refuses_the_secret_file(tmp_path, keys):
    folder = keys.save(tmp_path / "k")
    with pytest.raises(SecurityError):
        PublicKeys.load(folder / SECRET_FILE)
    with pytest.raises(KeyMissingError):
        HEKeys.load(folder / PUBLIC_FILE)
    with pytest.raises(KeyMissingError):
        HEKeys.load(tmp_path / "nowhere")


def test_public_keys_refuse_a_private_context(keys):
    blob = keys._secret_blob()
    with pytest.raises(SecurityError):
        PublicKeys.from_bytes(blob, params=keys.params, key_id=keys.key_id)


def test_keys_do_not_pickle_or_show_secrets(keys):
    with pytest.raises(SecurityError):
        pickle.dumps(keys)
    assert "hidden" in repr(keys) and keys.key_id in repr(keys)


def test_100_bit_request_is_refused():
    with pytest.raises(SecurityError):
        HEKeys.generate(security=100)


def test_insecure_request_is_recorded_in_files(tmp_path, monkeypatch):
    import privdl.encrypted.params as params

    monkeypatch.setattr(params, "_warned_insecure", False)
    with pytest.warns(UserWarning, match="insecure-100"):
        keys = HEKeys.generate(security="insecure-100")
    batch = keys.encrypt(np.ones((2, 1)))
    assert batch.header.params.security == "insecure-100"
    keys.save(tmp_path / "k")
    assert PublicKeys.load(tmp_path / "k").params.security == "insecure-100"
    assert HEKeys.load(tmp_path / "k").params.security == "insecure-100"


def test_encrypt_names_column_and_row_not_value():
    import pandas as pd

    from privdl.errors import InputError

    keys = HEKeys.generate()
    frame = pd.DataFrame({"age": ["41", "secret-value", "30"]})
    with pytest.raises(InputError) as err:
        keys.encrypt(frame, columns=["age"])
    assert "'age'" in str(err.value) and "row 2" in str(err.value)
    assert "secret-value" not in str(err.value)
    with pytest.raises(InputError, match="missing"):
        keys.encrypt(frame, columns=["city=Rome"])


def test_decrypt_refuses_other_keys_and_features(keys):
    from privdl.encrypted.models import Layer, ModelSpec
    from privdl.encrypted.scorer import EncryptedScorer
    from privdl.errors import InputError

    spec = ModelSpec(columns=("x0",), layers=(Layer.from_arrays([[2.0]], [1.0]),))
    batch = keys.encrypt(np.array([[1.0], [2.0]]))
    scores = EncryptedScorer(spec, keys.public()).score(batch)
    assert np.allclose(keys.decrypt(scores), [3.0, 5.0], atol=1e-6)
    other = HEKeys.generate()
    with pytest.raises(KeyMissingError):
        other.decrypt(scores)
    with pytest.raises(InputError, match="holds features"):
        keys.decrypt(batch)


def test_public_key_encryption_lets_others_encrypt():
    from privdl.encrypted.models import Layer, ModelSpec
    from privdl.encrypted.scorer import EncryptedScorer

    keys = HEKeys.generate(encryption="public-key")
    public = keys.public()
    assert not public.is_private() and public.context().has_public_key()
    batch = public.encrypt(np.array([[1.0, 2.0], [3.0, 4.0]]), columns=["a", "b"])
    spec = ModelSpec(columns=("a", "b"), layers=(Layer.from_arrays([[1.0, -1.0]], [0.5]),))
    out = keys.decrypt(EncryptedScorer(spec, public).score(batch))
    assert np.allclose(out, [-0.5, -0.5], atol=1e-6)
    symmetric = HEKeys.generate().public()
    with pytest.raises(UsageError, match="symmetric"):
        symmetric.encrypt(np.ones((1, 1)))
