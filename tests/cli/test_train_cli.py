"""`privdl train` as a user runs it, and `privdl diff` on what it writes."""

from __future__ import annotations

import json
import secrets

import pandas as pd
import pytest

from privdl.manifest import RunManifest

pytest.importorskip("torch")
pytest.importorskip("opacus")

CONFIG = """
[train]
epochs = 2
batch_size = 64
seed = 3

[encoder]
features = ["age", "sex", "plays_week1", "plays_week2"]
numeric_bounds = { age = [16, 90], plays_week1 = [0, 60], plays_week2 = [0, 60] }
categories = { sex = ["female", "male", "diverse"], retained = [0, 1] }
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    import privdl

    monkeypatch.setenv("PRIVDL_AUDIT_KEY", secrets.token_hex(32))
    config = tmp_path / "train.toml"
    config.write_text(CONFIG)
    ledger = tmp_path / "budget.db"
    privdl.BudgetLedger(ledger).set_budget("ds-train-cli", epsilon=20.0, delta=1e-5)
    return tmp_path, config, ledger


def _train(run_cli, table, ledger, config, out, *extra):
    return run_cli(
        "train", table, "--target", "retained", "--model", "mlp:8", "--epsilon", "1",
        "--ledger", ledger, "--dataset-id", "ds-train-cli", "-o", out, "--config", config, *extra,
    )  # fmt: skip


def _entries(log):
    return [json.loads(line)["entry"] for line in log.read_text().splitlines()]


def test_train_writes_model_report_and_evidence(run_cli, users_csv, setup):
    from privdl.train.trainer import PrivateTrainer

    tmp, config, ledger = setup
    log, model, report = tmp / "audit.jsonl", tmp / "model", tmp / "privacy.json"
    code, out, err = _train(
        run_cli,
        users_csv,
        ledger,
        config,
        model,
        "--report",
        report,
        "--audit-log",
        log,
        "--subjects",
        "user_id",
    )
    assert code == 0, err
    assert "trained mlp:8 with epsilon" in out and "ledger" in out
    assert {p.name for p in model.iterdir()} >= {"manifest.json", "meta.json", "model.safetensors"}
    manifest = RunManifest.load(model)
    # the report embeds the same manifest; the audit entries record its hash
    assert RunManifest.load(report) == manifest
    assert json.loads(report.read_text())["manifest"]["config"]["max_grad_norm"] == 1.0
    events = [(e["event"], e["outcome"]) for e in _entries(log)]
    assert events == [("train", "started"), ("train", "ok"), ("train.save", "ok")]
    final, saved = _entries(log)[1:]
    assert final["params"]["manifest_sha256"] == saved["params"]["manifest_sha256"] == manifest.sha256()
    assert {o["name"] for o in saved["outputs"]} == {"model", "privacy.json"}
    assert "subjects" in final  # an erasure request finds this run
    # the configuration holds the layer table and the features, no seed and no key
    assert manifest.config["seed_given"] is True and "seed" not in manifest.config
    assert manifest.config["features"] and manifest.config["model"] == "mlp:8"
    assert manifest.data["training data"]["rows"] == 300
    loaded = PrivateTrainer.load(model)
    assert loaded.predict(pd.read_csv(users_csv).head(5)).shape[0] == 5


def test_out_dir_spelling_and_html_report(run_cli, users_csv, setup):
    tmp, config, ledger = setup
    code, _, err = _train(run_cli, users_csv, ledger, config, tmp / "unused", "--report", tmp / "r.html")
    assert code == 0, err
    code, _, err = run_cli(
        "train", users_csv, "--target", "retained", "--model", "logistic", "--epsilon", "1",
        "--ledger", ledger, "--dataset-id", "ds-train-cli", "--out-dir", tmp / "m2", "--config", config,
    )  # fmt: skip
    assert code == 0, err and (tmp / "m2" / "manifest.json").is_file()
    html = (tmp / "r.html").read_text()
    assert "Run manifest" in html and "reproduces the model state bit for bit" in html
    assert "<script" not in html
    assert RunManifest.load(tmp / "r.html") == RunManifest.load(tmp / "unused")


def test_seeded_cpu_runs_reproduce_bit_for_bit(run_cli, users_csv, setup):
    tmp, config, ledger = setup
    code, _, err = _train(run_cli, users_csv, ledger, config, tmp / "a")
    assert code == 0, err
    code, out, err = _train(run_cli, users_csv, ledger, config, tmp / "b", "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["manifest_sha256"] == RunManifest.load(tmp / "b").sha256()
    assert printed["reproducibility"]["bitwise"] is True and printed["model_folder"] == str(tmp / "b")
    assert (tmp / "a" / "model.safetensors").read_bytes() == (tmp / "b" / "model.safetensors").read_bytes()
    assert RunManifest.load(tmp / "a").reproducibility["bitwise"] is True
    code, out, _ = run_cli("diff", tmp / "a", tmp / "b")
    assert code == 0 and "no differences" in out


def test_diff_names_exactly_the_changed_flag(run_cli, users_csv, setup):
    tmp, config, ledger = setup
    assert _train(run_cli, users_csv, ledger, config, tmp / "a")[0] == 0
    assert _train(run_cli, users_csv, ledger, config, tmp / "b", "--max-grad-norm", "0.5")[0] == 0
    code, out, _ = run_cli("diff", tmp / "a", tmp / "b", "--json")
    rows = json.loads(out)
    assert code == 1
    causes = [(r["component"], r["field"], r["a"], r["b"]) for r in rows if r["component"] != "model state"]
    assert causes == [("configuration", "config.max_grad_norm", 1.0, 0.5)]
    code, text, _ = run_cli("diff", tmp / "a", tmp / "b")
    assert code == 1 and text.index("configuration") < text.index("model state")
    assert "max_grad_norm: 1.0 -> 0.5" in text


def test_diff_names_one_changed_row(run_cli, users_csv, setup):
    tmp, config, ledger = setup
    frame = pd.read_csv(users_csv)
    frame.loc[17, "plays_week1"] = int(frame.loc[17, "plays_week1"]) + 1
    changed = tmp / "changed.csv"
    frame.to_csv(changed, index=False)
    assert _train(run_cli, users_csv, ledger, config, tmp / "a", "--report", tmp / "a.json")[0] == 0
    assert _train(run_cli, changed, ledger, config, tmp / "b")[0] == 0
    code, out, _ = run_cli("diff", tmp / "a.json", tmp / "b", "--json")  # a report against a folder
    causes = {(r["component"], r["field"]) for r in json.loads(out) if r["component"] != "model state"}
    assert code == 1 and causes == {("training data", "data.training data.sha256")}


def test_secure_mode_and_gpu_runs_are_stated_not_reproducible(run_cli, users_csv, setup):
    from torch import nn

    from privdl.train.provenance import reproducibility
    from privdl.train.trainer import PrivateTrainer

    tmp, _config, ledger = setup
    secure = tmp / "secure.toml"
    secure.write_text(CONFIG.replace("seed = 3", "secure_mode = true"))
    code, _, err = _train(run_cli, users_csv, ledger, secure, tmp / "s", "--report", tmp / "s.md")
    assert code == 0, err
    rep = RunManifest.load(tmp / "s").reproducibility
    assert rep["bitwise"] is False and "secure_mode" in rep["reason"]
    assert "does not reproduce the model state bit for bit" in (tmp / "s.md").read_text()
    assert RunManifest.load(tmp / "s.md") == RunManifest.load(tmp / "s")
    gpu = PrivateTrainer(nn.Linear(2, 1), epsilon=1.0, seed=1, device="cuda")
    gpu.device_ = "cuda:0"  # what fit records on a GPU machine
    assert reproducibility(gpu)["bitwise"] is False and "GPU" in reproducibility(gpu)["reason"]


@pytest.mark.parametrize(
    ("extra", "config_text", "message"),
    [
        ((), "[train]\nepoch = 2\n", "unknown key 'epoch' in [train]"),
        ((), "[train]\nepochs = 'two'\n", "epochs must be an integer"),
        ((), "[training]\n", "unknown section [training]"),
        (("--model", "forest"), CONFIG, "--model 'forest'"),
        (("--target", "nope"), CONFIG, "no column 'nope'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_output(
    run_cli, users_csv, setup, extra, config_text, message
):
    tmp, _, ledger = setup
    config = tmp / "bad.toml"
    config.write_text(config_text)
    code, _out, err = _train(
        run_cli, users_csv, ledger, config, tmp / "m", "--report", tmp / "r.html", *extra
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp / "m").exists() and not (tmp / "r.html").exists()


def test_budget_exceeded_exits_1_and_writes_nothing(run_cli, users_csv, setup):
    tmp, config, ledger = setup
    log = tmp / "audit.jsonl"
    code, _, err = run_cli(
        "train", users_csv, "--target", "retained", "--model", "logistic", "--epsilon", "25",
        "--ledger", ledger, "--dataset-id", "ds-train-cli", "-o", tmp / "m", "--config", config,
        "--report", tmp / "r.html", "--audit-log", log,
    )  # fmt: skip
    assert code == 1 and "run refused" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp / "m").exists() and not (tmp / "r.html").exists()
    assert _entries(log)[-1]["outcome"] == "refused"


def test_policy_hierarchies_give_the_domains(run_cli, setup):
    """--policy: an ARX hierarchy is the public vocabulary; domains="policy" refuses the rest."""
    from tests.conftest import DATA

    tmp, _, ledger = setup
    policy = tmp / "policy.toml"
    policy.write_text(
        f'quasi_identifiers = ["education"]\nk = 2\n[hierarchies]\neducation = "{DATA / "adult_hierarchy_education.csv"}"\n'
    )
    config = tmp / "adult.toml"
    config.write_text(
        '[train]\nepochs = 1\nbatch_size = 128\nseed = 1\ndomains = "policy"\n'
        '[encoder]\nfeatures = ["education", "age"]\nnumeric_bounds = { age = [17, 90] }\n'
        'categories = { "salary-class" = ["<=50K", ">50K"] }\n'
    )
    args = ["train", DATA / "adult_2000.csv", "--target", "salary-class", "--model", "logistic", "--epsilon", "1",
            "--ledger", ledger, "--dataset-id", "ds-train-cli", "--config", config, "--sep", ";"]  # fmt: skip
    code, _, err = run_cli(*args, "-o", tmp / "m", "--policy", policy)
    assert code == 0, err
    features = RunManifest.load(tmp / "m").config["features"]
    assert any(f.startswith("education=") for f in features) and "education=Bachelors" in features
    # without the policy the vocabulary has no public source: refused, nothing written
    code, _, err = run_cli(*args, "-o", tmp / "m2")
    assert code == 2 and "education" in err and not (tmp / "m2").exists()


def test_user_level_run_from_the_config(run_cli, setup):
    """[train] privacy_unit = "user": epsilon per person (all their records), stated as such."""
    import privdl

    tmp, _, ledger = setup
    privdl.BudgetLedger(ledger).set_budget("ds-users", epsilon=20.0, delta=1e-5, privacy_unit="user")
    rng = __import__("numpy").random.default_rng(0)
    people = [f"p{i:03d}" for i in range(120)]
    rows = [
        {"user": p, "plays": int(rng.integers(0, 30)), "retained": int(rng.integers(0, 2))}
        for p in people
        for _ in range(int(rng.integers(1, 5)))
    ]
    table = tmp / "events.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    config = tmp / "user.toml"
    config.write_text(
        '[train]\nepochs = 2\nbatch_size = 32\nseed = 1\nprivacy_unit = "user"\nmax_records_per_user = 4\n'
        'user_column = "user"\n[encoder]\nfeatures = ["plays"]\nnumeric_bounds = { plays = [0, 30] }\n'
        "categories = { retained = [0, 1] }\n"
    )
    code, out, err = run_cli(
        "train", table, "--target", "retained", "--model", "logistic", "--epsilon", "2", "--ledger", ledger,
        "--dataset-id", "ds-users", "-o", tmp / "m", "--config", config, "--report", tmp / "r.json",
    )  # fmt: skip
    assert code == 0, err
    assert "per user" in out
    assert json.loads((tmp / "r.json").read_text())["privacy_unit"]["unit"] == "user"
    bad = tmp / "bad.toml"
    bad.write_text('[train]\nprivacy_unit = "user"\n')
    code, _, err = run_cli(
        "train", table, "--target", "retained", "--model", "logistic", "--epsilon", "2", "--ledger", ledger,
        "--dataset-id", "ds-users", "-o", tmp / "m2", "--config", bad,
    )  # fmt: skip
    assert code == 2 and "user_column" in err and not (tmp / "m2").exists()


def test_user_level_run_from_flags(run_cli, setup):
    """--privacy-unit user --user-column C --max-records-per-user M, no config needed; the
    flags are checked before the table is read or the budget touched."""
    import privdl

    tmp, _, ledger = setup
    privdl.BudgetLedger(ledger).set_budget("ds-users-flags", epsilon=20.0, delta=1e-5, privacy_unit="user")
    rng = __import__("numpy").random.default_rng(1)
    rows = [
        {"user": f"p{i:03d}", "plays": int(rng.integers(0, 30)), "retained": int(rng.integers(0, 2))}
        for i in range(120)
        for _ in range(int(rng.integers(1, 6)))
    ]
    table = tmp / "events-flags.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    config = tmp / "enc.toml"
    config.write_text(
        "[train]\nepochs = 2\nbatch_size = 32\nseed = 1\n[encoder]\nfeatures = [\"plays\"]\n"
        "numeric_bounds = { plays = [0, 30] }\ncategories = { retained = [0, 1] }\n"
    )
    base = ("train", table, "--target", "retained", "--model", "logistic", "--epsilon", "2", "--ledger", ledger,
            "--dataset-id", "ds-users-flags", "--config", config)  # fmt: skip
    code, out, err = run_cli(
        *base, "-o", tmp / "mu", "--privacy-unit", "user", "--user-column", "user", "--max-records-per-user", "3",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["privacy_unit"] == "user" and result["ledger_spent"] == pytest.approx(result["epsilon"], rel=1e-6)
    spent = privdl.BudgetLedger(ledger).spent("ds-users-flags")
    for extra, words in (
        (("--privacy-unit", "user", "--max-records-per-user", "3"), "--user-column"),
        (("--privacy-unit", "user", "--user-column", "user"), "--max-records-per-user"),
        (("--user-column", "user", "--max-records-per-user", "3"), "--privacy-unit user"),
        (("--privacy-unit", "person", "--user-column", "user", "--max-records-per-user", "3"), "--privacy-unit"),
        (("--privacy-unit", "user", "--user-column", "nobody", "--max-records-per-user", "3"), "nobody"),
    ):
        code, out, err = run_cli(*base, "-o", tmp / "bad", *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, (extra, err)
        assert not (tmp / "bad").exists()
    assert privdl.BudgetLedger(ledger).spent("ds-users-flags") == spent  # nothing charged
    # refused before the table is read: a missing table is not what it reports
    code, _, err = run_cli("train", tmp / "no-such-table.csv", *base[2:], "-o", tmp / "bad",
                           "--privacy-unit", "user", "--max-records-per-user", "3")  # fmt: skip
    assert code == 2 and "--user-column" in err and "no-such-table" not in err
