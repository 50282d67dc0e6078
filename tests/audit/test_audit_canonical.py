"""The canonical encoding, parameter conversion, and the hashlib HMAC of the chain."""

from __future__ import annotations

import dataclasses
import enum
import hmac
import json
import math
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from privdl.audit.canonical import canonical_json, jsonable
from privdl.audit.chain import RATCHET_INFO, ratchet, step
from privdl.keys import Secret

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_json)
def test_canonical_is_a_fixpoint_and_ascii(value: object) -> None:
    out = canonical_json(value)
    assert out.isascii()
    assert canonical_json(json.loads(out)) == out


def test_canonical_examples() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == b'{"a":[1.5,"\\u00e9"],"b":1}'
    assert canonical_json({"x": 1e-5, "y": 10.0}) == b'{"x":1e-05,"y":10.0}'


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Params:
    k: int
    cols: tuple[str, ...]


class WithParams:
    def get_params(self) -> dict:
        return {"k": 5, "t": None}


def test_jsonable_conversions(tmp_path: Path) -> None:
    key = Secret.generate()
    value = {
        "key": key,
        "raw": b"\x00" * 16,
        "path": tmp_path / "x.csv",
        "set": {3, 1, 2},
        "tuple": (1, 2),
        "nan": math.nan,
        "inf": -math.inf,
        "enum": Color.RED,
        "dc": Params(k=3, cols=("a",)),
        "est": WithParams(),
        "np": np.float32(0.5),
        "arr": np.arange(3),
        "other": object(),
        1: "int key",
    }
    out = jsonable(value)
    assert out["key"] == {"key_id": key.key_id}
    assert out["raw"] == "<16 bytes>"
    assert out["path"].endswith("x.csv")
    assert out["set"] == [1, 2, 3] and out["tuple"] == [1, 2]
    assert (out["nan"], out["inf"]) == ("NaN", "-Infinity")
    assert out["enum"] == "red" and out["dc"] == {"k": 3, "cols": ["a"]}
    assert out["est"] == {"k": 5, "t": None}
    assert out["np"] == 0.5 and out["arr"] == [0, 1, 2]
    assert out["other"] == "<object>" and out["1"] == "int key"
    canonical_json(out)  # encodable
    assert key.reveal().hex() not in canonical_json(out).decode()


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=300))
def test_step_is_hmac_sha256(key: bytes, body: bytes) -> None:
    mac, next_key = step(key, body)
    assert mac == hmac.digest(key, body, "sha256")
    assert next_key == hmac.digest(key, RATCHET_INFO, "sha256") == ratchet(key)
