"""mkdocs hooks: pages generated at build time from the sources they document.

* ``cli.md``: the marker ``<!-- privdl:cli-reference -->`` becomes the help of every
  ``privdl`` command, walked from the typer/click command tree itself (no hand copy,
  so the page cannot drift from the CLI).
* ``<!-- privdl:include FILE -->`` becomes the text of a repository file (the threat
  model page is ``SECURITY.md``: one source for the repository and the site), and
  ``<!-- privdl:include FILE#NAME -->`` the part of it between ``<!-- NAME -->`` and
  ``<!-- /NAME -->`` (the quickstart quotes the README's main-job output that way).

``cli_reference()`` is importable without mkdocs (tests/test_docs.py uses it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CLI_MARKER = "<!-- privdl:cli-reference -->"
INCLUDE_MARKER = "<!-- privdl:include "
WIDTH = 88


def _commands(command: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    """``(words, command)`` for ``command`` and everything below it, in registration order."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        if getattr(sub, "hidden", False):
            continue
        found += _commands(sub, [*path, name])
    return found


def cli_reference() -> str:
    """Markdown: one section per command, its ``--help`` text as the CLI prints it."""
    import click
    import typer

    from privdl import cli

    cli._register_all()  # idempotent
    root = typer.main.get_command(cli.app)
    parts = []
    for words, command in _commands(root, ["privdl"]):
        ctx = click.Context(command, info_name=" ".join(words), terminal_width=WIDTH, max_content_width=WIDTH)
        help_text = command.get_help(ctx).rstrip()
        level = "#" * min(len(words) + 1, 4)
        parts.append(f"{level} `{' '.join(words)}`\n\n```text\n{help_text}\n```\n")
    return "\n".join(parts)


def _include(markdown: str) -> str:
    start = markdown.find(INCLUDE_MARKER)
    while start != -1:
        end = markdown.index("-->", start)
        name, _, section = markdown[start + len(INCLUDE_MARKER) : end].strip().partition("#")
        text = (ROOT / name).read_text(encoding="utf-8")
        if section:  # the part between <!-- SECTION --> and <!-- /SECTION -->
            body = text.split(f"<!-- {section} -->", 1)[1].split(f"<!-- /{section} -->", 1)[0]
        else:  # the included file's own title gives way to the page's
            body = text.split("\n", 1)[1] if text.startswith("# ") else text
        markdown = markdown[:start] + body.lstrip("\n") + markdown[end + 3 :]
        start = markdown.find(INCLUDE_MARKER)
    return markdown


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if INCLUDE_MARKER in markdown:
        markdown = _include(markdown)
    return markdown
