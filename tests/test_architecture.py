"""The dependency rule of docs/architecture.md, checked on the source.

Every ``import`` statement in ``privdl/`` counts, the lazy ones inside functions
included (they run as soon as the function does): a lazy import is a dependency with a
delay, not an exception to the rule.

    cli -> encrypted -> train -> anonymize -> base
                          \\-> budget -> audit -> base

* the base (modules directly in ``privdl/``) imports only the base;
* audit/ imports only the base; budget/ only the base and audit/;
* anonymize/ only the base and audit/ (never torch, opacus or tenseal);
* train/ may use anonymize/, budget/ and audit/; encrypted/ may use train/ too;
  only the CLI may import everything, and nothing imports the CLI;
* nothing imports the top-level ``privdl`` package (its lazy public API is for users);
* no import cycles between modules;
* the torch-free readers (``train/encoding.py``, ``train/modelfile.py``) import no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "privdl"

#: wing -> the wings it may import (itself always allowed)
ALLOWED = {
    "base": {"base"},
    "audit": {"base"},
    "budget": {"base", "audit"},
    "anonymize": {"base", "audit"},
    "train": {"base", "audit", "budget", "anonymize"},
    "encrypted": {"base", "audit", "budget", "anonymize", "train"},
    "cli": {"base", "audit", "budget", "anonymize", "train", "encrypted"},
}
HEAVY = {"torch", "opacus", "tenseal"}
TORCH_FREE = {"privdl.train.encoding", "privdl.train.modelfile"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _wing(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "top"  # privdl/__init__.py: the public API
    if module == "privdl.__main__":
        return "cli"  # `python -m privdl` is the CLI's entry point
    if module in MODULES and MODULES[module].parent == PACKAGE and MODULES[module].name != "__init__.py":
        return "base"
    return parts[1] if parts[1] in ALLOWED else "base"


def _imports(module: str) -> list[tuple[int, str]]:
    """(line, imported name) of every import in ``module``, relative ones resolved."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            for alias in node.names:
                # `from privdl.audit import log` imports the module privdl.audit.log
                sub = f"{stem}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else stem))
    return found


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for _, name in _imports(module):
            if name in MODULES and name != module:
                graph[module].add(name)
    return graph


def test_wings_import_only_what_the_rule_allows() -> None:
    bad = []
    for module in MODULES:
        wing = _wing(module)
        if wing == "top":
            continue
        for line, name in _imports(module):
            if not name.startswith("privdl"):
                continue
            if name == "privdl":
                bad.append(f"{module}:{line} imports the top-level privdl package")
                continue
            target = _wing(name) if name in MODULES else "base"
            if name == "privdl.cli" or target == "cli":
                if wing != "cli":
                    bad.append(f"{module}:{line} imports the CLI ({name})")
                continue
            if target != wing and target not in ALLOWED[wing]:
                bad.append(f"{module}:{line} ({wing}) imports {name} ({target})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules() -> None:
    graph = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_heavy_libraries_stay_where_they_belong() -> None:
    bad = []
    for module in MODULES:
        wing = _wing(module)
        for line, name in _imports(module):
            top = name.split(".")[0]
            if top not in HEAVY:
                continue
            if wing in {"anonymize", "audit", "budget", "base"} and top in {"torch", "opacus", "tenseal"}:
                # budget/ may use torch only where a trained model is evaluated (membership test)
                if wing == "budget" and top == "torch":
                    continue
                bad.append(f"{module}:{line} ({wing}) imports {name}")
            if module in TORCH_FREE and top in {"torch", "opacus"}:
                bad.append(f"{module}:{line} must not import {name}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "code",
    [
        # the data wing runs without torch: an anonymization and a risk assessment
        """
        import pandas as pd
        import privdl
        frame = pd.DataFrame({"email": ["a@x.org", "b@x.org"] * 5, "age": list(range(20, 30)),
                              "zip": ["10115"] * 10})
        policy = privdl.Policy(identifiers=["email"], quasi_identifiers=["age", "zip"], k=2)
        privdl.Anonymizer(policy, key=privdl.Secret.generate()).fit_transform(frame)
        privdl.assess_risk(frame, quasi_identifiers=["age", "zip"])
        """,
    ],
)
def test_the_data_wing_never_loads_torch_or_tenseal(code: str) -> None:
    probe = textwrap.dedent(code) + textwrap.dedent(
        """
        import sys
        loaded = sorted(m for m in ("torch", "opacus", "tenseal") if m in sys.modules)
        print(",".join(loaded))
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"loaded {out.stdout.strip()}"
