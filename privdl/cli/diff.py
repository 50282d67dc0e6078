"""`privdl diff A B`: what differs between two runs, grouped by the manifest's components.

A and B are any mix of run manifests, reports (JSON, HTML or Markdown: the manifest
they embed), model folders and training checkpoints (their ``manifest.json``). The
differences are printed grouped by component, the most consequential first (training
data and configuration before source, platform and hardware; the model state, which
follows from all of them, last). Exit 0 when the runs are identical, 1 when they differ,
2 when an argument holds no manifest.

A model folder or checkpoint is verified before its manifest is read when a model key
is given (``--model-key-file`` / ``--model-key-env``, or ``--model-public-key``): a
folder that does not verify is a failed check (exit 1) and nothing is compared. An
unsigned folder's files are checked against its ``signature.json`` digests. Without a
key a signed folder's manifest is compared as it stands and a note on stderr says its
signature was not checked; a manifest file or report carries no signature at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from privdl.cli.options import ModelKeyEnv, ModelKeyFile, ModelPublicKey

_SHOWN_PER_COMPONENT = 8


def _short(value: Any) -> str:
    if value is None:
        return "(absent)"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:16] + "…"  # a SHA-256: the prefix is enough to tell two apart
    return text if len(text) <= 80 else text[:77] + "..."


def _field(name: str) -> str:
    """``config.max_grad_norm`` -> ``max_grad_norm``; data and model fields keep their role."""
    for prefix in ("config.", "data.", "model_state.", "hardware.", "libraries.", "reproducibility."):
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            return f"reproducibility: {rest}" if prefix == "reproducibility." else rest
    return name


def diff(
    a: Path = typer.Argument(
        ..., help="First run: manifest, report (.json/.html/.md), model folder or checkpoint."
    ),
    b: Path = typer.Argument(..., help="Second run, in any of the same forms."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    include_time: bool = typer.Option(False, "--include-time", help="Also compare creation times."),
    model_key_env: ModelKeyEnv = None,
    model_key_file: ModelKeyFile = None,
    model_public_key: ModelPublicKey = None,
) -> None:
    """List what differs between two runs, by component (exit 1 when anything differs)."""
    from privdl.cli.options import load_model_key
    from privdl.manifest import RunManifest, diff_components

    key = load_model_key(model_key_env, model_key_file, model_public_key)
    unchecked = [path for path in (a, b) if not _verified(path, key)]  # before any manifest is read
    ma, mb = RunManifest.load(a), RunManifest.load(b)
    groups = diff_components(ma, mb)
    if include_time and ma.created != mb.created:
        groups.append(("time", [("created", ma.created, mb.created)]))
    if as_json:
        rows = [
            {"component": component, "field": name, "a": x, "b": y}
            for component, changes in groups
            for name, x, y in changes
        ]
        print(json.dumps(rows, indent=2, default=str))
    elif not groups:
        print(
            f"no differences: {a} and {b} have the same training data, configuration, source, "
            "platform, hardware and model state"
        )
    else:
        print(f"A = {a}\nB = {b}")
        for component, changes in groups:
            label = component + (" (follows from the components above)" if component == "model state" else "")
            print(f"{label}: {len(changes)} difference(s)")
            for name, x, y in changes[:_SHOWN_PER_COMPONENT]:
                print(f"  {_field(name)}: {_short(x)} -> {_short(y)}")
            if len(changes) > _SHOWN_PER_COMPONENT:
                print(f"  ... and {len(changes) - _SHOWN_PER_COMPONENT} more")
        _explain(ma, mb, [c for c, _ in groups])
    _warn_unhashed(ma, mb, a, b)
    _note_unchecked(unchecked)
    if groups:
        raise typer.Exit(1)


def _verified(path: Path, key: Any) -> bool:
    """Verify ``path`` when it is a model folder (signature first); ``False`` when it is
    a signed folder and no key was given (its manifest is then compared unverified).

    Raises:
        TamperDetectedError: a file or the signature does not verify (exit 1).
        KeyMissingError, SecurityError: the key does not fit the folder.
    """
    if not path.is_dir() or not (path / "signature.json").is_file():
        return True  # no folder signature to check (a missing manifest is reported by load)
    from privdl.errors import KeyMissingError
    from privdl.train.modelfile import verify_folder

    try:
        verify_folder(path, key)
    except KeyMissingError:
        if key is not None:
            raise
        return False
    return True


def _note_unchecked(paths: list[Path]) -> None:
    import sys

    for path in paths:
        print(
            f"privdl: note: {path}: signed model folder compared without checking its signature "
            "(give --model-key-file, --model-key-env or --model-public-key)",
            file=sys.stderr,
        )


def _warn_unhashed(ma: Any, mb: Any, a: Path, b: Path) -> None:
    """A diff cannot see a change in data a manifest holds no SHA-256 of: say so."""
    import sys

    from privdl.manifest import unfingerprinted

    for path, manifest in ((a, ma), (b, mb)):
        for role in unfingerprinted(manifest):
            print(
                f"privdl: warning: {path}: the {role} has no fingerprint (not an in-memory table or "
                "array): a change in it does not show here",
                file=sys.stderr,
            )


def _explain(a: Any, b: Any, components: list[str]) -> None:
    """One line when only the model state differs: why, from the manifests' statements."""
    if components != ["model state"]:
        return
    ra, rb = dict(a.reproducibility), dict(b.reproducibility)
    if ra.get("bitwise") and rb.get("bitwise"):
        print("note: only the model state differs although both runs are stated bit-for-bit reproducible")
    else:
        why = ra.get("reason") or rb.get("reason") or "reproducibility was not assessed"
        print(f"note: only the model state differs; these runs are not bit-for-bit reproducible: {why}")


def register(app: typer.Typer) -> None:
    """Add `privdl diff`."""
    app.command("diff")(diff)
