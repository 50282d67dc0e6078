"""`privdl keygen`: a random master key file (pseudonyms, encryption, the audit log)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def keygen(
    output: Path = typer.Option(..., "-o", "--output", help="Key file to create (never overwritten)."),
    as_json: bool = typer.Option(False, "--json", help="Print the file and key id as one JSON document."),
) -> None:
    """Write a new random key: 32 bytes from `secrets`, as hex:..., file mode 0600.

    Give it to commands with --key-file KEYFILE, or put its one line in a variable
    (--key-env VAR, PRIVDL_AUDIT_KEY). Only its key id is ever printed or recorded.
    """
    from privdl.errors import SecurityError
    from privdl.io import check_output_path
    from privdl.keys import MIN_KEY_BYTES, Secret

    check_output_path(output, what="key file")
    if output.exists() or output.is_symlink():
        raise SecurityError(f"{output} exists; refusing to overwrite a key")
    key = Secret.generate(MIN_KEY_BYTES)
    try:
        key.to_file(output)
    except FileExistsError:  # created by someone else meanwhile
        raise SecurityError(f"{output} exists; refusing to overwrite a key") from None
    if as_json:
        typer.echo(json.dumps({"key_file": str(output), "key_id": key.key_id, "bytes": MIN_KEY_BYTES}))
    else:
        typer.echo(f"wrote {output}: key {key.key_id} ({MIN_KEY_BYTES} random bytes, hex, mode 0600)")


def register(app: typer.Typer) -> None:
    """Add `privdl keygen`."""
    app.command("keygen")(keygen)
