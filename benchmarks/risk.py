"""Benchmark for issue 3: `privdl risk` on Adult, beside pycanon (ANCHORS.md: 25.2 s).

Run: ``python benchmarks/risk.py`` (under a minute; pycanon, when installed, is timed
once on the full table because it loops over equivalence classes in Python).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ADULT = Path(
    os.environ.get("PRIVDL_ADULT", Path(__file__).resolve().parents[2] / "shared" / "data" / "adult")
)
QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]
PYCANON_ANCHOR_S = 25.2


def line(measure: str, value: str, anchor: str, ratio: str = "") -> None:
    print(f"{measure:<58} {value:>10}   anchor: {anchor}{'   ' + ratio if ratio else ''}", flush=True)


def main() -> None:
    from privdl.anonymize.risk import assess_risk

    print(f"privdl risk benchmark (python {sys.version.split()[0]}, {os.cpu_count()} cores)")
    frame = pd.read_csv(ADULT / "adult.csv", sep=";")
    run = lambda: assess_risk(frame, quasi_identifiers=QIS, sensitive=["salary-class"])  # noqa: E731
    report = run()
    times = []
    for _ in range(7):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    ours = statistics.median(times)
    line(
        "assess_risk, Adult 8 QIs, k/l/entropy-l/t/risk (median of 7)",
        f"{ours:.3f} s",
        f"pycanon 1.3.6 entropy-l {PYCANON_ANCHOR_S} s (ANCHORS.md)",
        f"{PYCANON_ANCHOR_S / ours:.0f}x",
    )
    line("  unique records on the 8 QIs", f"{report.unique_share:.1%}", "46.5% (SOURCE.md)")

    exe = shutil.which("privdl")
    launcher = [exe] if exe else [sys.executable, "-c", "from privdl.cli import main; main()"]
    cmd = [*launcher, "risk", str(ADULT / "adult.csv"), "--sensitive", "salary-class", "--json"]
    for col in QIS:
        cmd += ["--qi", col]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    line(
        "the same as a whole `privdl risk` process (median of 3)",
        f"{statistics.median(times):.2f} s",
        "goal <= 0.5 s in-process",
    )

    try:
        from pycanon import anonymity
    except ImportError:
        line("pycanon entropy-l, run here", "skipped", "pip install pycanon")
        return
    start = time.perf_counter()
    theirs = anonymity.entropy_l_diversity(frame, QIS, ["salary-class"])
    elapsed = time.perf_counter() - start
    same = theirs == int(report.l_entropy["salary-class"] + 1e-9)
    line(
        "pycanon entropy_l_diversity on the same table, run here",
        f"{elapsed:.1f} s",
        f"privdl {ours:.3f} s for all figures",
        f"{elapsed / ours:.0f}x, same l: {same}",
    )


if __name__ == "__main__":
    main()
