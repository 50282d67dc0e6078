"""`privdl audit` commands: verify, checkpoint, records, erase-request, keygen.

The audit key comes from the environment variable named by ``--audit-key-env``
(default ``PRIVDL_AUDIT_KEY``), for writing and verifying alike; a missing key is an
exit-2 error. Tampering is exit 1 and names the first bad entry and its kind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from privdl.cli.options import JsonFlag, emit

_KEY_ENV_HELP = "environment variable holding the audit (HMAC chain) key"
_KEY_FILE_HELP = "file holding the audit (HMAC chain) key, instead of --audit-key-env"

# what a step did with the data of the person an erasure request names
_ERASURE_VERBS = {
    "anonymize": "released a pseudonymized table holding this person's record",
    "train": "trained a model on this person's record",
    "train.save": "saved a model trained on this person's record",
    "risk": "assessed the re-identification risk of a table holding this person's record",
    "he.encrypt": "encrypted this person's data",
    "he.score": "scored this person's encrypted data",
    "he.decrypt": "decrypted this person's scores",
}


def register(app: typer.Typer) -> None:
    """Add the `audit` commands to the main app."""
    audit = typer.Typer(
        name="audit",
        help="Verify the tamper-evident audit log, sign checkpoints, export GDPR records.",
        no_args_is_help=True,
    )

    @audit.command("verify")
    def verify(
        log: Annotated[Path, typer.Argument(help="the audit log (JSON Lines)")],
        checkpoint: Annotated[
            Path | None, typer.Option("--checkpoint", help="signed checkpoint kept apart")
        ] = None,
        public_key: Annotated[
            Path | None, typer.Option("--public-key", help="Ed25519 key that signs checkpoints")
        ] = None,
        audit_key_env: Annotated[str, typer.Option("--audit-key-env", help=_KEY_ENV_HELP)] = (
            "PRIVDL_AUDIT_KEY"
        ),
        thorough: Annotated[
            bool, typer.Option("--thorough", help="also re-check each entry's JSON encoding")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
        config: Annotated[Path | None, typer.Option("--config", help="privdl.toml")] = None,
        audit_key_file: Annotated[Path | None, typer.Option("--audit-key-file", help=_KEY_FILE_HELP)] = None,
    ) -> None:
        """Check every entry, the chain and (with --checkpoint) truncation. Exit 1 if tampered."""
        from privdl.audit.verify import verify_audit_log
        from privdl.config import audit_defaults, load_config

        defaults = audit_defaults(load_config(config))
        key = _audit_key(audit_key_env, audit_key_file)
        checkpoint = checkpoint or _opt_path(defaults.get("checkpoint"))
        public_key = public_key or _opt_path(defaults.get("public_key"))
        result = verify_audit_log(
            log, key=key, checkpoint=checkpoint, public_key=public_key, thorough=thorough
        )
        print(json.dumps(result.to_dict(), indent=2) if as_json else result.summary())

    @audit.command("checkpoint")
    def checkpoint_cmd(
        log: Annotated[Path, typer.Argument(help="the audit log")],
        signing_key: Annotated[Path, typer.Option("--signing-key", help="Ed25519 PEM private key")],
        out: Annotated[Path, typer.Option("-o", "--output", help="where to write the checkpoint")],
        audit_key_env: Annotated[str, typer.Option("--audit-key-env", help=_KEY_ENV_HELP)] = (
            "PRIVDL_AUDIT_KEY"
        ),
        as_json: JsonFlag = False,
    ) -> None:
        """Verify the log, then sign a checkpoint of it (store it apart from the log)."""
        from privdl.audit.verify import checkpoint_log
        from privdl.io import check_output_path
        from privdl.keys import Secret

        check_output_path(out, what="checkpoint")  # before the key is read or the log verified
        key = Secret.from_env(audit_key_env)
        cp = checkpoint_log(log, key=key, signing_key=signing_key, output=out)
        emit(
            as_json,
            {"checkpoint": str(out), "log": str(log), "entries": cp.size, "head": cp.root_hash.hex()},
            f"{out}: checkpoint of {log}: {cp.size} entries, head {cp.root_hash.hex()[:16]}",
        )

    @audit.command("records")
    def records(
        log: Annotated[Path, typer.Argument(help="the audit log")],
        out: Annotated[Path, typer.Option("-o", "--output", help="records.csv or records.json")],
        config: Annotated[Path | None, typer.Option("--config", help="privdl.toml")] = None,
        audit_key_env: Annotated[str, typer.Option("--audit-key-env", help=_KEY_ENV_HELP)] = (
            "PRIVDL_AUDIT_KEY"
        ),
        no_verify: Annotated[
            bool, typer.Option("--no-verify", help="skip verification (marked in the output)")
        ] = False,
        audit_key_file: Annotated[Path | None, typer.Option("--audit-key-file", help=_KEY_FILE_HELP)] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Export the record of processing activities (GDPR Article 30) as CSV or JSON."""
        from privdl.audit.records import build_records, write_records
        from privdl.audit.verify import verify_audit_log
        from privdl.errors import InputError
        from privdl.io import check_output_path

        if out.suffix.lower() not in (".csv", ".json"):
            raise InputError(f"records output {out.name}: use a .csv or .json file name")
        check_output_path(out, what="records output")  # before the log is read
        verified = None
        if not no_verify:
            verified = verify_audit_log(log, key=_audit_key(audit_key_env, audit_key_file))
        rec = build_records(log, config=config, verified=verified)
        write_records(rec, out)
        count, entries = len(rec["activities"]), rec["log"]["entries"]
        emit(as_json, {"output": str(out), "activities": count, "entries": entries},
             f"{out}: {count} processing activities from {entries} entries")  # fmt: skip

    @audit.command("erase-request")
    def erase_request_cmd(
        subject: Annotated[
            str,
            typer.Argument(
                help="the data subject's pseudonym; with --identifier, the raw identifier"
                " ('-' reads it from standard input, keeping it out of shell history)"
            ),
        ],
        log: Annotated[Path, typer.Option("--log", help="the audit log")],
        identifier: Annotated[
            bool,
            typer.Option(
                "--identifier",
                help="SUBJECT is the raw identifier: derive its pseudonym with the"
                " pseudonymization key (--key-env / --key-file)",
            ),
        ] = False,
        key_env: Annotated[
            str | None, typer.Option("--key-env", help="variable holding the pseudonymization key")
        ] = None,
        key_file: Annotated[Path | None, typer.Option("--key-file", help="pseudonymization key file")] = None,
        column: Annotated[
            str | None, typer.Option("--column", help="identifier column (default: the subject column)")
        ] = None,
        audit_key_env: Annotated[str, typer.Option("--audit-key-env", help=_KEY_ENV_HELP)] = (
            "PRIVDL_AUDIT_KEY"
        ),
        audit_key_file: Annotated[Path | None, typer.Option("--audit-key-file", help=_KEY_FILE_HELP)] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    ) -> None:
        """Record an erasure request (GDPR Article 17); say which logged steps hold the person."""
        import sys

        from privdl.audit.erasure import erase_request
        from privdl.cli.options import load_key
        from privdl.errors import UsageError

        if not identifier and (key_env or key_file or column):
            raise UsageError("--key-env, --key-file and --column go with --identifier")
        if identifier and not (key_env or key_file):
            raise UsageError(
                "--identifier needs the pseudonymization key: give --key-env VAR or --key-file PATH"
            )
        audit_key = _audit_key(audit_key_env, audit_key_file)
        if identifier:
            from privdl.anonymize.pseudonym_lookup import pseudonyms_for

            raw = sys.stdin.readline().strip() if subject == "-" else subject
            key = load_key(key_env, key_file, required=True)
            pseudonyms = pseudonyms_for(raw, key=key, log=log, column=column)
        else:
            pseudonyms = [subject]
        reports = [erase_request(log, p, key=audit_key) for p in pseudonyms]
        if as_json:
            body = [r.to_dict() for r in reports]
            print(json.dumps(body[0] if len(body) == 1 else body, indent=2))
            return
        for report in reports:
            for line in _erasure_sentences(report):
                print(line)

    @audit.command("keygen")
    def keygen(
        out_dir: Annotated[
            Path | None,
            typer.Option("--out-dir", help="folder for audit-signing.key and audit-signing.pub (required)"),
        ] = None,
        name: Annotated[
            str,
            typer.Option(
                "--name", help="file name stem (default audit-signing: not the audit chain key's name)"
            ),
        ] = "audit-signing",
        as_json: JsonFlag = False,
        old_out: Annotated[Path | None, typer.Option("--out", hidden=True, help="old name of --out-dir")] = None,
    ) -> None:
        """Create an Ed25519 key pair for signing checkpoints (private key mode 0600)."""
        from privdl.audit.checkpoint import generate_signing_key, verifier_key
        from privdl.cli.options import renamed
        from privdl.errors import UsageError

        out = renamed(out_dir, old_out, new="--out-dir", old="--out")
        if out is None:
            raise UsageError("missing option --out-dir (the folder for the key pair)")

        priv, pub = generate_signing_key(out, name=name)
        vkey = verifier_key(pub)
        emit(
            as_json,
            {"signing_key": str(priv), "public_key": str(pub), "verifier_key": vkey},
            f"signing key: {priv} (keep it away from the log)\npublic key:  {pub}\nverifier key: {vkey}",
        )

    app.add_typer(audit, name="audit")


def _opt_path(value: object) -> Path | None:
    return Path(str(value)) if value else None



def _audit_key(key_env: str, key_file: Path | None) -> Any:
    """The audit (HMAC chain) key: ``--audit-key-file``, else the variable ``--audit-key-env``."""
    from privdl.keys import Secret

    return Secret.from_file(key_file) if key_file is not None else Secret.from_env(key_env)


def _when(time: object) -> str:
    text = str(time or "")
    return f"{text[:10]} at {text[11:16]} UTC" if len(text) >= 16 else (text or "an unrecorded time")


def _files(fingerprints: list[dict[str, Any]]) -> str:
    return ", ".join(f"{fp.get('name', 'a table')} (sha256 {str(fp.get('sha256', ''))[:12]})" for fp in fingerprints)


def _erasure_sentences(report: Any) -> list[str]:
    """One plain sentence per logged step that holds (or derives from) the person."""
    lines = [f"Erasure request recorded as audit entry {report.entry} (the log keeps a keyed reference, never the identifier)."]
    if not report.direct:
        lines.append("No logged step holds this person's data.")
        return lines
    for item in report.direct:
        verb = _ERASURE_VERBS.get(str(item["event"]), "processed this person's data")
        wrote = f" and wrote {_files(item['outputs'])}" if item["outputs"] else ""
        lines.append(f"Entry {item['seq']} ({item['event']}, {_when(item['time'])}) {verb}{wrote}.")
    for item in report.derived:
        wrote = f"; it wrote {_files(item['outputs'])}" if item["outputs"] else ""
        lines.append(
            f"Entry {item['seq']} ({item['event']}, {_when(item['time'])}) read data derived from a step above{wrote}."
        )
    lines.append("Acting on these files (erasing or retraining) is the controller's job.")
    return lines
