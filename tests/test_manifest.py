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
