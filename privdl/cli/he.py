"""`privdl he`: encrypted scoring with CKKS (registered by :func:`register`).

The data owner runs ``keygen``, ``encrypt`` and ``decrypt``; the scoring service runs
``score`` with ``public.he`` only (it refuses a file holding a secret key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from privdl.cli.options import JsonFlag, ModelKeyEnv, ModelKeyFile, ModelPublicKey, emit

AUDIT_HELP = "Append one entry to this audit log (key from --audit-key-env)."

AuditLogPath = Annotated[Path | None, typer.Option("--audit-log", help=AUDIT_HELP)]
AuditKeyEnv = Annotated[str, typer.Option("--audit-key-env")]


def _split(values: list[str] | None) -> list[str]:
    """Columns from repeated and/or comma-separated options, in order, without repeats."""
    out: dict[str, None] = {}
    for value in values or []:
        for part in value.split(","):
            if part.strip():
                out.setdefault(part.strip(), None)
    return list(out)


def _audit(path: Path | None, key_env: str) -> Any:
    """The command's audit log, checked to take an entry before any work (or None)."""
    from privdl.cli.options import cli_audit_log

    log = cli_audit_log(path, key_env)
    if log is not None:
        log.check_appendable()
    return log


def keygen(
    out_dir: Path | None = typer.Option(
        None, "--out-dir", help="Folder for secret.he (0600) and public.he. Required."
    ),
    depth: int | None = typer.Option(None, "--depth", help="Multiplicative depth (default 1)."),
    model: str | None = typer.Option(None, "--model", help="Choose the depth this model needs."),
    output_kind: str | None = typer.Option(
        None, "--output-kind", help="Scores the key set is sized for: logit (default) or probability."
    ),
    security: str = typer.Option("128", "--security", help="128, 192, 256 or insecure-100."),
    encryption: str = typer.Option(
        "symmetric", "--encryption", help="symmetric (data owner encrypts) or public-key."
    ),
    galois_keys: bool = typer.Option(
        False, "--galois-keys", help="Add rotation keys (~17 MB) for --packing row queries."
    ),
    audit_log: AuditLogPath = None,
    audit_key_env: AuditKeyEnv = "PRIVDL_AUDIT_KEY",
    as_json: JsonFlag = False,
    old_out: Path | None = typer.Option(None, "--out", hidden=True, help="Old name of --out-dir."),
    old_output: str | None = typer.Option(None, "--output", hidden=True, help="Old name of --output-kind."),
) -> None:
    """Generate a CKKS key set for a model; print its key id and file sizes."""
    from privdl.cli.options import cli_audit_log, renamed
    from privdl.encrypted.keys import PUBLIC_FILE, SECRET_FILE, HEKeys
    from privdl.errors import UsageError

    out = renamed(out_dir, old_out, new="--out-dir", old="--out")
    if out is None:
        raise UsageError("missing option --out-dir (the folder for the key set)")
    output = renamed(output_kind, old_output, new="--output-kind", old="--output", default="logit")
    if output not in ("logit", "probability"):
        raise UsageError(f"--output-kind {output!r}: choose logit or probability")
    keys = HEKeys.generate_into(
        out, model=model, depth=depth, output=output, security=security, encryption=encryption,
        galois_keys=galois_keys, audit_log=cli_audit_log(audit_log, audit_key_env),
    )  # fmt: skip
    p = keys.params
    secret, public = out / SECRET_FILE, out / PUBLIC_FILE
    payload = {
        "key_id": keys.key_id, "poly_modulus_degree": p.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes), "scale_bits": p.scale_bits,
        "security": p.security, "secret_file": str(secret), "secret_bytes": secret.stat().st_size,
        "public_file": str(public), "public_bytes": public.stat().st_size,
    }  # fmt: skip
    emit(
        as_json,
        payload,
        f"key set {keys.key_id}: N={p.poly_modulus_degree}, moduli {list(p.coeff_mod_bit_sizes)}, "
        f"scale 2^{p.scale_bits}, {p.security}-bit security\n"
        f"  {secret} ({payload['secret_bytes']} bytes, keep private)\n"
        f"  {public} ({payload['public_bytes']} bytes, for the scorer)",
    )


def encrypt(
    input: str = typer.Argument(..., help="Table with the sensitive columns."),
    keys_dir: Path = typer.Option(..., "--keys", help="Folder (or file) with secret.he."),
    columns: list[str] = typer.Option(
        ..., "--columns", help="Columns to encrypt: COL or COL=VALUE (indicator); repeat or comma-separate."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Encrypted batch file to write."),
    model: str | None = typer.Option(
        None, "--model", help="Expand each column to the model's features (e.g. city -> city=Berlin...)."
    ),
    packing: str = typer.Option(
        "feature-major", "--packing", help="feature-major (default) or row (single queries)."
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Encryption processes."),
    sep: str | None = typer.Option(None, "--sep", help="Delimiter for text tables."),
    model_key_env: ModelKeyEnv = None,
    model_key_file: ModelKeyFile = None,
    model_public_key: ModelPublicKey = None,
    audit_log: AuditLogPath = None,
    audit_key_env: AuditKeyEnv = "PRIVDL_AUDIT_KEY",
    as_json: JsonFlag = False,
) -> None:
    """Encrypt COLUMNS of INPUT feature-major with the secret key set."""
    from privdl.cli.options import load_model_key
    from privdl.encrypted.keys import HEKeys

    keys = HEKeys.load(keys_dir)
    log = _audit(audit_log, audit_key_env)
    header = keys.encrypt_table(
        input, output, columns=_split(columns), packing=packing, workers=workers, sep=sep, audit_log=log,
        model=model,
        model_key=load_model_key(model_key_env, model_key_file, model_public_key) if model is not None else None,
    )  # fmt: skip
    size = output.stat().st_size
    emit(
        as_json,
        {"rows": header.rows, "columns": len(header.columns), "key_id": keys.key_id,
         "output": str(output), "bytes": size},
        f"encrypted {header.rows} rows x {len(header.columns)} columns with {keys.key_id} "
        f"-> {output} ({size} bytes, {size / max(header.rows or 1, 1):.0f} bytes/row)",
    )  # fmt: skip


def score(
    encrypted: Path = typer.Argument(..., help="Encrypted batch from `privdl he encrypt`."),
    model: str = typer.Option(
        ..., "--model", help="PrivateTrainer model folder, exported .json, or .safetensors."
    ),
    public: Path = typer.Option(..., "--public", help="public.he, or the folder holding it."),
    output: Path = typer.Option(..., "-o", "--output", help="Encrypted scores file to write."),
    plain: str | None = typer.Option(None, "--plain", help="Table with the non-sensitive columns."),
    plain_columns: list[str] = typer.Option(
        [], "--plain-columns", help="Plaintext model columns in --plain; repeat or comma-separate."
    ),
    out_kind: str = typer.Option("logit", "--output-kind", help="logit (default) or probability."),
    workers: int = typer.Option(1, "--workers", min=1, help="Scoring processes."),
    sep: str | None = typer.Option(None, "--sep", help="Delimiter for --plain."),
    model_key_env: ModelKeyEnv = None,
    model_key_file: ModelKeyFile = None,
    model_public_key: ModelPublicKey = None,
    audit_log: AuditLogPath = None,
    audit_key_env: AuditKeyEnv = "PRIVDL_AUDIT_KEY",
    as_json: JsonFlag = False,
) -> None:
    """Score ENCRYPTED with MODEL using public material only."""
    from privdl.cli.options import load_model_key
    from privdl.encrypted.keys import PublicKeys
    from privdl.encrypted.scorer import EncryptedScorer
    from privdl.errors import UsageError

    pcols = _split(plain_columns)
    if pcols and plain is None:
        raise UsageError("--plain-columns needs --plain")
    public_keys = PublicKeys.load(public)
    model_key = load_model_key(model_key_env, model_key_file, model_public_key)
    import warnings

    from privdl.errors import ApproximationWarning

    with warnings.catch_warnings():  # printed once below, as a privdl line
        warnings.simplefilter("ignore", ApproximationWarning)
        scorer = EncryptedScorer.from_model(model, public_keys, output=out_kind, model_key=model_key)
    for line in scorer.warnings_:
        typer.echo(f"privdl: warning: {line}", err=True)
    if plain is not None and not pcols:
        raise UsageError("--plain needs --plain-columns")
    header = scorer.score_file(
        encrypted, output, plain=plain, plain_columns=pcols or None, sep=sep, workers=workers,
        audit_log=_audit(audit_log, audit_key_env),
    )  # fmt: skip
    encrypted_n, plain_n = len(header.info["encrypted_columns"]), len(header.info["plain_columns"])
    emit(
        as_json,
        {"rows": header.rows, "encrypted_columns": encrypted_n, "plain_columns": plain_n,
         "output": str(output)},
        f"scored {header.rows} rows ({encrypted_n} encrypted, {plain_n} plain columns) -> {output}",
    )  # fmt: skip


def decrypt(
    scores: Path = typer.Argument(..., help="Encrypted scores from `privdl he score`."),
    keys_dir: Path = typer.Option(..., "--keys", help="Folder (or file) with secret.he."),
    output: str = typer.Option(..., "-o", "--output", help="Table to write (.csv, .parquet...)."),
    raw: bool = typer.Option(False, "--raw", help="Keep the logit (no sigmoid on this side)."),
    decimals: int | None = typer.Option(None, "--decimals", help="Round released scores."),
    audit_log: AuditLogPath = None,
    audit_key_env: AuditKeyEnv = "PRIVDL_AUDIT_KEY",
    as_json: JsonFlag = False,
) -> None:
    """Decrypt SCORES with the secret key set into a table (rows in input order)."""
    from privdl.encrypted.keys import HEKeys

    keys = HEKeys.load(keys_dir)
    frame = keys.decrypt_to_table(
        scores, output, raw=raw, decimals=decimals, audit_log=_audit(audit_log, audit_key_env)
    )
    emit(
        as_json,
        {"scores": len(frame), "output": output},
        f"decrypted {len(frame)} scores -> {output}",
    )


def register(app: typer.Typer) -> None:
    """Add the `he` commands to the main app."""
    sub = typer.Typer(
        no_args_is_help=True,
        help="Encrypted scoring (CKKS): keygen, encrypt, score, decrypt.",
    )
    sub.command("keygen")(keygen)
    sub.command("encrypt")(encrypt)
    sub.command("score")(score)
    sub.command("decrypt")(decrypt)
    app.add_typer(sub, name="he")
