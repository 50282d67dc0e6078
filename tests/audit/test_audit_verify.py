"""The verifier: every listed kind of tampering is detected and named at the right entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privdl.audit import AuditLog, verify_audit_log
from privdl.errors import InputError, KeyMissingError, TamperDetectedError
from privdl.keys import Secret
from tests.audit.audit_tampering import OPERATORS, join, truncate


def _fill(log: AuditLog, n: int) -> list[bytes]:
    for i in range(n):
        log.append("anonymize" if i % 2 else "risk", params={"k": 5, "i": i}, subjects=[f"p{i}"])
    return log.path.read_bytes().splitlines()


@pytest.mark.parametrize("name", sorted(OPERATORS))
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_each_tampering_is_named(log: AuditLog, audit_key: Secret, name: str, where: str) -> None:
    lines = _fill(log, 6)
    op, _, rule = OPERATORS[name]
    j = {"first": 1, "middle": 3, "last": 6}[where]
    if rule == "not_last" and j == 6:
        j = 5
    data, entry, kinds = op(lines, j)
    log.path.write_bytes(data)
    with pytest.raises(TamperDetectedError) as info:
        verify_audit_log(log.path, key=audit_key)
    assert info.value.entry == entry, str(info.value)
    assert info.value.kind in kinds, str(info.value)
    assert f"entry {entry}" in str(info.value)
    assert str(log.path) in str(info.value)


def test_intact_log_verifies(log: AuditLog, audit_key: Secret) -> None:
    _fill(log, 5)
    result = verify_audit_log(log.path, key=audit_key)
    assert result.entries == 5
    assert result.incomplete_tail == 0
    assert "OK, 5 entries" in result.summary()
    assert verify_audit_log(log.path, key=audit_key, thorough=True).head == result.head


def test_flipped_byte_anywhere_is_detected(log: AuditLog, audit_key: Secret) -> None:
    lines = _fill(log, 3)
    data = bytearray(join(lines))
    for pos in range(0, len(data) - 1, 7):
        if data[pos] == ord("\n"):
            continue
        tampered = bytearray(data)
        tampered[pos] ^= 0x01
        log.path.write_bytes(bytes(tampered))
        line_no = data[:pos].count(b"\n") + 1
        with pytest.raises(TamperDetectedError) as info:
            verify_audit_log(log.path, key=audit_key)
        assert info.value.entry == line_no, (pos, str(info.value))


def test_truncation_is_invisible_without_checkpoint(log: AuditLog, audit_key: Secret) -> None:
    lines = _fill(log, 4)
    data, _, _ = truncate(lines, 2)
    log.path.write_bytes(data)
    assert verify_audit_log(log.path, key=audit_key).entries == 2  # the documented limit


def test_wrong_key(log: AuditLog) -> None:
    _fill(log, 2)
    with pytest.raises(TamperDetectedError) as info:
        verify_audit_log(log.path, key=Secret.generate())
    assert (info.value.entry, info.value.kind) == (1, "wrong_key")


def test_key_from_environment(log: AuditLog, audit_key: Secret, monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(log, 1)
    with pytest.raises(KeyMissingError):
        verify_audit_log(log.path)
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", "hex:" + audit_key.reveal().hex())
    assert verify_audit_log(log.path).entries == 1


def test_missing_file_is_input_error(tmp_path: Path, audit_key: Secret) -> None:
    with pytest.raises(InputError):
        verify_audit_log(tmp_path / "nope.jsonl", key=audit_key)


def test_empty_log_verifies(tmp_path: Path, audit_key: Secret) -> None:
    p = tmp_path / "empty.jsonl"
    p.write_bytes(b"")
    result = verify_audit_log(p, key=audit_key)
    assert result.entries == 0 and result.log_id is None


@pytest.mark.parametrize("cut", [1, 5, 9, 30, -3, -1])
def test_torn_last_line_is_reported_not_fatal(log: AuditLog, audit_key: Secret, cut: int) -> None:
    lines = _fill(log, 3)
    torn = lines[2][:cut]
    log.path.write_bytes(join(lines[:2]) + torn)
    result = verify_audit_log(log.path, key=audit_key)
    assert result.entries == 2
    assert result.incomplete_tail == len(torn)
    assert "incomplete last line" in result.summary()


def test_blank_line_is_garbage(log: AuditLog, audit_key: Secret) -> None:
    lines = _fill(log, 2)
    log.path.write_bytes(join(lines) + b"\n")
    with pytest.raises(TamperDetectedError) as info:
        verify_audit_log(log.path, key=audit_key)
    assert (info.value.entry, info.value.kind) == (3, "garbage")


def test_crlf_line_endings_are_garbage(log: AuditLog, audit_key: Secret) -> None:
    lines = _fill(log, 2)
    log.path.write_bytes(b"".join(line + b"\r\n" for line in lines))
    with pytest.raises(TamperDetectedError) as info:
        verify_audit_log(log.path, key=audit_key)
    assert info.value.entry == 1 and info.value.kind in {"garbage", "noncanonical"}


def test_entry_of_another_log_is_foreign(tmp_path: Path, audit_key: Secret, log: AuditLog) -> None:
    lines = _fill(log, 3)
    other = AuditLog(tmp_path / "other.jsonl", key=audit_key, actor="tester")
    other_lines = _fill(other, 3)
    log.path.write_bytes(join([lines[0], other_lines[1], lines[2]]))
    with pytest.raises(TamperDetectedError) as info:
        verify_audit_log(log.path, key=audit_key)
    assert (info.value.entry, info.value.kind) == (2, "foreign")


def test_key_holder_breaking_the_chain_is_caught(log: AuditLog, audit_key: Secret) -> None:
    """Even entries with valid MACs must have the right seq and prev."""
    from privdl.audit.canonical import canonical_json
    from privdl.audit.chain import initial_key, key_at, line_for

    lines = _fill(log, 3)
    entry = json.loads(lines[1])["entry"]
    entry["prev"] = "f" * 64
    k2 = key_at(initial_key(audit_key, entry["log"]), 2)
    lines[1] = line_for(k2, canonical_json(entry))
    log.path.write_bytes(join(lines))
    with pytest.raises(TamperDetectedError) as info:
        verify_audit_log(log.path, key=audit_key)
    assert (info.value.entry, info.value.kind) == (2, "modified")


def test_thorough_catches_noncanonical_entry_with_valid_mac(log: AuditLog, audit_key: Secret) -> None:
    """A key holder could MAC a non-canonical body; only thorough mode re-encodes."""
    from privdl.audit.chain import initial_key, key_at, mac_of

    lines = _fill(log, 2)
    entry = json.loads(lines[1])["entry"]
    body = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    body = body.replace('"outcome":"ok"', '"outcome":"o\\u006b"').encode()
    k2 = key_at(initial_key(audit_key, entry["log"]), 2)
    lines[1] = b'{"entry":' + body + b',"mac":"' + mac_of(k2, body) + b'"}'
    log.path.write_bytes(join(lines))
    assert verify_audit_log(log.path, key=audit_key).entries == 2  # fast path: MAC only
    with pytest.raises(TamperDetectedError) as info:
        verify_audit_log(log.path, key=audit_key, thorough=True)
    assert (info.value.entry, info.value.kind) == (2, "noncanonical")


def test_several_deleted_entries_named(log: AuditLog, audit_key: Secret) -> None:
    lines = _fill(log, 6)
    log.path.write_bytes(join(lines[:2] + lines[4:]))
    with pytest.raises(TamperDetectedError) as info:
        verify_audit_log(log.path, key=audit_key)
    assert (info.value.entry, info.value.kind) == (3, "deleted")
    assert "3 to 4" in str(info.value)


def test_entry_moved_far_is_reordered(log: AuditLog, audit_key: Secret) -> None:
    lines = _fill(log, 6)
    moved = [lines[0], *lines[2:5], lines[1], lines[5]]
    log.path.write_bytes(join(moved))
    with pytest.raises(TamperDetectedError) as info:
        verify_audit_log(log.path, key=audit_key)
    assert (info.value.entry, info.value.kind) == (2, "reordered")
