"""A clean install (issue 15, item 4): what pyproject.toml declares is what the code needs.

* ``pip install privdl`` (no extras) runs every command that needs no extra: the
  commands run here with every installed module that no base dependency (or one of
  its own requirements) provides made unimportable, as in a clean environment.
* The dev extra holds no cross-checker whose exact pins would downgrade the stack.
* No unused base dependency; package-data names only files that exist.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
# the import names of every extra's packages: none may be needed without its extra
EXTRA_MODULES = ("torch", "opacus", "tenseal", "pyspark", "sqlalchemy", "psycopg", "duckdb",
                 "sklearn", "safetensors", "pycanon", "hypothesis")  # fmt: skip
STACK = ("numpy", "pandas", "scipy", "typer", "pyarrow", "cryptography", "matplotlib", "rich")

packaging = pytest.importorskip("packaging.requirements")


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", packaging.Requirement(requirement).name).lower()


def _base() -> set[str]:
    return {_name(r) for r in PROJECT["dependencies"]}


def _closure(names: set[str]) -> set[str]:
    """The distributions ``names`` install: their own requirements, recursively (no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = packaging.Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_name(text))
    return seen


# Runs the commands that need no extra, with the extras' packages unimportable, then
# prints the top-level modules that were imported.
NO_EXTRAS = r"""
import importlib.abc, json, os, sys
BLOCKED = set(json.loads(open(sys.argv[1]).read()))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: an extra)", name=name)
        return None
sys.meta_path.insert(0, Block())
from privdl.cli import main
work, users = sys.argv[2], sys.argv[3]
ledger = os.path.join(work, "budget.db")
def run(*args):
    code = main(list(args))
    print(f"\n@@ {code} {' '.join(args[:2])}", file=sys.stderr)
    assert code == 0, args
run("keygen", "-o", os.path.join(work, "pseudonym.key"))
run("anonymize", users, "-o", os.path.join(work, "released.csv"), "--id", "email", "--drop", "ip",
    "--qi", "age", "--qi", "zip", "-k", "5", "--key-file", os.path.join(work, "pseudonym.key"),
    "--report", os.path.join(work, "anon.html"), "--audit-log", os.path.join(work, "audit.jsonl"))
run("risk", os.path.join(work, "released.csv"), "--qi", "age", "--qi", "zip", "--json")
run("budget", "set", ledger, "--dataset", "install-check", "--epsilon", "8", "--delta", "1e-5")
from privdl.budget.ledger import BudgetLedger
with BudgetLedger(ledger) as led:  # a run as a trainer records it, without torch
    run_id = led.reserve("install-check", history=[(1.1, 0.01, 500)], delta=1e-5)
    led.settle(run_id, history=[(1.1, 0.01, 400)])
run("budget", "show", ledger)
run("budget", "show", ledger, "--dataset", "install-check", "--json")
run("budget", "report", ledger, "--dataset", "install-check", "-o", os.path.join(work, "privacy.html"))
run("audit", "keygen", "--out-dir", os.path.join(work, "keys"))
run("audit", "verify", os.path.join(work, "audit.jsonl"))
run("--help")
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _not_in_a_clean_install() -> list[str]:
    """Top-level modules installed here that ``pip install privdl`` would not install."""
    installs = _closure(_base())
    blocked = set(EXTRA_MODULES)
    for module, dists in metadata.packages_distributions().items():
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in dists}
        if module.startswith("_") or module == "privdl" or module in sys.stdlib_module_names:
            continue
        if not names & installs:
            blocked.add(module)
    return sorted(blocked)


@pytest.fixture(scope="module")
def no_extras_run(tmp_path_factory):
    import secrets

    work = tmp_path_factory.mktemp("no-extras")
    blocked = work / "blocked.json"
    blocked.write_text(json.dumps(_not_in_a_clean_install()))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PRIVDL_AUDIT_KEY": "hex:" + secrets.token_hex(32)}
    env.pop("PRIVDL_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-c", NO_EXTRAS, str(blocked), str(work),
         str(ROOT / "examples" / "data" / "users.csv")],
        capture_output=True, text=True, env=env, cwd=work, check=False, timeout=300,
    )  # fmt: skip
    return proc


def test_commands_without_extras_run(no_extras_run):
    assert no_extras_run.returncode == 0, no_extras_run.stderr[-3000:]
    ran = re.findall(r"^@@ (\d+) (.*)$", no_extras_run.stderr, flags=re.M)
    assert [code for code, _ in ran] == ["0"] * 10, ran
    assert "internal error" not in no_extras_run.stderr
    imported = set(json.loads(no_extras_run.stdout.strip().splitlines()[-1]))
    assert not imported & set(EXTRA_MODULES)
    assert {"numpy", "pandas", "scipy"} <= imported  # the ledger's accountants ran


def test_the_clean_install_is_simulated():
    blocked = set(_not_in_a_clean_install())
    assert {"torch", "opacus", "sklearn"} <= blocked  # installed here, blocked there
    assert not blocked & {"numpy", "pandas", "scipy", "typer", "cryptography", "pyarrow"}


def test_dev_extra_does_not_pin_the_stack():
    """No package of the dev extra pins (==) a package of the stack users get."""
    dev = [_name(r) for r in EXTRAS["dev"] if not r.startswith("privdl")]
    assert "pycanon" not in dev
    pinned = {}
    for name in dev:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = packaging.Requirement(text)
            if _name(text) in STACK and any(s.operator in ("==", "===", "<", "<=", "~=") for s in req.specifier):
                pinned.setdefault(name, []).append(text)
    assert pinned == {}


def test_no_unused_base_dependency_and_package_data_exists():
    assert "jinja2" not in _base()
    imports: set[str] = set()
    for path in (ROOT / "privdl").rglob("*.py"):
        imports |= set(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", path.read_text(), flags=re.M))
    import_names = {"pyarrow": "pyarrow", "cryptography": "cryptography", "numpy": "numpy",
                    "pandas": "pandas", "typer": "typer", "rich": "rich", "matplotlib": "matplotlib",
                    "scipy": "scipy"}  # fmt: skip
    for dist in _base():
        assert import_names.get(dist, dist) in imports, f"base dependency {dist} is never imported"
    for package, patterns in PYPROJECT["tool"]["setuptools"]["package-data"].items():
        for pattern in patterns:
            assert list((ROOT / package).glob(pattern)), f"package-data {package}/{pattern} matches nothing"


def test_all_still_installs_every_extra():
    everything = EXTRAS["all"][0]
    assert set(packaging.Requirement(everything).extras) == set(EXTRAS) - {"all", "dev", "docs"}
