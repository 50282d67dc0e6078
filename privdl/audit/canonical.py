"""The one JSON encoding of an audit entry, and the conversion of parameters into it.

An entry is hashed and authenticated as bytes, so it must have exactly one encoding.
privdl's canonical form is Python's :func:`json.dumps` with

* keys sorted by code point (``sort_keys=True``),
* no whitespace (``separators=(",", ":")``),
* every non-ASCII character escaped as ``\\uXXXX`` (``ensure_ascii=True``), so a
  line is pure ASCII and Unicode normalization cannot change it,
* floats as their shortest round-trip ``repr`` (``1.0``, ``1e-05``); NaN and
  infinities are not JSON and are stored as the strings ``"NaN"``, ``"Infinity"``,
  ``"-Infinity"``.

A line is canonical exactly when ``canonical_json(json.loads(line)) == line``; the
verifier checks that for every entry, so a re-encoded entry (other spacing, key order,
escapes, number spelling, duplicate keys) is reported even when its content is the same.
This is close to, but not the same as, RFC 8785 (JCS), which spells numbers the
ECMAScript way and sorts keys by UTF-16 code units.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from privdl.keys import Secret

__all__ = ["canonical_json", "jsonable"]

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def canonical_json(obj: Any) -> bytes:
    """Encode an already JSON-able value in privdl's canonical form (ASCII bytes).

    Example:
        >>> canonical_json({"b": 1, "a": [1.5, "é"]})
        b'{"a":[1.5,"\\\\u00e9"],"b":1}'
    """
    return _ENCODER.encode(obj).encode("ascii")


def jsonable(value: Any) -> Any:
    """Convert a parameter value into plain JSON types, never keeping key material.

    * a :class:`~privdl.keys.Secret` becomes ``{"key_id": ...}`` (its bytes never);
    * ``bytes`` become ``"<N bytes>"``: raw bytes in a parameter are as likely to be a
      key as anything else, so they are not written;
    * tuples become lists, sets become sorted lists, paths and dates become strings,
      enums their value, dataclasses and objects with ``get_params()`` /
      ``to_dict()`` their dictionaries, numpy scalars and arrays plain numbers / lists;
    * NaN and infinities become ``"NaN"`` / ``"Infinity"`` / ``"-Infinity"``;
    * anything else becomes its type name in angle brackets (never its ``repr``,
      which might quote data).

    A value that is already plain JSON is returned as it is (a tuple stays a tuple: it
    encodes as the same list).
    """
    try:  # the common case: already plain JSON (the C encoder checks it fast)
        _ENCODER.encode(value)
    except (TypeError, ValueError):
        return _convert(value)
    return value


def _convert(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Secret):
        return {"key_id": value.key_id}
    if isinstance(value, Mapping):
        return {str(k): _convert(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_convert(v) for v in value]
    if isinstance(value, set | frozenset):
        items = [_convert(v) for v in value]
        return sorted(items, key=lambda v: canonical_json(v))
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return _convert(value.value)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _convert(dataclasses.asdict(value))
    for method in ("get_params", "to_dict"):
        fn = getattr(value, method, None)
        if callable(fn):
            try:
                return _convert(fn())
            except Exception:  # noqa: S112 - fall through to the next representation
                continue
    item = getattr(value, "item", None)  # numpy scalar
    if callable(item) and getattr(value, "shape", None) == ():
        return _convert(item())
    tolist = getattr(value, "tolist", None)  # numpy array
    if callable(tolist):
        return _convert(tolist())
    return f"<{type(value).__name__}>"
