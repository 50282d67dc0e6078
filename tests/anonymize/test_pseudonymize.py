import base64
import hmac

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privdl.anonymize import pseudonymize as P
from privdl.errors import InputError, KeyMissingError, PolicyError
from privdl.keys import Secret


def _reference_token(key: Secret, text: str) -> str:
    sub = key.derive("pseudonymize").reveal()
    return base64.b32encode(hmac.digest(sub, text.encode(), "sha256")[:20]).decode().lower()


def test_tokens_match_an_independent_hmac(key):
    values = pd.Series(["alice@example.org", "bob@example.org", "alice@example.org"])
    tokens = P.pseudonymize_values(values, key=key)
    assert tokens[0] == _reference_token(key, "alice@example.org")
    assert tokens[0] == tokens[2] != tokens[1]
    assert all(len(t) == 32 and set(t) <= set("abcdefghijklmnopqrstuvwxyz234567") for t in tokens)


def test_deterministic_per_key_and_differs_across_keys(key):
    values = pd.Series(["a", "b", "c"])
    other = Secret.generate()
    assert P.pseudonymize_values(values, key=key).tolist() == P.pseudonymize_values(values, key=key).tolist()
    assert set(P.pseudonymize_values(values, key=key)).isdisjoint(P.pseudonymize_values(values, key=other))


def test_domain_separates_tokens(key):
    values = pd.Series(["a"])
    assert (
        P.pseudonymize_values(values, key=key)[0] != P.pseudonymize_values(values, key=key, domain="crm")[0]
    )


def test_missing_values_stay_missing(key):
    tokens = P.pseudonymize_values(pd.Series(["a", None, np.nan, ""]), key=key)
    assert tokens[0] is not None and tokens[1:].isna().all()


@pytest.mark.parametrize(
    ("how", "a", "b"),
    [
        ("email", " Ana@X.org", "ana@x.org"),
        ("casefold", "ANA", "ana "),
        ("digits", "+1 (555) 010-9999", "+15550109999"),
        ("strip", " x ", "x"),
    ],
)
def test_explicit_normalization(key, how, a, b):
    tokens = P.pseudonymize_values(pd.Series([a, b]), key=key, normalize=how)
    assert tokens[0] == tokens[1]
    raw = P.pseudonymize_values(pd.Series([a, b]), key=key)
    assert raw[0] != raw[1]  # without normalization the values differ


def test_integers_and_integral_floats_hash_alike(key):
    ints = P.pseudonymize_values(pd.Series([5550101, 5550102]), key=key)
    floats = P.pseudonymize_values(pd.Series([5550101.0, np.nan, 5550102.0]), key=key)
    assert ints[0] == floats[0] and ints[1] == floats[2]


def test_parallel_path_matches_serial(key, monkeypatch):
    monkeypatch.setattr(P, "_PARALLEL_MIN", 10)
    values = pd.Series([f"user{i}@x.org" for i in range(500)])
    assert (
        P.pseudonymize_values(values, key=key, workers=2).tolist()
        == P.pseudonymize_values(values, key=key, workers=1).tolist()
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=40))
def test_equal_inputs_equal_tokens_property(values):
    key = Secret(b"p" * 32)
    tokens = P.pseudonymize_values(pd.Series(values, dtype=object), key=key)
    for v, t in zip(values, tokens, strict=True):
        assert t == _reference_token(key, v)


def test_encrypt_is_deterministic_and_reversible(key):
    values = pd.Series(["ana@x.org", "bo@y.org", "ana@x.org", None])
    enc = P.encrypt_values(values, key=key)
    assert enc[0] == enc[2] != enc[1] and enc[3] is None
    assert all("ana" not in str(e) for e in enc)
    assert P.decrypt_values(enc, key=key).tolist()[:3] == ["ana@x.org", "bo@y.org", "ana@x.org"]
    with pytest.raises(InputError, match="does not decrypt"):
        P.decrypt_values(enc, key=Secret.generate())
    tampered = enc.copy()
    tampered[0] = tampered[0][:-2] + ("A" if tampered[0][-2] != "A" else "B") + tampered[0][-1]
    with pytest.raises(InputError):
        P.decrypt_values(tampered, key=key)


def test_mask_keeps_tail_and_separators():
    out = P.mask_values(pd.Series(["+49 30 60081581", "1234", None]), keep_last=4)
    assert out.tolist() == ["+** ** ****1581", "1234", None]
    assert P.mask_values(pd.Series(["abcdef"]), keep_last=0, char="#")[0] == "######"
    with pytest.raises(PolicyError):
        P.mask_values(pd.Series(["x"]), keep_last=-1)


def test_redact():
    assert P.redact_values(pd.Series(["x", None])).tolist() == ["[REDACTED]", None]


def test_date_shift_is_consistent_per_person(key):
    dates = pd.Series(["2020-01-01", "2020-03-01", "2021-06-30", "2019-12-31"])
    people = pd.Series(["u1", "u1", "u2", "u2"])
    shifted = pd.to_datetime(P.shift_dates(dates, people, key=key, max_days=30))
    delta = (shifted - pd.to_datetime(dates)).dt.days
    assert delta[0] == delta[1] and delta[2] == delta[3]
    assert all(1 <= abs(d) <= 30 for d in delta)
    # the same person keeps the same offset in another table shifted with the key
    again = pd.to_datetime(P.shift_dates(pd.Series(["2022-02-02"]), pd.Series(["u1"]), key=key, max_days=30))
    assert (again - pd.to_datetime(pd.Series(["2022-02-02"]))).dt.days[0] == delta[0]


def test_date_shift_offsets_spread(key):
    people = pd.Series([f"u{i}" for i in range(2000)])
    offsets = P.date_offsets(people, key=key, max_days=10)
    assert set(offsets) == set(range(-10, 0)) | set(range(1, 11))


def test_date_shift_bad_dates_counted_not_shown(key):
    with pytest.raises(InputError, match="2 values are not ISO dates") as info:
        P.shift_dates(
            pd.Series(["2020-01-01", "secret", "nope"], name="d"), pd.Series(["a", "b", "c"]), key=key
        )
    assert "secret" not in str(info.value)


def test_keyed_transform_without_key():
    frame = pd.DataFrame({"email": ["a"]})
    with pytest.raises(KeyMissingError, match="email"):
        P.apply_rule(frame, "email", "pseudonymize", {}, None)


def test_no_unkeyed_hash_is_offered():
    assert not any("hash" in name or "sha" in name for name in P.TRANSFORMS)
