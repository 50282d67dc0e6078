"""End-to-end `privdl he` on a retention-shaped table (real TenSEAL, real sklearn)."""

from __future__ import annotations

import builtins
import io
import os
import stat

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("tenseal")

from privdl.cli import main

SENSITIVE = ["age", "sex", "city"]
PLAIN = ["plays_week1", "plays_week2"]
FEATURES = ["age", "sex=F", "city=Berlin", "city=Paris", "plays_week1", "plays_week2"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from privdl.encrypted.models import export_linear_model
    from privdl.encrypted.packing import feature_matrix

    d = tmp_path_factory.mktemp("he")
    rng = np.random.default_rng(7)
    n = 700
    users = pd.DataFrame(
        {
            "user_id": [f"u{i:04d}" for i in range(n)],
            "age": rng.integers(16, 70, n),
            "sex": rng.choice(["F", "M"], n),
            "city": rng.choice(["Berlin", "Paris", "Rome"], n),
            "plays_week1": rng.poisson(5, n),
            "plays_week2": rng.poisson(4, n),
        }
    )
    x = feature_matrix(users, FEATURES)
    y = (x[:, 4] + x[:, 5] - 0.05 * x[:, 0] + rng.normal(size=n) > 7).astype(int)
    clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    users.to_csv(d / "users.csv", index=False)
    export_linear_model(clf, d / "model.json", columns=FEATURES)
    return d, clf.predict_proba(x)[:, 1]


def _run(*args: str) -> int:
    return main([str(a) for a in args])


def _encrypt(d, keys, out, columns, *extra) -> int:
    """`privdl he encrypt` of the users table of ``d``."""
    return _run("he", "encrypt", d / "users.csv", "--keys", keys, "--columns", columns, "-o", out, *extra)


def _score(d, encrypted, public, out, *extra) -> int:
    """`privdl he score` with the exported model of ``d``."""
    return _run("he", "score", encrypted, "--model", d / "model.json", "--public", public, "-o", out, *extra)


def test_full_round_trip_with_hybrid_scoring_and_audit(workdir, monkeypatch, capsys):
    d, expected = workdir
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", "hex:" + "ab" * 32)
    keys, log = d / "keys", d / "audit.jsonl"
    assert _run("he", "keygen", "--out", keys) == 0
    assert stat.S_IMODE((keys / "secret.he").stat().st_mode) == 0o600
    model = ("--model", d / "model.json")
    assert _encrypt(d, keys, d / "users.he", ",".join(SENSITIVE), *model, "--audit-log", log) == 0

    # the scoring service: only public material is opened (secret.he would raise)
    real_open = builtins.open

    def guarded(path, *a, **k):
        if str(path).endswith("secret.he"):
            raise AssertionError("he score opened the secret key file")
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)
    plain = ("--plain", d / "users.csv", "--plain-columns", "plays_week1", "--plain-columns", "plays_week2")
    assert _score(d, d / "users.he", keys, d / "scores.he", *plain, "--audit-log", log) == 0
    monkeypatch.setattr(builtins, "open", real_open)
    monkeypatch.setattr(io, "open", real_open)

    assert (
        _run("he", "decrypt", d / "scores.he", "--keys", keys, "-o", d / "out.csv", "--audit-log", log) == 0
    )
    got = pd.read_csv(d / "out.csv")["score"].to_numpy()
    assert np.max(np.abs(got - expected)) < 1e-4

    from privdl.audit import iter_entries

    entries = list(iter_entries(log))
    events = [e["event"] for e in entries]
    assert events == ["he.encrypt", "he.score", "he.decrypt"]
    assert _run("audit", "verify", log) == 0
    assert entries[1]["params"]["key_id"] == entries[0]["params"]["key_id"]
    assert entries[1]["params"]["plain_columns"] == ["plays_week1", "plays_week2"]
    assert not any(i.get("missing") for e in entries for i in e["inputs"])
    text = log.read_text()
    assert "u0001" not in text


def test_every_file_score_reads_holds_no_secret(workdir):
    from privdl.encrypted.keys import PublicKeys
    from privdl.encrypted.wire import EncryptedBatch

    d, _ = workdir
    keys = d / "keys"
    if not (keys / "public.he").exists():
        assert _run("he", "keygen", "--out", keys) == 0
    public = PublicKeys.load(keys / "public.he")
    assert public.is_private() is False
    import tenseal as ts

    ctx = ts.context_from(EncryptedBatch.load(keys / "public.he").chunks[0].blobs[0])
    assert ctx.is_private() is False
    assert (keys / "public.he").stat().st_size < 10_000


def test_score_refuses_the_secret_file_and_leaves_nothing(workdir, capsys):
    d, _ = workdir
    keys = d / "keys2"
    assert _run("he", "keygen", "--out", keys) == 0
    assert _encrypt(d, keys, d / "u2.he", "age,sex,city", "--model", d / "model.json") == 0
    capsys.readouterr()
    code = _score(d, d / "u2.he", keys / "secret.he", d / "s2.he")
    assert code == 2 and not (d / "s2.he").exists()
    assert "public" in capsys.readouterr().err
    # a model column with no input is named, and no output is left behind
    code = _score(d, d / "u2.he", keys, d / "s2.he")
    assert code == 2 and not (d / "s2.he").exists()
    assert "plays_week1" in capsys.readouterr().err


def test_other_keys_cannot_decrypt(workdir, capsys):
    d, _ = workdir
    for name in ("ka", "kb"):
        assert _run("he", "keygen", "--out", d / name) == 0
    assert _encrypt(d, d / "ka", d / "a.he", ",".join(FEATURES)) == 0
    assert _score(d, d / "a.he", d / "ka", d / "a_scores.he") == 0
    capsys.readouterr()
    assert _run("he", "decrypt", d / "a_scores.he", "--keys", d / "kb", "-o", d / "x.csv") == 2
    assert "key set" in capsys.readouterr().err and not (d / "x.csv").exists()


def test_bad_values_are_named_by_column_and_row_not_value(tmp_path, capsys):
    pd.DataFrame({"age": ["31", "Jane Doe", "40"]}).to_csv(tmp_path / "bad.csv", index=False)
    assert _run("he", "keygen", "--out", tmp_path / "k") == 0
    capsys.readouterr()
    code = _run(
        "he",
        "encrypt",
        tmp_path / "bad.csv",
        "--keys",
        tmp_path / "k",
        "--columns",
        "age",
        "-o",
        tmp_path / "bad.he",
    )
    err = capsys.readouterr().err
    assert code == 2 and "'age'" in err and "row 2" in err and "Jane" not in err
    assert not (tmp_path / "bad.he").exists()


def test_keygen_refuses_weak_security_and_existing_keys(tmp_path, capsys):
    assert _run("he", "keygen", "--out", tmp_path / "k", "--security", "100") == 2
    assert "refused" in capsys.readouterr().err
    assert _run("he", "keygen", "--out", tmp_path / "k") == 0
    assert _run("he", "keygen", "--out", tmp_path / "k") == 2
    os.chmod(tmp_path / "k" / "secret.he", 0o644)
    assert (
        _run("he", "decrypt", tmp_path / "nothing.he", "--keys", tmp_path / "k", "-o", tmp_path / "o.csv")
        == 2
    )
