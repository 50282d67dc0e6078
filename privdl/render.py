"""Shared rendering of every privdl report: JSON, Markdown and self-contained HTML.

A report builds a :class:`Document` (sections of paragraphs, notes, key/value lists,
tables and figures) plus a JSON payload, and :func:`save` writes whichever the file
extension asks for. HTML embeds figures as base64 PNG and carries no external
resource (no scripts, fonts or style sheets fetched from anywhere), so a data
protection officer can open it offline and archive it as one file.

Example:
    >>> doc = Document("Demo", [Section("Summary", [Paragraph("All good.")])])
    >>> "# Demo" in to_markdown(doc)
    True
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privdl.errors import FormatError

__all__ = [
    "Code",
    "Document",
    "Figure",
    "KeyValues",
    "Note",
    "Paragraph",
    "Section",
    "Table",
    "dumps_json",
    "figure_png",
    "save",
    "to_html",
    "to_markdown",
]


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Note:
    """A highlighted remark; ``kind`` is ``"warning"`` or ``"info"``."""

    text: str
    kind: str = "warning"


@dataclass(frozen=True)
class KeyValues:
    rows: Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True)
class Figure:
    png: bytes = field(repr=False)
    caption: str = ""


Block = Paragraph | Note | KeyValues | Table | Figure


@dataclass(frozen=True)
class Section:
    heading: str
    blocks: Sequence[Block]


@dataclass(frozen=True)
class Code:
    """Preformatted text (JSON), shown folded in HTML and fenced in Markdown; ``ident``
    names it so a program can find it again (a report's embedded run manifest)."""

    text: str
    caption: str = ""
    ident: str = ""
    language: str = "json"


@dataclass(frozen=True)
class Document:
    title: str
    sections: Sequence[Section]
    subtitle: str = ""


def figure_png(fig: Any, *, dpi: int = 110) -> bytes:
    """Render a matplotlib figure to PNG bytes (Agg backend) and close it."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}"
        return f"{value:.3e}"
    if value is None:
        return "—"
    return str(value)


def dumps_json(payload: Any) -> str:
    """One stable JSON encoding for reports: sorted keys, indent 2, no NaN."""
    return json.dumps(payload, sort_keys=True, indent=2, default=_json_default, allow_nan=False) + "\n"


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths appear in payloads; convert without importing numpy
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | frozenset | tuple):
        return sorted(obj) if isinstance(obj, set | frozenset) else list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} in a report")


# ----------------------------------------------------------------------------- markdown
def _md_cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document) -> str:
    """Markdown text of the document; figures are referenced by caption only."""
    out = [f"# {doc.title}", ""]
    if doc.subtitle:
        out += [f"_{doc.subtitle}_", ""]
    for section in doc.sections:
        out += [f"## {section.heading}", ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                out += [block.text, ""]
            elif isinstance(block, Note):
                label = "Warning" if block.kind == "warning" else "Note"
                out += [f"> **{label}:** {block.text}", ""]
            elif isinstance(block, KeyValues):
                out += ["| | |", "|---|---|"]
                out += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in block.rows]
                out.append("")
            elif isinstance(block, Table):
                out.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
                out.append("|" + "---|" * len(block.columns))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                out.append("")
            elif isinstance(block, Figure):
                out += [f"_Figure: {block.caption} (see the HTML report)_", ""]
            elif isinstance(block, Code):
                if block.caption:
                    out += [block.caption, ""]
                out += [f"```{block.language} {block.ident}".rstrip(), block.text.rstrip("\n"), "```", ""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:62rem;margin:2rem auto;
padding:0 1rem;color:#1b1f24;line-height:1.45}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{font-size:1.25rem;border-bottom:1px solid #d0d7de;
padding-bottom:.2rem;margin-top:2rem}.subtitle{color:#57606a;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}table.kv th{width:18rem}
.note{border-left:4px solid #0969da;background:#ddf4ff;padding:.5rem .8rem;margin:.6rem 0}
.note.warning{border-color:#bf8700;background:#fff8c5}
figure{margin:1rem 0}figure img{max-width:100%}figcaption{color:#57606a;font-size:.9rem}
pre{background:#f6f8fa;padding:.5rem;overflow:auto;font-size:.8rem}
footer{margin-top:3rem;color:#57606a;font-size:.85rem}
"""


def to_html(doc: Document) -> str:
    """A self-contained HTML page (inline CSS, base64 PNG figures, no scripts)."""
    e = html.escape
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(doc.title)}</h1>",
    ]
    if doc.subtitle:
        out.append(f'<p class="subtitle">{e(doc.subtitle)}</p>')
    for section in doc.sections:
        out.append(f"<section><h2>{e(section.heading)}</h2>")
        for block in section.blocks:
            if isinstance(block, Paragraph):
                out.append(f"<p>{e(block.text)}</p>")
            elif isinstance(block, Note):
                kind = "warning" if block.kind == "warning" else "info"
                out.append(f'<div class="note {kind}">{e(block.text)}</div>')
            elif isinstance(block, KeyValues):
                rows = "".join(f"<tr><th>{e(_fmt(k))}</th><td>{e(_fmt(v))}</td></tr>" for k, v in block.rows)
                out.append(f'<table class="kv">{rows}</table>')
            elif isinstance(block, Table):
                head = "".join(f"<th>{e(_fmt(c))}</th>" for c in block.columns)
                body = "".join(
                    "<tr>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in row) + "</tr>" for row in block.rows
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif isinstance(block, Figure):
                data = base64.b64encode(block.png).decode("ascii")
                out.append(
                    f'<figure><img alt="{e(block.caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{e(block.caption)}</figcaption></figure>"
                )
            elif isinstance(block, Code):
                ident = f' id="{e(block.ident)}"' if block.ident else ""
                out.append(
                    f"<details><summary>{e(block.caption or 'data')}</summary>"
                    f"<pre{ident}>{e(block.text)}</pre></details>"
                )
        out.append("</section>")
    from privdl._version import __version__

    out.append(f"<footer>Generated by privdl {e(__version__)}.</footer></body></html>")
    return "\n".join(out) + "\n"


def save(doc: Document, path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write the report in the format the extension names (.json, .md, .html), atomically.

    Raises:
        FormatError: another extension.
        InputError: a path :func:`privdl.io.check_output_path` refuses (checked first).
    """
    from privdl.io import atomic_write, check_output_path

    target = check_output_path(path, what="report")
    suffix = target.suffix.lower()
    if suffix == ".json":
        text = dumps_json(payload)
    elif suffix in (".md", ".markdown"):
        text = to_markdown(doc)
    elif suffix in (".html", ".htm"):
        text = to_html(doc)
    else:
        raise FormatError(f"{target}: unknown report format; use .json, .md or .html")
    with atomic_write(target, "w") as fh:
        fh.write(text)
    return target
