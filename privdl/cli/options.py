"""Option handling shared by the command groups: keys, report paths, audit entries."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from privdl.errors import FormatError, KeyMissingError, UsageError
from privdl.keys import Secret

REPORT_SUFFIXES = (".json", ".md", ".markdown", ".html", ".htm")

#: ``--json`` of a command that prints results: one JSON document on stdout instead
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as one JSON document.")]


# The key that verifies a signed model folder (he encrypt/score, diff): see load_model_key.
ModelKeyEnv = Annotated[
    str | None,
    typer.Option("--model-key-env", help="Variable holding the HMAC key of a signed model folder."),
]
ModelKeyFile = Annotated[
    Path | None,
    typer.Option("--model-key-file", help="File holding the HMAC key of a signed model folder."),
]
ModelPublicKey = Annotated[
    str | None,
    typer.Option("--model-public-key", help="Ed25519 public key (PEM) of a signed model folder."),
]


def emit(as_json: bool, payload: dict[str, Any], text: str) -> None:
    """Print a command's result: ``payload`` as one JSON document, or ``text``."""
    import json

    typer.echo(json.dumps(payload, indent=2, sort_keys=True, default=str) if as_json else text)


def load_key(key_env: str | None, key_file: Path | None, *, required: bool) -> Secret | None:
    """The master key from ``--key-env`` or ``--key-file`` (never both).

    Raises:
        UsageError: both given.
        KeyMissingError: ``required`` and neither given, or the variable is unset.
        SecurityError: key shorter than 32 bytes or a group/world-readable key file.
    """
    if key_env and key_file:
        raise UsageError("give --key-env or --key-file, not both")
    if key_file is not None:
        return Secret.from_file(key_file)
    if key_env:
        return Secret.from_env(key_env)
    if required:
        raise KeyMissingError(
            "this policy pseudonymizes or encrypts: give the key with --key-env VAR or --key-file PATH"
        )
    return None


def load_model_key(key_env: str | None, key_file: Path | None, public_key: str | None) -> Any:
    """The key that verifies a signed model folder: an HMAC Secret (``--model-key-env`` /
    ``--model-key-file``) or an Ed25519 public key (``--model-public-key``: PEM file or
    verifier key), or None for an unsigned model.

    Raises:
        UsageError: more than one given.
    """
    given = [x for x in (key_env, key_file, public_key) if x]
    if len(given) > 1:
        raise UsageError("give one of --model-key-env, --model-key-file, --model-public-key")
    if public_key:
        from privdl.audit.checkpoint import load_public_key

        return load_public_key(public_key)
    return load_key(key_env, key_file, required=False)


def report_target(path: Path) -> Path:
    """Check a report path before any work is done (a writable folder, not a folder
    itself, a known extension)."""
    from privdl.io import check_output_path

    check_output_path(path, what="report")
    if path.suffix.lower() not in REPORT_SUFFIXES:
        raise FormatError(f"{path}: unknown report format; use .json, .md or .html")
    return path


def cli_audit_log(log_path: Path | None, key_env: str) -> Any:
    """The AuditLog a command writes to: ``--audit-log``, else ``[audit] log`` of
    ``privdl.toml`` (or ``$PRIVDL_CONFIG``), else None.

    Raises:
        KeyMissingError: a log is named but the audit key variable is unset (exit 2,
            before any work is done).
    """
    if log_path is None:
        from privdl.config import default_audit_log

        log_path = default_audit_log()
        if log_path is None:
            return None
    if not Path(log_path).exists():
        from privdl.io import check_output_path

        check_output_path(log_path, what="audit log")  # a missing folder is a typo, not a request
    from privdl.audit import resolve_audit_log

    return resolve_audit_log(log_path, key_env=key_env)


@contextlib.contextmanager
def audit_context(
    log_path: Path | None,
    key_env: str,
    event: str,
    *,
    params: dict[str, Any] | None = None,
    inputs: Sequence[Any] = (),
    started: bool = False,
) -> Iterator[Any]:
    """One audit entry for a CLI operation; without a log, the null operation.

    Before the block runs the key is read and the log is checked to take the entry
    (another key, an altered or unwritable log: exit 2 or 1, one line naming the log),
    so no work is done that could not be recorded. Write outputs to
    ``op.stage(path)`` / ``op.stage_table(location)``: they appear only once the
    entry is written (see :func:`privdl.audit.operation`).
    """
    from privdl.audit import operation

    log = cli_audit_log(log_path, key_env)
    with operation(log, event, params=params or {}, inputs=list(inputs), started=started) as op:
        yield op


def renamed(value: Any, old_value: Any, *, new: str, old: str, default: Any = None) -> Any:
    """The value of a renamed option: ``new``, or its old spelling ``old`` (a hidden
    alias, kept so that existing scripts run; accepted silently, so that the one-line
    error contract holds for them too); ``default`` when neither is given.

    Raises:
        UsageError: both spellings given.
    """
    if old_value is None:
        return default if value is None else value
    if value is not None:
        raise UsageError(f"give {new} only ({old} is its old spelling)")
    return old_value
