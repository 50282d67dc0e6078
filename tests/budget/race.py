"""Two processes charging one dataset at the same moment: the harness both ledger
backends (SQLite, PostgreSQL) are raced with."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from privdl.budget.accounting import epsilon_of

PER_CHARGE = [(1.0, 0.01, 20)]
DELTA = 1e-5

_CHARGER = textwrap.dedent(
    """
    import json, os, sys, time
    from privdl.budget.ledger import BudgetLedger
    from privdl.errors import BudgetExceededError
    location, dataset, go, ready, n = sys.argv[1:6]
    led = BudgetLedger(location)
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    ok = refused = 0
    for _ in range(int(n)):
        try:
            led.reserve(dataset, history=[(1.0, 0.01, 20)], delta=1e-5, accountant="rdp")
            ok += 1
        except BudgetExceededError:
            refused += 1
    print(json.dumps({"ok": ok, "refused": refused}))
    """
)


def capacity(total: float) -> int:
    """How many charges of PER_CHARGE fit in ``total`` epsilon (RDP composition)."""
    n = 0
    while epsilon_of(PER_CHARGE * (n + 1), delta=DELTA, accountant="rdp") <= total:
        n += 1
    return n


def race(
    location: str,
    dataset: str,
    tmp_path: Path,
    *,
    charges: int = 50,
    timeout: float = 120,
    processes: int = 2,
) -> list[dict[str, Any]]:
    """Start ``processes`` charger processes, release them together, return their counts."""
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHARGER,
                location,
                dataset,
                str(go),
                str(tmp_path / f"r{i}"),
                str(charges),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"r{i}").exists() for i in range(processes)):
        assert time.monotonic() < deadline, "charger processes did not start"
        time.sleep(0.02)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    return results
