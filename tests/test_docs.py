"""The documentation site: its links resolve, its CLI reference is the CLI's, it builds strictly.

The full `mkdocs build --strict` runs when mkdocs is installed (`pip install -e ".[docs]"`,
as .ci/run does); the link and nav checks run everywhere.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")


def _hooks():
    spec = importlib.util.spec_from_file_location("privdl_docs_hooks", DOCS / "hooks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text.split("\nnav:\n", 1)[1]
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav, flags=re.M)


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    pages = _nav_pages()
    assert "dpo.md" in pages and "cli.md" in pages and "concepts.md" in pages
    for page in pages:
        assert (DOCS / page).is_file(), page
    # pages others add later (docs/scale*.md) must be put in the nav too
    on_disk = {p.name for p in DOCS.glob("*.md")}
    missing = sorted(on_disk - set(pages))
    assert not missing, f"add these pages to the nav in mkdocs.yml: {missing}"


def test_links_between_pages_resolve_inside_the_site() -> None:
    for page in DOCS.glob("*.md"):
        for target, _anchor in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(DOCS), f"{page.name}: {target} is outside docs/"
            assert resolved.exists(), f"{page.name}: {target} does not exist"


def test_included_sources_exist() -> None:
    for page in DOCS.glob("*.md"):
        for name in re.findall(r"<!-- privdl:include ([^ #]+)", page.read_text(encoding="utf-8")):
            assert (ROOT / name).is_file(), f"{page.name} includes {name}"


def test_cli_reference_is_generated_from_every_command() -> None:
    pytest.importorskip("typer")
    import typer

    from privdl import cli

    text = _hooks().cli_reference()
    cli._register_all()
    root = typer.main.get_command(cli.app)
    names = []
    for name, command in root.commands.items():
        names.append(f"privdl {name}")
        names += [f"privdl {name} {sub}" for sub in getattr(command, "commands", {})]
    assert len(names) >= 15
    for name in names:
        assert f"`{name}`" in text, name
    # options come from the command itself, not from a copy
    anonymize = root.commands["anonymize"]
    for param in anonymize.params:
        for opt in param.opts:
            if opt.startswith("-"):
                assert opt in text, opt


def test_quickstart_quotes_the_readme_block() -> None:
    hooks = _hooks()
    page = hooks._include((DOCS / "quickstart.md").read_text(encoding="utf-8"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- main-job-output -->", 1)[1].split("<!-- /main-job-output -->", 1)[0]
    assert block.strip() in page and "<!-- privdl:include" not in page


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="mkdocs / mkdocs-material not installed (pip install -e '.[docs]')",
)
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "privdl he score" in (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")


RUNNABLE = re.compile(r"<!-- runnable -->\n```python\n(.*?)\n```", re.S)
NEEDS = {"budget.md": ("torch", "opacus"), "encrypted.md": ("sklearn", "tenseal")}


def test_every_module_page_has_a_runnable_example() -> None:
    for page in ("anonymize.md", "anonymize-k.md", "encoding.md", "budget.md", "encrypted.md", "audit.md"):
        assert RUNNABLE.search((DOCS / page).read_text(encoding="utf-8")), page


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md") if "<!-- runnable -->" in p.read_text()))
def test_runnable_examples_run(page: str, tmp_path: Path) -> None:
    """Each block marked ``<!-- runnable -->`` runs as written from the repository root
    (here a scratch folder with ``examples/`` linked in, so outputs land in tmp)."""
    for module in NEEDS.get(page, ()):
        pytest.importorskip(module)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    for code in RUNNABLE.findall((DOCS / page).read_text(encoding="utf-8")):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{page}:\n{done.stderr[-2000:]}"
        assert done.stdout.strip(), page  # each example prints what it shows
