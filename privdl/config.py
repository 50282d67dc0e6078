"""Reading ``privdl.toml``, and the default names of privdl's environment variables.

The file is found at the path given, else ``$PRIVDL_CONFIG``, else ``./privdl.toml``;
none of them is needed. Recognised tables::

    [audit]
    log = "audit/audit.jsonl"         # default for every --audit-log
    actor = "data-team"               # who runs privdl (else $PRIVDL_ACTOR, else OS user)
    purpose = "retention-model"       # default purpose of entries
    legal_basis = "Art. 6(1)(f) legitimate interests"
    public_key = "keys/audit-signing.pub"  # checkpoint verification key
    checkpoint = "/mnt/evidence/audit.checkpoint"

    [controller]
    name = "Example GmbH"
    contact = "privacy@example.com"
    representative = "..."            # Art. 27, when needed

    [dpo]
    name = "..."
    contact = "dpo@example.com"

    [[purposes]]                      # one processing activity each
    id = "retention-model"
    description = "Predict customer churn to plan retention offers"
    legal_basis = "Art. 6(1)(f)"
    data_subjects = ["customers"]
    personal_data = ["contract data", "usage data"]
    recipients = ["internal analytics"]
    transfers = []                    # names of [[transfers]] entries, or free text
    retention = "24 months after contract end"

    [[recipients]]
    name = "Cloud host"
    category = "processor (Art. 28)"

    [[transfers]]
    country = "US"
    recipient = "Cloud host"
    safeguard = "EU-US Data Privacy Framework"

    [retention]
    default = "36 months"

Environment variables (their names are defined here only):

======================  ==========================================================
``PRIVDL_KEY``          the pseudonymization master key (:data:`KEY_ENV`)
``PRIVDL_AUDIT_KEY``    the audit log's MAC key (:data:`AUDIT_KEY_ENV`)
``PRIVDL_ACTOR``        who runs privdl, for audit entries (:data:`ACTOR_ENV`)
``PRIVDL_CONFIG``       the config file (:data:`CONFIG_ENV`)
======================  ==========================================================
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from privdl.errors import InputError

__all__ = [
    "ACTOR_ENV",
    "AUDIT_KEY_ENV",
    "CONFIG_ENV",
    "CONFIG_NAME",
    "KEY_ENV",
    "audit_defaults",
    "default_audit_log",
    "find_config",
    "load_config",
]

KEY_ENV = "PRIVDL_KEY"
AUDIT_KEY_ENV = "PRIVDL_AUDIT_KEY"
ACTOR_ENV = "PRIVDL_ACTOR"
CONFIG_ENV = "PRIVDL_CONFIG"
CONFIG_NAME = "privdl.toml"


def find_config(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to use: ``path``, else ``$PRIVDL_CONFIG``, else ``./privdl.toml``.

    Raises:
        InputError: ``path`` or ``$PRIVDL_CONFIG`` names a file that does not exist.
    """
    if path is not None:
        p = Path(path)
    elif os.environ.get(CONFIG_ENV):
        p = Path(os.environ[CONFIG_ENV])
    else:
        p = Path(CONFIG_NAME)
        return p if p.is_file() else None
    if not p.is_file():
        raise InputError(f"config file {p} does not exist")
    return p


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The parsed config (an empty dict when there is none).

    Relative paths under ``[audit]`` are resolved against the config file's folder.
    """
    p = find_config(path)
    if p is None:
        return {}
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"config file {p} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"config file {p} is not UTF-8 text") from None
    audit = data.get("audit")
    if audit is not None and not isinstance(audit, dict):
        raise InputError(f"config file {p}: [audit] must be a table")
    for name in ("log", "public_key", "checkpoint"):
        if audit and isinstance(audit.get(name), str):
            audit[name] = str((p.parent / audit[name]).resolve())
    data["_path"] = str(p)
    return data


def audit_defaults(config: dict[str, Any] | None) -> dict[str, Any]:
    """The ``[audit]`` table of a loaded config (empty when absent)."""
    if not config:
        return {}
    audit = config.get("audit") or {}
    return dict(audit)


def default_audit_log(config: str | os.PathLike[str] | None = None) -> Path | None:
    """The audit log named by ``[audit] log`` in the config, for ``--audit-log`` defaults."""
    log = audit_defaults(load_config(config)).get("log")
    return Path(log) if log else None
