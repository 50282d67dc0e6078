"""privdl.fingerprint: one dict shape for files, folders, tables, arrays and bytes."""

import hashlib

import numpy as np
import pandas as pd

from privdl.fingerprint import (
    fingerprint,
    fingerprint_bytes,
    fingerprint_file,
    fingerprint_folder,
    sha256_file,
)


def test_file_and_folder(tmp_path):
    f = tmp_path / "data.csv"
    f.write_bytes(b"a,b\n1,2\n")
    digest = hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert sha256_file(f) == digest
    assert fingerprint(f) == fingerprint_file(f) == {"name": "data.csv", "sha256": digest, "bytes": 8}
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "w").write_bytes(b"w")
    fp = fingerprint(str(folder))
    assert fp == fingerprint_folder(folder) and fp["kind"] == "dir" and fp["files"] == 1
    (folder / "sub" / "w").write_bytes(b"x")
    assert fingerprint_folder(folder)["sha256"] != fp["sha256"]
    assert fingerprint(tmp_path / "gone") == {"name": "gone", "missing": True}


def test_mapping_table_array_and_bytes(tmp_path):
    f = tmp_path / "t.csv"
    f.write_bytes(b"x")
    assert fingerprint({"path": f, "rows": 3})["rows"] == 3
    frame = pd.DataFrame({"a": [1, 2]})
    assert fingerprint(frame)["kind"] == "table" and fingerprint(frame)["rows"] == 2
    assert fingerprint(np.zeros((2, 3)))["columns"] == 3
    assert fingerprint_bytes(b"abc") == {
        "kind": "bytes",
        "sha256": hashlib.sha256(b"abc").hexdigest(),
        "bytes": 3,
    }
    assert fingerprint(b"raw") == {"kind": "<bytes>"}  # raw bytes may be a key: not hashed by default
