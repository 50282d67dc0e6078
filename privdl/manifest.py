"""RunManifest: what it takes to reproduce (or explain) a result.

A manifest records the hardware and platform, the privdl source (version and, in a git
checkout, the commit), the versions of the libraries that shape the result, the
configuration (parameters as plain data, key_ids never keys), and SHA-256 fingerprints
of the input data and of the model state. ``privdl diff A B`` lists what differs
between two runs.

Example:
    >>> m = RunManifest.collect(config={"epsilon": 3.0})
    >>> m.config["epsilon"]
    3.0
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from privdl._version import __version__
from privdl.errors import InputError
from privdl.fingerprint import fingerprint_bytes, fingerprint_file
from privdl.serialize import JSONSerializable

__all__ = ["RunManifest", "diff_manifests"]

_LIBRARIES = ("numpy", "pandas", "pyarrow", "cryptography", "torch", "opacus", "tenseal", "pyspark")


def _versions() -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count()}
    torch = sys.modules.get("torch")  # only if already loaded: a manifest never imports torch
    if torch is not None and torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


@dataclass(frozen=True)
class RunManifest(JSONSerializable):
    """Facts that make a run reproducible; JSON-serializable, holds no secret."""

    created: str
    privdl_version: str
    source_commit: str | None
    python: str
    platform: str
    hardware: Mapping[str, Any]
    libraries: Mapping[str, str]
    config: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    model_state: Mapping[str, str] = field(default_factory=dict)

    # from_dict / to_json / from_json: privdl.serialize.JSONSerializable
    _json_kind = "run manifest"
    _json_indent = 2

    @classmethod
    def collect(
        cls,
        *,
        config: Mapping[str, Any] | None = None,
        data_files: Iterable[str | os.PathLike[str]] = (),
        model_state: Mapping[str, bytes] | None = None,
    ) -> RunManifest:
        """Collect the manifest of the current process.

        Args:
            config: the run's parameters (plain data; key_ids only).
            data_files: input files to fingerprint (:func:`privdl.fingerprint.fingerprint_file`:
                name, SHA-256 and size).
            model_state: name → serialized bytes (e.g. safetensors); the manifest keeps
                their SHA-256.
        """
        return cls(
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            privdl_version=__version__,
            source_commit=_git_commit(),
            python=platform.python_version(),
            platform=platform.platform(),
            hardware=_hardware(),
            libraries=_versions(),
            config=dict(config or {}),
            data={os.fspath(p): fingerprint_file(p) for p in data_files},
            model_state={k: fingerprint_bytes(v)["sha256"] for k, v in (model_state or {}).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON-compatible data (what a manifest file holds)."""
        return dict(json.loads(json.dumps(asdict(self), default=str)))

    def save(self, path: str | os.PathLike[str]) -> Path:
        from privdl.io import atomic_write

        with atomic_write(path, "w") as fh:
            fh.write(self.to_json() + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunManifest:
        """Read a manifest file (or the ``manifest`` member of a JSON report)."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"manifest {p} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{p} is not a JSON manifest") from None
        if isinstance(data, dict) and "manifest" in data and isinstance(data["manifest"], dict):
            data = data["manifest"]
        if not isinstance(data, dict) or "privdl_version" not in data:
            raise InputError(f"{p} is not a privdl run manifest")
        return cls.from_dict(data)


_VOLATILE = {"created"}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def diff_manifests(
    a: RunManifest, b: RunManifest, *, include_time: bool = False
) -> list[tuple[str, Any, Any]]:
    """(field path, value in a, value in b) for every field that differs, sorted."""
    fa, fb = _flatten(a.to_dict()), _flatten(b.to_dict())
    rows = []
    for name in sorted(set(fa) | set(fb)):
        if not include_time and name in _VOLATILE:
            continue
        if fa.get(name) != fb.get(name):
            rows.append((name, fa.get(name), fb.get(name)))
    return rows
