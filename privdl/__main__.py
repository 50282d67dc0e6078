"""``python -m privdl`` runs the CLI."""

from privdl.cli import main

main()
