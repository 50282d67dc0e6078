"""The committed test vectors: the format is stable and the verifier's answers are fixed."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from privdl.audit import verify_audit_log
from privdl.audit.canonical import canonical_json
from privdl.audit.chain import initial_key, key_at, mac_of
from privdl.errors import TamperDetectedError
from privdl.keys import Secret

VECTORS = Path(__file__).parent / "vectors"
EXPECTED = json.loads((VECTORS / "expected.json").read_text())


@pytest.fixture(scope="module")
def key() -> Secret:
    return Secret(bytes.fromhex((VECTORS / "audit.key").read_text().strip().removeprefix("hex:")))


def test_canonical_vectors() -> None:
    for case in json.loads((VECTORS / "canonical.json").read_text()):
        out = canonical_json(json.loads(case["input"]))
        assert out == case["canonical"].encode("ascii")
        assert canonical_json(json.loads(out)) == out  # a fixpoint


def test_chain_vectors(key: Secret) -> None:
    chain = json.loads((VECTORS / "chain.json").read_text())
    assert key.key_id == chain["audit_key_id"]
    k1 = initial_key(key, chain["log_id"])
    assert k1.hex() == chain["k1"]
    assert key_at(k1, 2).hex() == chain["k2"] and key_at(k1, 3).hex() == chain["k3"]
    line = (VECTORS / "valid.jsonl").read_bytes().splitlines()[0]
    body = line[len(b'{"entry":') : -len(b',"mac":"') - 64 - 2]
    assert mac_of(k1, body).decode() == chain["entry1_mac"]
    assert hashlib.sha256(line).hexdigest() == chain["entry1_hash"]


def test_valid_log(key: Secret) -> None:
    result = verify_audit_log(VECTORS / "valid.jsonl", key=key, thorough=True)
    assert (result.entries, result.log_id) == (6, "0123456789abcdef")
    result = verify_audit_log(
        VECTORS / "valid.jsonl",
        key=key,
        checkpoint=VECTORS / "valid.checkpoint",
        public_key=VECTORS / "checkpoint.pub",
    )
    assert result.checkpoint_size == 5


def test_torn_log(key: Secret) -> None:
    result = verify_audit_log(
        VECTORS / "torn.jsonl",
        key=key,
        checkpoint=VECTORS / "valid.checkpoint",
        public_key=VECTORS / "checkpoint.pub",
    )
    assert (result.entries, result.incomplete_tail) == (5, 57)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_negative_vectors(key: Secret, name: str) -> None:
    case = EXPECTED[name]
    kwargs = {}
    if "checkpoint" in case:
        kwargs = {"checkpoint": VECTORS / case["checkpoint"], "public_key": VECTORS / "checkpoint.pub"}
    with pytest.raises(TamperDetectedError) as info:
        verify_audit_log(VECTORS / case["log"], key=key, **kwargs)
    assert (info.value.entry, info.value.kind) == (case["entry"], case["kind"])


def test_vectors_are_reproducible(tmp_path: Path) -> None:
    """Regenerating gives the committed bytes: a format change must be deliberate."""
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    make_vectors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_vectors)
    make_vectors.write_all(tmp_path)
    committed = sorted(
        p.relative_to(VECTORS)
        for p in VECTORS.rglob("*")
        if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts
    )
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert committed == made
    for rel in committed:
        assert (VECTORS / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
