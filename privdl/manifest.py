"""RunManifest: what it takes to reproduce (or explain) a result.

A manifest records six components of a run: the **hardware** (machine, CPUs, the
device it ran on), the **platform** (Python, operating system, the versions of the
libraries that shape the result), the **source** (the privdl version and, in a git
checkout, the commit), the **configuration** (parameters as plain data, key_ids never
keys), the **training data** (SHA-256 fingerprints, never values) and the **model
state** (SHA-256 of every tensor or released table), plus a reproducibility statement
(whether a rerun gives the same bits, and if not, why). It holds no personal data and
no key bytes.

Every report (anonymization, privacy, budget) embeds one, every model folder and
checkpoint holds one as ``manifest.json``, and the run's audit entry records its
SHA-256 (:meth:`RunManifest.sha256`). ``privdl diff A B`` lists what differs between
two runs, grouped by component, the most consequential first.

Example:
    >>> m = RunManifest.collect(config={"epsilon": 3.0})
    >>> m.config["epsilon"]
    3.0
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from privdl._version import __version__
from privdl.errors import InputError
from privdl.fingerprint import fingerprint, fingerprint_bytes, fingerprint_file
from privdl.serialize import JSONSerializable

__all__ = [
    "COMPONENTS",
    "MANIFEST_FILE",
    "RunManifest",
    "diff_components",
    "diff_manifests",
    "embedded_manifest",
    "manifest_section",
    "unfingerprinted",
]

_LIBRARIES = ("numpy", "pandas", "pyarrow", "cryptography", "torch", "opacus", "tenseal", "pyspark")

#: the file name of a manifest beside a model folder's files (and inside a checkpoint)
MANIFEST_FILE = "manifest.json"

#: the six components, most consequential first (what ``privdl diff`` prints first):
#: component -> the manifest fields it holds
COMPONENTS: dict[str, tuple[str, ...]] = {
    "training data": ("data",),
    "configuration": ("config", "reproducibility"),
    "source": ("privdl_version", "source_commit", "source_modified"),
    "platform": ("python", "platform", "libraries"),
    "hardware": ("hardware",),
    "model state": ("model_state",),
}

# where an HTML or Markdown report carries its manifest (privdl.render's Preformatted)
_EMBED_ID = "privdl-manifest"
_HTML_EMBED = re.compile(r'<pre[^>]*\bid="' + _EMBED_ID + r'"[^>]*>(.*?)</pre>', re.S)
_MD_EMBED = re.compile(r"```json " + _EMBED_ID + r"\n(.*?)\n```", re.S)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _git(*args: str) -> str | None:
    """``git args`` in the privdl checkout: its stdout, or None (not a git checkout, git
    not available, or git failed)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _git_commit() -> str | None:
    out = _git("rev-parse", "HEAD")
    return None if out is None else out.strip() or None


def _git_modified() -> bool | None:
    """Whether tracked files of the privdl checkout differ from its commit (None: not a
    git checkout, or git is not available)."""
    out = _git("status", "--porcelain", "--untracked-files=no", "--", "privdl")
    return None if out is None else bool(out.strip())


def _hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count()}
    torch = sys.modules.get("torch")  # only if already loaded: a manifest never imports torch
    if torch is not None and torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


@dataclass(frozen=True)
class RunManifest(JSONSerializable):
    """Facts that make a run reproducible; JSON-serializable, holds no secret.

    Attributes:
        created: ISO-8601 UTC time (ignored by :func:`diff_manifests` by default).
        privdl_version, source_commit: the source; ``source_modified``: the checkout's
            privdl files differ from that commit (None outside a git checkout).
        python, platform, libraries: the platform.
        hardware: machine, CPUs, CUDA devices seen, the device the run used.
        config: the run's parameters (plain data; key_ids only).
        data: role (``"training data"``, ``"input"``...) -> fingerprint (SHA-256,
            rows, columns, never values).
        model_state: name -> SHA-256 (a tensor's bytes, a released table).
        reproducibility: ``{"bitwise": bool, "reason": str}``: whether rerunning with
            the same components gives the same bits, and why not.
    """

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
    reproducibility: Mapping[str, Any] = field(default_factory=dict)
    source_modified: bool | None = None

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
        data: Mapping[str, Any] | None = None,
        model_digests: Mapping[str, str] | None = None,
        hardware: Mapping[str, Any] | None = None,
        reproducibility: Mapping[str, Any] | None = None,
    ) -> RunManifest:
        """Collect the manifest of the current process.

        Args:
            config: the run's parameters (plain data; key_ids only).
            data_files: input files to fingerprint (:func:`privdl.fingerprint.fingerprint_file`:
                name, SHA-256 and size), recorded under their base names.
            model_state: name → serialized bytes (e.g. safetensors); the manifest keeps
                their SHA-256.
            data: role → a fingerprint, or an item to fingerprint (a DataFrame, an
                array, a path: :func:`privdl.fingerprint.fingerprint`).
            model_digests: name → SHA-256 already computed (a tensor's bytes).
            hardware: facts added to the collected hardware (the device used).
            reproducibility: the run's reproducibility statement.
        """
        fingerprints = {Path(p).name: fingerprint_file(p) for p in data_files}
        for role, item in (data or {}).items():
            fp = dict(item) if isinstance(item, Mapping) else fingerprint(item)
            fingerprints[str(role)] = json.loads(json.dumps(fp, default=str))
        state = {k: fingerprint_bytes(v)["sha256"] for k, v in (model_state or {}).items()}
        state.update({str(k): str(v) for k, v in (model_digests or {}).items()})
        return cls(
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            privdl_version=__version__,
            source_commit=_git_commit(),
            python=platform.python_version(),
            platform=platform.platform(),
            hardware={**_hardware(), **dict(hardware or {})},
            libraries=_versions(),
            config=json.loads(json.dumps(dict(config or {}), default=str)),
            data=fingerprints,
            model_state=state,
            reproducibility=dict(reproducibility or {}),
            source_modified=_git_modified(),
        )

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON-compatible data (what a manifest file holds)."""
        return dict(json.loads(json.dumps(asdict(self), default=str)))

    def sha256(self) -> str:
        """SHA-256 of the manifest's canonical JSON (sorted keys, no spaces): the
        figure an audit entry records as ``manifest_sha256``."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def components(self) -> dict[str, dict[str, Any]]:
        """The manifest's fields flattened (``config.max_grad_norm``), grouped by the
        six components of :data:`COMPONENTS`, most consequential first."""
        flat = self.to_dict()
        out: dict[str, dict[str, Any]] = {}
        for component, names in COMPONENTS.items():
            group: dict[str, Any] = {}
            for name in names:
                group.update(_flatten(flat.get(name), name))
            out[component] = group
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        from privdl.io import atomic_write

        with atomic_write(path, "w") as fh:
            fh.write(self.to_json() + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunManifest:
        """Read the manifest of a run from any artifact that holds one.

        ``path`` is a manifest file, a JSON report (its ``manifest`` member), an HTML
        or Markdown report (the manifest embedded in it), or a model folder or
        training checkpoint (its ``manifest.json``). A model folder's signature is
        not checked here (``PrivateTrainer.load`` does that).

        Raises:
            InputError: nothing there, or no privdl run manifest in it (one line
                naming the file).
        """
        p = Path(path)
        if p.is_dir():
            inner = p / MANIFEST_FILE
            if not inner.is_file():
                raise InputError(
                    f"{p}: this folder holds no {MANIFEST_FILE} (not a privdl model folder, or saved before manifests)"
                )
            p = inner
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"{p} does not exist") from None
        except IsADirectoryError:
            raise InputError(f"{p} is a folder") from None
        except (OSError, UnicodeDecodeError):
            raise InputError(f"{p} is not a privdl run manifest (not readable text)") from None
        data = _parse(text, p)
        if isinstance(data, dict) and isinstance(data.get("manifest"), dict):
            data = data["manifest"]
        if not isinstance(data, dict) or "privdl_version" not in data:
            raise InputError(f"{p} is not a privdl run manifest (nor a report or model folder holding one)")
        return cls.from_dict(data)


def _parse(text: str, p: Path) -> Any:
    """A manifest file's or JSON report's JSON, or the manifest embedded in an HTML
    or Markdown report (None when there is none)."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise InputError(f"{p} is not a privdl run manifest (not valid JSON)") from None
    found = embedded_manifest(text)
    if found is None:
        raise InputError(f"{p} is not a privdl run manifest, and holds none")
    return found


def embedded_manifest(text: str) -> dict[str, Any] | None:
    """The manifest embedded in an HTML or Markdown report's text, or None."""
    match = _HTML_EMBED.search(text)
    body = html.unescape(match.group(1)) if match else None
    if body is None:
        md = _MD_EMBED.search(text)
        body = md.group(1) if md else None
    if body is None:
        return None
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


_VOLATILE = {"created"}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        if not value and prefix:
            out[prefix] = {}
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


def diff_components(a: RunManifest, b: RunManifest) -> list[tuple[str, list[tuple[str, Any, Any]]]]:
    """What differs, grouped by component, most consequential first: a list of
    ``(component, [(field, value in a, value in b), ...])`` for the components that
    differ (the creation time is not compared)."""
    ca, cb = a.components(), b.components()
    out = []
    for component in COMPONENTS:
        fa, fb = ca[component], cb[component]
        rows = [(n, fa.get(n), fb.get(n)) for n in sorted(set(fa) | set(fb)) if fa.get(n) != fb.get(n)]
        if rows:
            out.append((component, rows))
    return out


def reproducibility_sentence(manifest: Mapping[str, Any]) -> str:
    """The manifest's reproducibility statement in plain words."""
    rep = manifest.get("reproducibility") or {}
    if not rep:
        return "Reproducibility was not assessed for this run."
    reason = str(rep.get("reason") or "").rstrip(".")
    if rep.get("bitwise"):
        return (
            "A rerun with the same training data, configuration (seed included), source, "
            f"platform and hardware reproduces the model state bit for bit ({reason})."
        )
    return f"A rerun does not reproduce the model state bit for bit: {reason}."


def manifest_section(manifest: Mapping[str, Any] | None) -> Any:
    """The "Run manifest" section of a report: the reproducibility statement, the six
    components in short, and the manifest itself (embedded, so that ``privdl diff``
    reads it back from the HTML or Markdown file)."""
    from privdl import render

    if not manifest:
        return render.Section(
            "Run manifest", [render.Paragraph("No run manifest was recorded for this report.")]
        )
    m = RunManifest.from_dict(manifest)
    digest = m.sha256()
    data = "; ".join(
        f"{role}: "
        + (f"sha256 {str(fp['sha256'])[:16]}" if fp.get("sha256") else "not fingerprinted")
        + (f", {fp['rows']} rows" if isinstance(fp, Mapping) and "rows" in fp else "")
        for role, fp in m.data.items()
        if isinstance(fp, Mapping)
    )
    rows = [
        ("training data", data or "none recorded"),
        ("configuration", f"{len(m.config)} parameters (below)"),
        (
            "source",
            f"privdl {m.privdl_version}"
            + (f", commit {m.source_commit[:12]}" if m.source_commit else "")
            + (" with local changes" if m.source_modified else ""),
        ),
        ("platform", f"Python {m.python}, {m.platform}"),
        ("hardware", ", ".join(f"{k} {v}" for k, v in m.hardware.items())),
        ("model state", f"{len(m.model_state)} SHA-256 digests"),
        ("manifest SHA-256", digest),
    ]
    return render.Section(
        "Run manifest",
        [
            render.Paragraph(
                "What it takes to reproduce or explain this result, in six components; it holds "
                "fingerprints and key ids, never data values or keys. `privdl diff` compares two "
                "of them."
            ),
            render.Paragraph(reproducibility_sentence(manifest)),
            render.KeyValues(rows),
            render.Code(json.dumps(m.to_dict(), indent=2, sort_keys=True), "the manifest (JSON)", _EMBED_ID),
        ],
    )


def unfingerprinted(manifest: RunManifest) -> list[str]:
    """The data roles a manifest could not fingerprint (a Dataset or DataLoader is not
    hashed): a change in them would not show in a diff."""
    return [role for role, fp in manifest.data.items() if isinstance(fp, Mapping) and not fp.get("sha256")]
