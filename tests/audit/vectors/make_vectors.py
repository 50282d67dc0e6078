"""Write the committed audit-log test vectors (run from the repository root):

    python tests/audit/vectors/make_vectors.py [OUT_DIR]

Everything is deterministic (fixed keys, log id, times and salts), so rerunning it
reproduces the committed files byte for byte; test_audit_vectors checks that. The
keys are test-only and public: never use them for a real log.

Files:
    audit.key, checkpoint.pub      the audit key (hex) and the checkpoint public key (PEM)
    canonical.json                 non-canonical JSON in, canonical bytes out
    chain.json                     K_1..K_3 of the valid log, MAC and hash of entry 1
    valid.jsonl, valid.checkpoint  an intact log of 6 entries and a checkpoint of 5
    torn.jsonl                     the valid log with a crash-torn last line (verifies: 5)
    bad/*.jsonl, bad/*.checkpoint  tampered copies; expected.json says what verify reports
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # the repository root

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from privdl.audit.canonical import canonical_json  # noqa: E402
from privdl.audit.chain import GENESIS, initial_key, key_at, line_for, mac_of, ratchet  # noqa: E402
from privdl.audit.checkpoint import origin_for, sign_checkpoint  # noqa: E402
from privdl.keys import Secret  # noqa: E402
from tests.audit.audit_tampering import OPERATORS, join, truncate  # noqa: E402

AUDIT_KEY = Secret(hashlib.sha256(b"privdl test vector audit key").digest())
SIGNER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"privdl test vector checkpoint key").digest())
LOG_ID = "0123456789abcdef"
OTHER_LOG_ID = "fedcba9876543210"

CANONICAL_CASES = [
    '{"b": 1, "a": 2}',
    '{"a":1.50,"b":1e3,"c":-0.0,"d":1E-7,"e":100000000000000000000}',
    '{"name":"Zoë \\u00e9\\u20ac","emoji":"\\ud83d\\ude00","ctl":"tab\\there"}',
    '{"x":"caf\u00e9"}',
    '{"dup":1,"dup":2}',
    '{"nested":{"z":[3,2,{"b":true,"a":null}],"a":false}}',
    '{"slash":"a/b","quote":"say \\"hi\\"","back":"c:\\\\dir"}',
]


def _entries(log_id: str, n: int) -> list[dict]:
    events = ["anonymize", "risk", "budget.set", "train", "he.score", "erasure.request"]
    out = []
    for i in range(1, n + 1):
        entry = {
            "actor": "vector",
            "event": events[(i - 1) % len(events)],
            "kid": AUDIT_KEY.key_id,
            "log": log_id,
            "outcome": "refused" if i == 4 else "ok",
            "params": {"epsilon": 1.5, "i": i, "k": 5, "key_id": "kid_00112233aabbccdd"},
            "privdl": "0.1.0",
            "purpose": "test vectors",
            "seq": i,
            "time": f"2026-01-01T00:00:{i:02d}.000000Z",
            "v": 1,
        }
        if i == 4:
            entry["error"] = "BudgetExceededError"
        if i == 1:
            entry["inputs"] = [
                {
                    "bytes": 12,
                    "name": "raw.csv",
                    "rows": 2,
                    "columns": 3,
                    "sha256": hashlib.sha256(b"raw").hexdigest(),
                }
            ]
        out.append(entry)
    return out


def build_log(log_id: str, n: int) -> list[bytes]:
    key = initial_key(AUDIT_KEY, log_id)
    prev = GENESIS
    lines = []
    for entry in _entries(log_id, n):
        entry["prev"] = prev
        line = line_for(key, canonical_json(entry))
        lines.append(line)
        prev = hashlib.sha256(line).hexdigest()
        key = ratchet(key)
    return lines


def checkpoint_text(log_id: str, lines: list[bytes], size: int, signer=SIGNER) -> str:
    root = hashlib.sha256(lines[size - 1]).digest() if size else bytes(32)
    cp = sign_checkpoint(
        origin=origin_for(log_id), size=size, root_hash=root, signing_key=signer, time="2026-01-01T00:01:00Z"
    )
    return cp.text


def write_all(out: Path) -> None:
    (out / "bad").mkdir(parents=True, exist_ok=True)
    (out / "audit.key").write_text("hex:" + AUDIT_KEY.reveal().hex() + "\n")
    (out / "checkpoint.pub").write_bytes(
        SIGNER.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    cases = [{"input": c, "canonical": canonical_json(json.loads(c)).decode()} for c in CANONICAL_CASES]
    (out / "canonical.json").write_text(json.dumps(cases, indent=2, ensure_ascii=True) + "\n")

    lines = build_log(LOG_ID, 6)
    k1 = initial_key(AUDIT_KEY, LOG_ID)
    body1 = lines[0][len(b'{"entry":') : -len(b',"mac":"') - 64 - 2]
    chain = {
        "audit_key": AUDIT_KEY.reveal().hex(),
        "audit_key_id": AUDIT_KEY.key_id,
        "log_id": LOG_ID,
        "k1": k1.hex(),
        "k2": key_at(k1, 2).hex(),
        "k3": key_at(k1, 3).hex(),
        "entry1_mac": mac_of(k1, body1).decode(),
        "entry1_hash": hashlib.sha256(lines[0]).hexdigest(),
    }
    (out / "chain.json").write_text(json.dumps(chain, indent=2) + "\n")
    (out / "valid.jsonl").write_bytes(join(lines))
    (out / "valid.checkpoint").write_text(checkpoint_text(LOG_ID, lines, 5))
    (out / "torn.jsonl").write_bytes(join(lines[:5]) + lines[5][:57])

    expected: dict[str, dict] = {}
    positions = {
        "modify": 2,
        "modify_param": 6,
        "delete": 3,
        "swap": 2,
        "duplicate": 4,
        "insert_forged": 5,
        "append_forged": 7,
        "garbage_line": 1,
        "garbage_before": 3,
        "garbage_after": 2,
        "garbage_at_end": 7,
        "reencode": 4,
        "reorder_keys": 1,
    }
    for name, (op, _, _) in sorted(OPERATORS.items()):
        data, entry, kinds = op(lines, positions[name])
        (out / "bad" / f"{name}.jsonl").write_bytes(data)
        expected[name] = {"log": f"bad/{name}.jsonl", "entry": entry, "kind": sorted(kinds)[0]}
    data, entry, _ = truncate(lines, 3)
    (out / "bad" / "truncated.jsonl").write_bytes(data)
    expected["truncated"] = {
        "log": "bad/truncated.jsonl",
        "checkpoint": "valid.checkpoint",
        "entry": 4,
        "kind": "truncated",
    }
    forged = checkpoint_text(LOG_ID, lines, 5, Ed25519PrivateKey.from_private_bytes(bytes(32)))
    (out / "bad" / "forged.checkpoint").write_text(forged)
    expected["forged_checkpoint"] = {
        "log": "valid.jsonl",
        "checkpoint": "bad/forged.checkpoint",
        "entry": None,
        "kind": "checkpoint_forged",
    }
    edited = checkpoint_text(LOG_ID, lines, 5).replace("\n5\n", "\n6\n", 1)
    (out / "bad" / "edited.checkpoint").write_text(edited)
    expected["edited_checkpoint"] = {
        "log": "valid.jsonl",
        "checkpoint": "bad/edited.checkpoint",
        "entry": None,
        "kind": "checkpoint_forged",
    }
    other = build_log(OTHER_LOG_ID, 6)
    (out / "bad" / "replayed.checkpoint").write_text(checkpoint_text(OTHER_LOG_ID, other, 5))
    expected["replayed_checkpoint"] = {
        "log": "valid.jsonl",
        "checkpoint": "bad/replayed.checkpoint",
        "entry": None,
        "kind": "checkpoint_replayed",
    }
    (out / "bad" / "foreign.jsonl").write_bytes(join([lines[0], other[1], *lines[2:]]))
    expected["foreign"] = {"log": "bad/foreign.jsonl", "entry": 2, "kind": "foreign"}
    (out / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
