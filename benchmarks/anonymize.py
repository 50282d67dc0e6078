"""Benchmark for issue 3: k-anonymity on Adult, printed beside the anchors of ANCHORS.md.

Run: ``python benchmarks/anonymize.py`` (about 2-3 minutes on 2 cores). Needs the Adult
data (``../shared/data/adult`` or ``PRIVDL_ADULT``); runs anonypy 0.2.1 as the anchor
when it is installed (``pip install anonypy==0.2.1``), on a subset because it takes a
minute on the full table.

Setup of every figure: 8 quasi-identifiers (sex, age, race, marital-status, education,
native-country, workclass, occupation), sensitive salary-class, ARX hierarchies for
the 7 categorical columns, age numeric (Mondrian releases its ranges), k=10.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ADULT = Path(
    os.environ.get("PRIVDL_ADULT", Path(__file__).resolve().parents[2] / "shared" / "data" / "adult")
)
QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]
HIER = {c: str(ADULT / f"adult_hierarchy_{c}.csv") for c in QIS if c != "age"}
ANONYPY_FULL_S = 59.8  # ANCHORS.md: anonypy 0.2.1, k=10, full Adult, this machine
ANONYPY_ROWS = 10_000


def load() -> pd.DataFrame:
    return pd.read_csv(ADULT / "adult.csv", sep=";")


def policy(**kw):
    from privdl import Policy

    args = dict(quasi_identifiers=QIS, sensitive=["salary-class"], k=10, hierarchies=HIER)
    args.update(kw)
    return Policy(**args)


def median_time(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def line(measure: str, value: str, anchor: str, ratio: str = "") -> None:
    print(f"{measure:<58} {value:>12}   anchor: {anchor}{'   ' + ratio if ratio else ''}", flush=True)


def ncp_of(frame, released, pol, suppressed: int) -> float:
    from privdl.anonymize.generalize import encode_for
    from privdl.anonymize.metrics import information_loss

    encoded, _ = encode_for(frame, pol)
    return information_loss(released, encoded, suppressed=suppressed)["ncp"]


def million() -> None:
    """Child process: 1,000,000 rows resampled from Adult with jitter; time and peak RSS."""
    from privdl.anonymize.generalize import generalize

    frame = load()
    rng = np.random.default_rng(7)
    big = frame.iloc[rng.integers(0, len(frame), 1_000_000)].reset_index(drop=True)
    big["age"] = np.clip(big["age"].to_numpy() + rng.integers(-2, 3, len(big)), 17, 90)
    # jitter categories too: 5% of each categorical cell gets a value of another record
    for col in QIS:
        if col == "age":
            continue
        flip = rng.random(len(big)) < 0.05
        donors = rng.integers(0, len(big), int(flip.sum()))
        values = big[col].to_numpy(copy=True)
        values[flip] = values[donors]
        big[col] = values
    pol = policy()
    start = time.perf_counter()
    result = generalize(big, pol)
    elapsed = time.perf_counter() - start
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    ncp = ncp_of(big, result.released, pol, result.suppressed)
    print(json.dumps({"seconds": elapsed, "rss_gb": rss_gb, "ncp": ncp, "classes": result.info["classes"]}))


def main() -> None:
    from privdl.anonymize.generalize import generalize

    print(f"privdl anonymize benchmark (python {sys.version.split()[0]}, {os.cpu_count()} cores)")
    frame = load()
    pol = policy()
    generalize(frame, pol)  # warm caches and imports
    seconds, result = median_time(lambda: generalize(frame, pol), 7)
    line(
        "Adult 30,162 x 8 QIs, k=10, Mondrian in-process (median of 7)",
        f"{seconds:.3f} s",
        f"anonypy 0.2.1 {ANONYPY_FULL_S} s (ANCHORS.md)",
        f"{ANONYPY_FULL_S / seconds:.0f}x",
    )
    ncp = ncp_of(frame, result.released, pol, result.suppressed)
    line(
        "  information loss NCP at k=10, rows suppressed",
        f"{ncp:.2%}, {result.suppressed}",
        "strict Mondrian 12-17%; ARX-style global 34% (5% suppressed)",
    )

    from privdl import Anonymizer

    seconds_full, _ = median_time(lambda: Anonymizer(pol).fit_transform(frame), 3)
    line("  Anonymizer.fit_transform incl. report (median of 3)", f"{seconds_full:.3f} s", "-")

    try:
        import anonypy
    except ImportError:
        line(f"anonypy on the first {ANONYPY_ROWS} rows", "skipped", "pip install anonypy==0.2.1")
    else:
        sub = frame.iloc[:ANONYPY_ROWS].copy()
        ours, _ = median_time(lambda: generalize(sub, pol), 3)
        cat = sub.copy()
        for col in [*QIS, "salary-class"]:
            if col != "age":
                cat[col] = cat[col].astype("category")
        theirs, _ = median_time(
            lambda: anonypy.Preserver(cat, QIS, "salary-class").anonymize_k_anonymity(k=10), 1
        )
        line(
            f"  same on the first {ANONYPY_ROWS} rows: privdl vs anonypy (run here)",
            f"{ours:.3f} s",
            f"anonypy {theirs:.1f} s",
            f"{theirs / ours:.0f}x",
        )

    for supp in (0.0, 0.05):
        gpol = policy(
            algorithm="global",
            max_suppression=supp,
            hierarchies={**HIER, "age": str(ADULT / "adult_hierarchy_age.csv")},
        )
        gsec, gres = median_time(lambda gpol=gpol: generalize(frame, gpol), 1)
        gncp = ncp_of(frame, gres.released, gpol, gres.suppressed)
        line(
            f"  global recoding k=10, max suppression {supp:.0%}: NCP, suppressed",
            f"{gncp:.2%}, {gres.suppressed}",
            "ARX-style optimal global " + ("66% (0%)" if supp == 0 else "34% (5%)"),
            f"{gsec:.1f} s, {gres.info['nodes_evaluated']} of {gres.info['lattice_size']} nodes",
        )

    with tempfile.TemporaryDirectory() as tmp:
        exe = shutil.which("privdl")
        launcher = [exe] if exe else [sys.executable, "-c", "from privdl.cli import main; main()"]
        cmd = [
            *launcher,
            "anonymize",
            str(ADULT / "adult.csv"),
            "-o",
            str(Path(tmp) / "o.csv"),
            "-k",
            "10",
            "--sensitive",
            "salary-class",
        ]
        for col in QIS:
            cmd += ["--qi", col]
        for col, path in HIER.items():
            cmd += ["--hierarchy", f"{col}={path}"]
        times = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        line(
            "the same as a whole `privdl anonymize` process (median of 3)",
            f"{statistics.median(times):.2f} s",
            "goal <= 1.5 s (import pandas ~0.7 s)",
        )

    out = subprocess.run([sys.executable, __file__, "--million"], check=True, capture_output=True, text=True)
    big = json.loads(out.stdout.strip().splitlines()[-1])
    line(
        "1,000,000 rows x 8 QIs, k=10 (Adult resampled, jittered)",
        f"{big['seconds']:.1f} s",
        "anonypy: hours; goal <= 30 s, < 4 GB",
        f"peak RSS {big['rss_gb']:.2f} GB, NCP {big['ncp']:.2%}",
    )


if __name__ == "__main__":
    if "--million" in sys.argv:
        million()
    else:
        main()
