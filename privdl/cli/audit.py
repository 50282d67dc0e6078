"""`privdl audit` commands: verify, checkpoint, records, erase-request, keygen.

The audit key comes from the environment variable named by ``--audit-key-env``
(default ``PRIVDL_AUDIT_KEY``), for writing and verifying alike; a missing key is an
exit-2 error. Tampering is exit 1 and names the first bad entry and its kind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

_KEY_ENV_HELP = "environment variable holding the audit key"


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
    ) -> None:
        """Check every entry, the chain and (with --checkpoint) truncation. Exit 1 if tampered."""
        from privdl.audit.verify import verify_audit_log
        from privdl.config import audit_defaults, load_config
        from privdl.keys import Secret

        defaults = audit_defaults(load_config(config))
        key = Secret.from_env(audit_key_env)
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
    ) -> None:
        """Verify the log, then sign a checkpoint of it (store it apart from the log)."""
        from privdl.audit.verify import checkpoint_log
        from privdl.io import check_output_path
        from privdl.keys import Secret

        check_output_path(out, what="checkpoint")  # before the key is read or the log verified
        key = Secret.from_env(audit_key_env)
        cp = checkpoint_log(log, key=key, signing_key=signing_key, output=out)
        print(f"{out}: checkpoint of {log}: {cp.size} entries, head {cp.root_hash.hex()[:16]}")

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
    ) -> None:
        """Export the record of processing activities (GDPR Article 30) as CSV or JSON."""
        from privdl.audit.records import build_records, write_records
        from privdl.audit.verify import verify_audit_log
        from privdl.errors import InputError
        from privdl.io import check_output_path
        from privdl.keys import Secret

        if out.suffix.lower() not in (".csv", ".json"):
            raise InputError(f"records output {out.name}: use a .csv or .json file name")
        check_output_path(out, what="records output")  # before the log is read
        verified = None
        if not no_verify:
            verified = verify_audit_log(log, key=Secret.from_env(audit_key_env))
        rec = build_records(log, config=config, verified=verified)
        write_records(rec, out)
        count, entries = len(rec["activities"]), rec["log"]["entries"]
        print(f"{out}: {count} processing activities from {entries} entries")

    @audit.command("erase-request")
    def erase_request_cmd(
        subject_id: Annotated[str, typer.Argument(help="the data subject's pseudonym")],
        log: Annotated[Path, typer.Option("--log", help="the audit log")],
        audit_key_env: Annotated[str, typer.Option("--audit-key-env", help=_KEY_ENV_HELP)] = (
            "PRIVDL_AUDIT_KEY"
        ),
        as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    ) -> None:
        """Record an erasure request (GDPR Article 17); list what holds the subject."""
        from privdl.audit.erasure import erase_request
        from privdl.keys import Secret

        report = erase_request(log, subject_id, key=Secret.from_env(audit_key_env))
        if as_json:
            print(json.dumps(report.to_dict(), indent=2))
            return
        print(f"erasure request recorded as entry {report.entry} (subject ref {report.subject_ref})")
        if not report.direct:
            print("no logged dataset holds this pseudonym")
        for label, items in (("holds the subject", report.direct), ("derived", report.derived)):
            for item in items:
                names = (
                    ", ".join(
                        f"{fp.get('name', '?')} (sha256 {str(fp.get('sha256', ''))[:12]})"
                        for fp in item["outputs"]
                    )
                    or "-"
                )
                print(f"  entry {item['seq']} {item['time']} {item['event']}: {label}: {names}")

    @audit.command("keygen")
    def keygen(
        out: Annotated[Path, typer.Option("--out", help="folder for audit.key and audit.pub")],
        name: Annotated[str, typer.Option("--name", help="file name stem")] = "audit",
    ) -> None:
        """Create an Ed25519 key pair for signing checkpoints (private key mode 0600)."""
        from privdl.audit.checkpoint import generate_signing_key, verifier_key

        priv, pub = generate_signing_key(out, name=name)
        print(f"signing key: {priv} (keep it away from the log)\npublic key:  {pub}")
        print(f"verifier key: {verifier_key(pub)}")

    app.add_typer(audit, name="audit")


def _opt_path(value: object) -> Path | None:
    return Path(str(value)) if value else None
