"""Dataset fingerprints: what an entry says about the data an operation read or wrote.

A fingerprint identifies a dataset without holding any of it: the SHA-256 of the
file's bytes (or of a directory's files, or of an in-memory table's values), its size,
and row and column counts when known. The file's base name is kept for humans; the
directory part is not (home directories name people). Erasure requests follow
fingerprints from one entry's outputs to a later entry's inputs to find derived
datasets and models.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from privdl.audit.canonical import jsonable

__all__ = ["fingerprint", "fingerprint_path"]

_CHUNK = 1 << 20


def fingerprint(item: Any) -> dict[str, Any]:
    """Fingerprint one input or output of an operation.

    Args:
        item: a path (``str`` or path-like); a dict ``{"path": ..., "rows": ...,
            "columns": ...}`` (the path is hashed, the other keys kept); an already
            made fingerprint (a dict with ``"sha256"``, kept as is); a pandas
            DataFrame, numpy array or tensor (hashed from its values in memory).

    Example:
        >>> fingerprint({"sha256": "0" * 64, "rows": 3})["rows"]
        3
    """
    if isinstance(item, Mapping):
        if "path" in item:
            fp = fingerprint_path(item["path"])
            extra = {k: v for k, v in item.items() if k != "path"}
            fp.update(jsonable(extra))
            return fp
        return jsonable(dict(item))
    if isinstance(item, str | os.PathLike):
        return fingerprint_path(item)
    if hasattr(item, "columns") and hasattr(item, "to_numpy"):
        return _fingerprint_frame(item)
    if hasattr(item, "detach"):  # torch tensor, without importing torch
        item = item.detach().cpu().numpy()
    if hasattr(item, "tobytes") and hasattr(item, "shape"):
        return _fingerprint_array(item)
    return {"kind": f"<{type(item).__name__}>"}


def fingerprint_path(path: str | os.PathLike[str]) -> dict[str, Any]:
    """SHA-256 and size of a file, or of every file under a directory."""
    p = Path(path)
    if p.is_file():
        with p.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        return {"name": p.name, "sha256": digest, "bytes": p.stat().st_size}
    if p.is_dir():
        outer = hashlib.sha256()
        total = files = 0
        for sub in sorted(q for q in p.rglob("*") if q.is_file()):
            with sub.open("rb") as fh:
                inner = hashlib.file_digest(fh, "sha256").hexdigest()
            outer.update(sub.relative_to(p).as_posix().encode("utf-8") + b"\0" + inner.encode() + b"\n")
            total += sub.stat().st_size
            files += 1
        return {
            "name": p.name,
            "kind": "dir",
            "sha256": outer.hexdigest(),
            "bytes": total,
            "files": files,
        }
    return {"name": p.name, "missing": True}


def _fingerprint_frame(frame: Any) -> dict[str, Any]:
    import pandas as pd

    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest = hashlib.sha256()
    digest.update("\0".join(map(str, frame.columns)).encode("utf-8") + b"\n")
    digest.update(hashed.tobytes())
    rows, columns = frame.shape
    return {
        "kind": "table",
        "sha256": digest.hexdigest(),
        "rows": int(rows),
        "columns": int(columns),
    }


def _fingerprint_array(array: Any) -> dict[str, Any]:
    import numpy as np

    arr = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    digest.update(arr.tobytes())
    fp: dict[str, Any] = {
        "kind": "array",
        "sha256": digest.hexdigest(),
        "rows": int(arr.shape[0]) if arr.ndim else 1,
    }
    if arr.ndim > 1:
        fp["columns"] = int(arr.shape[1])
    return fp
