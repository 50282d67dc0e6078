"""privdl.signing: the one signer of model folders and audit checkpoints."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privdl import signing
from privdl.errors import KeyMissingError, SecurityError, TamperDetectedError, UsageError
from privdl.keys import Secret

FILES = {"model.safetensors": "ab" * 32, "meta.json": "cd" * 32}


def test_hmac_signature_verifies_and_binds_files_and_kind():
    key = Secret.generate()
    sig = signing.sign_digests(FILES, kind="privdl-model/1", key=key, purpose="model-signature")
    assert sig["alg"] == "hmac-sha256" and sig["key_id"] == key.derive("model-signature").key_id
    signing.verify_digests(sig, key, purpose="model-signature", label="m")
    for changed in (
        {**sig, "kind": "privdl-checkpoint/1"},
        {**sig, "files": {**FILES, "meta.json": "0" * 64}},
    ):
        with pytest.raises(TamperDetectedError) as err:
            signing.verify_digests(changed, key, purpose="model-signature", label="m")
        assert err.value.kind == "signature"
    with pytest.raises(TamperDetectedError):  # another purpose derives another key
        signing.verify_digests(sig, key, purpose="other", label="m")
    with pytest.raises(TamperDetectedError):
        signing.verify_digests(sig, Secret.generate(), purpose="model-signature", label="m")


def test_ed25519_signature_verifies_with_the_public_key_only():
    key = Ed25519PrivateKey.generate()
    sig = signing.sign_digests(FILES, kind="k", key=key, purpose="p")
    assert sig["alg"] == "ed25519" and sig["key_id"] == signing.ed25519_key_id(key.public_key())
    signing.verify_digests(sig, key.public_key(), purpose="p", label="m")
    with pytest.raises(TamperDetectedError):
        signing.verify_digests(sig, Ed25519PrivateKey.generate().public_key(), purpose="p", label="m")
    with pytest.raises(TamperDetectedError):
        signing.verify_digests({**sig, "signature": "zz"}, key.public_key(), purpose="p", label="m")
    with pytest.raises(KeyMissingError):
        signing.verify_digests(sig, Secret.generate(), purpose="p", label="m")


def test_unsigned_records_and_wrong_key_types():
    sig = signing.sign_digests(FILES, kind="k", key=None, purpose="p")
    assert sig["alg"] == "sha256" and "mac" not in sig
    signing.verify_digests(sig, None, purpose="p", label="m")
    with pytest.raises(SecurityError):
        signing.verify_digests(sig, Secret.generate(), purpose="p", label="m")
    with pytest.raises(KeyMissingError):
        signing.verify_digests(
            signing.sign_digests(FILES, kind="k", key=Secret.generate(), purpose="p"),
            None,
            purpose="p",
            label="m",
        )
    with pytest.raises(UsageError):
        signing.sign_digests(FILES, kind="k", key=b"raw bytes", purpose="p")
    with pytest.raises(TamperDetectedError):
        signing.verify_digests({"format": signing.SIGNATURE_FORMAT}, None, purpose="p", label="m")


def test_ed25519_primitives_and_constant_time_compare():
    key = Ed25519PrivateKey.generate()
    sig = signing.ed25519_sign(key, b"note")
    assert signing.ed25519_verify(key.public_key(), sig, b"note")
    assert not signing.ed25519_verify(key.public_key(), sig, b"other")
    assert len(signing.public_bytes(key)) == 32 == len(signing.public_bytes(key.public_key()))
    assert signing.digests_match("ab", "ab") and not signing.digests_match("ab", "ac")
    assert not signing.digests_match("\u00e9", "e")  # non-ASCII text does not raise


def test_format_is_that_of_folders_signed_before_signing_py():
    # computed with the signer privdl shipped before the one-signer redesign
    import hashlib

    files = {
        "model.safetensors": hashlib.sha256(b"weights").hexdigest(),
        "meta.json": hashlib.sha256(b'{"format": "privdl-model/1"}').hexdigest(),
    }
    key = Secret(bytes(range(32)))
    sig = signing.sign_digests(files, kind="privdl-model/1", key=key, purpose="model-signature")
    assert sig["mac"] == "b1adbf2c7d4e1a3fee07c84fb53475d2a0c0999c6ebd0f3545a12f4b50c51cd8"
    assert sig["key_id"] == "kid_8d36985e549ce982"
