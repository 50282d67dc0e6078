from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privdl.encrypted.params import ParameterSet
from privdl.encrypted.wire import (
    BatchHeader,
    BatchWriter,
    Chunk,
    EncryptedBatch,
    iter_chunks,
    read_batch_header,
)
from privdl.errors import FormatError, InputError, KeyMissingError

PARAMS = ParameterSet()


def _batch(rows=(3, 2)) -> EncryptedBatch:
    header = BatchHeader(kind="features", params=PARAMS, key_id="he_0011223344556677", columns=("a", "b"))
    chunks = tuple(Chunk(r, (bytes([i]) * (10 + i), bytes([i + 1]) * 7)) for i, r in enumerate(rows))
    return EncryptedBatch(header, chunks)


def test_roundtrip_bytes_and_file(tmp_path):
    batch = _batch()
    again = EncryptedBatch.from_bytes(batch.to_bytes())
    assert again.chunks == batch.chunks and again.rows == 5
    assert again.header.columns == ("a", "b") and again.header.params == PARAMS
    path = batch.save(tmp_path / "b.he")
    loaded = EncryptedBatch.load(path)
    assert loaded.chunks == batch.chunks
    assert read_batch_header(path).rows == 5
    assert list(iter_chunks(path)) == list(batch.chunks)


def test_streaming_writer_equals_batch(tmp_path):
    batch = _batch((4, 4, 1))
    with BatchWriter(tmp_path / "s.he", batch.header) as out:
        for chunk in batch.chunks:
            out.write(chunk)
    assert EncryptedBatch.load(tmp_path / "s.he").chunks == batch.chunks


def test_writer_leaves_nothing_on_failure(tmp_path):
    batch = _batch()
    with pytest.raises(RuntimeError), BatchWriter(tmp_path / "s.he", batch.header) as out:
        out.write(batch.chunks[0])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_truncation_is_detected(tmp_path):
    data = _batch().to_bytes()
    for cut in (len(data) - 1, len(data) - 30, 40, 12):
        with pytest.raises(FormatError):
            EncryptedBatch.from_bytes(data[:cut])


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_flipped_bit_is_detected(data):
    raw = bytearray(_batch().to_bytes())
    pos = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    raw[pos] ^= 1 << bit
    with pytest.raises((FormatError, InputError)):
        EncryptedBatch.from_bytes(bytes(raw))


def test_not_a_container(tmp_path):
    (tmp_path / "x.he").write_bytes(b"hello world, not a container")
    with pytest.raises(FormatError, match="not a privdl"):
        EncryptedBatch.load(tmp_path / "x.he")
    with pytest.raises(InputError, match="does not exist"):
        EncryptedBatch.load(tmp_path / "missing.he")


def test_compatibility_checks():
    header = _batch().header
    header.check_compatible(kind="features", params=PARAMS, key_id=header.key_id, source="b")
    with pytest.raises(KeyMissingError, match="key set"):
        header.check_compatible(kind="features", params=PARAMS, key_id="he_other", source="b")
    other = ParameterSet(poly_modulus_degree=16384, coeff_mod_bit_sizes=(60, 40, 40, 60))
    with pytest.raises(InputError, match="other CKKS parameters"):
        header.check_compatible(kind="features", params=other, key_id=header.key_id, source="b")
    with pytest.raises(InputError, match="holds features"):
        header.check_compatible(kind="scores", params=PARAMS, key_id=header.key_id, source="b")
