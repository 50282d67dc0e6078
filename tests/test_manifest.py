import json

import pytest

from privdl.errors import InputError
from privdl.manifest import RunManifest, diff_manifests


def test_collect_fingerprints_data_and_model(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("a\n1\n")
    m = RunManifest.collect(
        config={"epsilon": 2.0, "key_id": "kid_x"}, data_files=[data], model_state={"w": b"abc"}
    )
    assert m.data[data.name]["bytes"] == 4  # base names: folders name people
    assert m.model_state["w"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert "numpy" in m.libraries and m.hardware["cpus"] >= 1
    path = m.save(tmp_path / "m.json")
    assert RunManifest.load(path) == RunManifest.from_json(json.loads(path.read_text()))
    # to_dict -> dict, to_json -> str; from_json reads either the string or the parsed file
    assert isinstance(m.to_dict(), dict) and isinstance(m.to_json(), str)
    assert RunManifest.from_json(m.to_json()) == RunManifest.from_dict(m.to_dict()) == RunManifest.load(path)
    assert RunManifest.from_json(path.read_text()) == RunManifest.load(path)


def test_diff_lists_changed_fields(tmp_path, run_cli):
    a = RunManifest.collect(config={"epsilon": 2.0, "epochs": 5})
    b = RunManifest.collect(config={"epsilon": 3.0, "epochs": 5})
    rows = diff_manifests(a, b)
    assert rows == [("config.epsilon", 2.0, 3.0)]
    pa, pb = a.save(tmp_path / "a.json"), b.save(tmp_path / "b.json")
    code, out, _ = run_cli("diff", pa, pb, "--json")
    assert code == 1 and json.loads(out)[0]["field"] == "config.epsilon"
    code, out, _ = run_cli("diff", pa, pa)
    assert code == 0 and "no differences" in out


def test_load_rejects_other_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{}")
    with pytest.raises(InputError, match="not a privdl run manifest"):
        RunManifest.load(p)


def test_anonymization_report_embeds_the_manifest_and_the_entry_its_hash(tmp_path, users, key, run_cli):
    import secrets

    import privdl
    from privdl.keys import Secret

    log = privdl.AuditLog(tmp_path / "audit.jsonl", key=Secret(secrets.token_bytes(32)))
    policy = privdl.Policy(identifiers=["user_id", "email", "full_name", "phone", "ip"], quasi_identifiers=["age"], k=3)
    anonymizer = privdl.Anonymizer(policy, key=key, audit_log=log)
    released = anonymizer.fit_transform(users)
    manifest = RunManifest.from_dict(anonymizer.report_.manifest)
    entry = json.loads(log.path.read_text().splitlines()[-1])["entry"]
    assert entry["params"]["manifest_sha256"] == manifest.sha256()
    assert manifest.config["key_id"] == key.key_id and manifest.data["input"]["rows"] == len(users)
    assert manifest.model_state["released table"] == privdl.fingerprint.fingerprint_frame(released)["sha256"]
    text = manifest.to_json()
    assert key.reveal().hex() not in text and str(users["email"].iloc[0]) not in text
    for name in ("a.html", "a.md", "a.json"):
        anonymizer.report_.save(tmp_path / name)
        assert RunManifest.load(tmp_path / name) == manifest
    # another k: the diff names the configuration and the released table, not the input
    other = privdl.Anonymizer(
        privdl.Policy(identifiers=["user_id", "email", "full_name", "phone", "ip"], quasi_identifiers=["age"], k=4),
        key=key,
    )
    other.fit_transform(users)
    other.report_.save(tmp_path / "b.json")
    code, out, _ = run_cli("diff", tmp_path / "a.html", tmp_path / "b.json", "--json")
    fields = {r["field"] for r in json.loads(out)}
    assert code == 1 and "config.policy.k" in fields and not any(f.startswith("data.") for f in fields)


def test_budget_report_embeds_a_manifest_of_the_ledger(tmp_path):
    import privdl
    from privdl.budget.report import PrivacyReport

    ledger = privdl.BudgetLedger(tmp_path / "b.db")
    ledger.set_budget("ds-manifest", epsilon=4.0, delta=1e-5)
    report = PrivacyReport.from_ledger(ledger, "ds-manifest")
    report.save(tmp_path / "budget.html")
    loaded = RunManifest.load(tmp_path / "budget.html")
    assert loaded.config["dataset_id"] == "ds-manifest" and loaded.config["total_epsilon"] == 4.0
    assert loaded.data["ledger runs"]["rows"] == 0
    assert PrivacyReport.from_json(report.to_json()).manifest == report.manifest


def test_load_names_what_holds_no_manifest(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "page.html").write_text("<html><body>no manifest</body></html>")
    for target, words in (("folder", "holds no manifest.json"), ("page.html", "holds none"), ("nope", "does not exist")):
        with pytest.raises(InputError, match=words):
            RunManifest.load(tmp_path / target)


def test_diff_of_something_without_a_manifest_is_exit_2(tmp_path, run_cli):
    good = RunManifest.collect(config={"epsilon": 1.0}).save(tmp_path / "m.json")
    (tmp_path / "notes.md").write_text("# just notes\n")
    code, out, err = run_cli("diff", good, tmp_path / "notes.md")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "notes.md" in err


def test_diff_warns_about_data_it_cannot_see(tmp_path, run_cli):
    loader = {"kind": "DataLoader", "sha256": None}
    a = RunManifest.collect(config={"epochs": 1}, data={"training data": loader}).save(tmp_path / "a.json")
    code, out, err = run_cli("diff", a, a)
    assert code == 0 and "no differences" in out
    assert "the training data has no fingerprint" in err


def test_local_changes_to_the_source_are_a_source_difference():
    import dataclasses

    from privdl.manifest import diff_components

    m = RunManifest.collect(config={"epochs": 1})
    assert m.source_modified in (True, False, None)  # None outside a git checkout
    changed = dataclasses.replace(m, source_modified=not m.source_modified)
    assert diff_components(m, changed) == [("source", [("source_modified", m.source_modified, not m.source_modified)])]
