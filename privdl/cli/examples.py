"""An example for every ``--help``: the epilog of each command and group.

Kept in one table (the command path -> the lines shown), set as typer's ``epilog`` of
each registered command and group by :func:`add_examples` (called once, when the
commands are registered), so a command module stays a parser and a call, and every
reader of the tree (``--help``, the site's generated CLI reference) shows them; a
command that sets its own epilog keeps it. ``tests/cli/test_cli_habits.py`` checks that
every command in the tree has one.
"""

from __future__ import annotations

from typing import Any

EXAMPLES: dict[str, tuple[str, ...]] = {
    "privdl": (
        "privdl keygen -o pseudonym.key",
        "privdl anonymize users.csv -o released.parquet --id email --qi age --qi zip -k 5"
        " --key-file pseudonym.key",
        "privdl budget show budget.db",
    ),
    "privdl anonymize": (
        "privdl anonymize users.csv -o released.parquet --id email --id phone:mask --drop ip"
        " --qi age --qi zip -k 5 --key-file pseudonym.key --report report.html",
        "export-users | privdl anonymize - -o - --format jsonl --policy policy.toml"
        " --key-env PRIVDL_KEY > released.jsonl",
    ),
    "privdl risk": (
        "privdl risk released.parquet --qi age --qi zip --sensitive diagnosis --max-risk 0.2",
        "privdl risk - --qi age --qi zip --json < released.csv",
    ),
    "privdl diff": ("privdl diff run-a/manifest.json run-b/manifest.json --json",),
    "privdl keygen": (
        "privdl keygen -o pseudonym.key",
        "privdl anonymize users.csv -o out.csv --id email --key-file pseudonym.key",
    ),
    "privdl train": (
        "privdl train released.csv --target retained --model logistic --epsilon 2"
        " --ledger budget.db --dataset-id retention-2026-11 -o model/",
        "privdl train events.csv --target retained --model mlp:32 --epsilon 2 --privacy-unit user"
        " --user-column user_pseudonym --max-records-per-user 32 -o model/",
    ),
    "privdl budget": (
        "privdl budget set budget.db --dataset retention-2026-11 --epsilon 8 --delta 1e-5",
        "privdl budget show budget.db --dataset retention-2026-11",
    ),
    "privdl budget show": ("privdl budget show budget.db --dataset retention-2026-11 --json",),
    "privdl budget set": ("privdl budget set budget.db --dataset retention-2026-11 --epsilon 8 --delta 1e-5",),
    "privdl budget report": ("privdl budget report budget.db --dataset retention-2026-11 -o privacy.html",),
    "privdl audit": (
        "privdl audit verify audit.jsonl --checkpoint audit.checkpoint --public-key keys/audit-signing.pub",
        "privdl audit records audit.jsonl -o records.csv",
    ),
    "privdl audit verify": (
        "PRIVDL_AUDIT_KEY=$(cat audit-chain.key) privdl audit verify audit.jsonl"
        " --checkpoint audit.checkpoint --public-key keys/audit-signing.pub",
    ),
    "privdl audit checkpoint": (
        "privdl audit checkpoint audit.jsonl --signing-key keys/audit-signing.key -o audit.checkpoint",
    ),
    "privdl audit records": ("privdl audit records audit.jsonl -o records.csv",),
    "privdl audit erase-request": ("privdl audit erase-request uq57wuutfbq6ig4d --log audit.jsonl --json",),
    "privdl audit keygen": ("privdl audit keygen --out-dir keys/",),
    "privdl he": (
        "privdl he keygen --out-dir keys/ --model model/",
        "privdl he encrypt users.csv --keys keys/ --columns age,income -o batch.enc",
        "privdl he score batch.enc --model model/ --public keys/public.he -o scores.enc",
        "privdl he decrypt scores.enc --keys keys/ -o scores.csv",
    ),
    "privdl he keygen": ("privdl he keygen --out-dir keys/ --model model/ --output-kind probability",),
    "privdl he encrypt": ("privdl he encrypt users.csv --keys keys/ --columns age,income -o batch.enc",),
    "privdl he score": ("privdl he score batch.enc --model model/ --public keys/public.he -o scores.enc",),
    "privdl he decrypt": ("privdl he decrypt scores.enc --keys keys/ -o scores.csv --decimals 3",),
}


def epilog(lines: tuple[str, ...]) -> str:
    """The epilog text: click keeps a paragraph that starts with ``\\b`` unwrapped."""
    return "Examples:\n\n\b\n" + "\n".join(f"  $ {line}" for line in lines)


def _unset(value: Any) -> bool:
    return not getattr(value, "value", value)  # None, or typer's DefaultPlaceholder(None)


def add_examples(app: Any, path: str = "privdl") -> None:
    """Set the epilog of ``app`` (a typer.Typer), of its commands and of its groups, from
    :data:`EXAMPLES`, where none is set."""
    if path in EXAMPLES and _unset(app.info.epilog):
        app.info.epilog = epilog(EXAMPLES[path])
    for info in app.registered_commands:
        name = info.name or info.callback.__name__.lower().replace("_", "-")
        lines = EXAMPLES.get(f"{path} {name}")
        if lines and _unset(info.epilog):
            info.epilog = epilog(lines)
    for group in app.registered_groups:
        sub = group.typer_instance
        name = group.name if not _unset(group.name) else sub.info.name
        lines = EXAMPLES.get(f"{path} {name}")
        if lines and _unset(group.epilog) and _unset(sub.info.epilog):
            group.epilog = epilog(lines)
        add_examples(sub, f"{path} {name}")
