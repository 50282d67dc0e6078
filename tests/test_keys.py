import copy
import os
import pickle
import stat

import pytest

from privdl.errors import InputError, KeyMissingError, SecurityError
from privdl.keys import Secret, key_id


def test_repr_str_format_never_show_bytes(key, key_hex):
    raw = key.reveal()
    for text in (repr(key), str(key), f"{key}", f"{key!r}", format(key, "")):
        assert key_hex not in text
        assert raw.hex()[:8] not in text
        assert key.key_id in text


def test_secret_cannot_be_pickled(key):
    with pytest.raises(SecurityError):
        pickle.dumps(key)
    assert copy.deepcopy(key) is key


def test_short_key_refused():
    with pytest.raises(SecurityError, match="at least 32"):
        Secret(b"x" * 31)


def test_from_env_formats(monkeypatch, key_hex):
    monkeypatch.setenv("K1", key_hex)
    monkeypatch.setenv("K2", "hex:" + key_hex)
    import base64

    monkeypatch.setenv("K3", "base64:" + base64.b64encode(bytes.fromhex(key_hex)).decode())
    keys = [Secret.from_env(n) for n in ("K1", "K2", "K3")]
    assert keys[0] == keys[1] == keys[2]
    assert keys[0].reveal() == bytes.fromhex(key_hex)


def test_from_env_missing_and_short(monkeypatch):
    monkeypatch.delenv("NOPE_PRIVDL", raising=False)
    with pytest.raises(KeyMissingError, match="NOPE_PRIVDL"):
        Secret.from_env("NOPE_PRIVDL")
    monkeypatch.setenv("SHORT", "hex:" + "ab" * 16)
    with pytest.raises(SecurityError):
        Secret.from_env("SHORT")
    monkeypatch.setenv("BAD", "hex:zz")
    with pytest.raises(InputError):
        Secret.from_env("BAD")


def test_from_file_refuses_readable_by_others(tmp_path, key):
    path = tmp_path / "key"
    key.to_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Secret.from_file(path) == key
    os.chmod(path, 0o644)
    with pytest.raises(SecurityError, match="chmod 600"):
        Secret.from_file(path)
    with pytest.raises(KeyMissingError):
        Secret.from_file(tmp_path / "absent")


def test_derive_separates_purposes(key):
    a, b = key.derive("pseudonymize"), key.derive("encrypt")
    assert a != b and a != key
    assert a == key.derive("pseudonymize")  # deterministic
    assert a.key_id != key.key_id


def test_key_id_is_stable_and_short(key):
    assert key_id(key) == key.key_id == key_id(key.reveal())
    assert key.key_id.startswith("kid_") and len(key.key_id) == 20
    assert Secret.generate().key_id != key.key_id


# -- text passphrases are refused (issue 15): key_id is public, a typed key is guessable
PHRASE = "correct horse battery staple, long enough for any length check"


@pytest.mark.parametrize(
    "text",
    [
        PHRASE,
        "base64:" + __import__("base64").b64encode(PHRASE.encode()).decode(),  # text, encoded
        "hex:" + PHRASE.encode().hex(),
        PHRASE.encode().hex(),  # bare hex of text
    ],
    ids=["plain", "base64-of-text", "hex-of-text", "bare-hex-of-text"],
)
def test_text_keys_refused_from_env_with_how_to_make_one(monkeypatch, text):
    monkeypatch.setenv("PRIVDL_TEST_PHRASE", text)
    with pytest.raises(SecurityError) as info:
        Secret.from_env("PRIVDL_TEST_PHRASE")
    message = str(info.value)
    assert "PRIVDL_TEST_PHRASE" in message and "privdl keygen -o KEYFILE" in message
    assert "horse" not in message and text not in message


@pytest.mark.parametrize(
    "data",
    [PHRASE.encode() + b"\n", ("pässwörter sind keine schlüssel " * 2).encode("utf-8")],
    ids=["ascii", "utf-8"],
)
def test_text_key_files_refused(tmp_path, data):
    path = tmp_path / "phrase.key"
    path.write_bytes(data)
    path.chmod(0o600)
    with pytest.raises(SecurityError, match="privdl keygen"):
        Secret.from_file(path)


def test_empty_key_file_says_empty(tmp_path):
    path = tmp_path / "empty.key"
    path.write_bytes(b"\n")
    path.chmod(0o600)
    with pytest.raises(SecurityError, match="is empty; make a random key"):
        Secret.from_file(path)


def test_random_keys_in_every_accepted_form(tmp_path, monkeypatch):
    import base64
    import secrets

    raw = secrets.token_bytes(32)  # all 32 bytes printable text: probability < 1e-13
    binary = tmp_path / "raw.key"
    binary.write_bytes(raw)
    binary.chmod(0o600)
    assert Secret.from_file(binary).reveal() == raw
    for text in ("hex:" + raw.hex(), raw.hex(), "base64:" + base64.b64encode(raw).decode(),
                 "base64:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")):  # fmt: skip
        monkeypatch.setenv("PRIVDL_TEST_RANDOM", text)
        assert Secret.from_env("PRIVDL_TEST_RANDOM").reveal() == raw
    # the fixed test keys of the suite stay valid (not random, but not text either)
    monkeypatch.setenv("PRIVDL_TEST_RANDOM", "hex:" + "ab" * 32)
    assert Secret.from_env("PRIVDL_TEST_RANDOM").reveal() == b"\xab" * 32
