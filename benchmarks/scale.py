"""Scale benchmark for issue 13: the Spark engine on 1M, 3M and 10M generated rows.

Run: ``python benchmarks/scale.py [--rows 1000000,3000000,10000000] [--cores N]``.
Spark local mode (``local[N]``, every core by default) on a generated table (e-mail,
8 quasi-identifiers, one sensitive column; ``benchmarks/scale_data.py``) stored as
Parquet, policy: pseudonymize the e-mail, k=10 on the 8 quasi-identifiers.

Per stage, rows/s (each stage timed as its own Spark action; the later stages'
times are net of the read they include):

* read: a full scan of the Parquet input;
* pseudonymize: the e-mail's HMAC tokens (pandas UDF);
* partition: the distributed Mondrian: driver-side planning jobs (distinct values,
  sample, part sizes) plus the ``applyInPandas`` parts;
* write: the whole release written as a Parquet folder, net of the above (nothing is
  cached, so the write job recomputes them); release: plan + write job end to end;
* report: the report's figures by Spark aggregations on what was written.

Then the pandas engine on the same 1M rows, stage by stage. Then, when
``benchmarks/scale_torchrun.py`` exists (distributed training), it is run and its
output printed.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from scale_data import QIS, SENSITIVE, generated  # noqa: E402

from privdl.anonymize.policy import Policy  # noqa: E402
from privdl.keys import Secret  # noqa: E402

KEY = Secret(b"benchmark-key-not-secret-0123456789"[:32])
POLICY = Policy(identifiers=["email"], quasi_identifiers=QIS, sensitive=[SENSITIVE], k=10)


def _scan(df) -> float:  # type: ignore[no-untyped-def]
    """Seconds to compute every row of ``df`` (an XOR of row hashes: no collect of the rows)."""
    from pyspark.sql import functions as F

    t = time.perf_counter()
    df.select(F.bit_xor(F.xxhash64(*[F.col(f"`{c}`") for c in df.columns]))).collect()
    return time.perf_counter() - t


def spark_run(spark, rows: int, work: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from privdl.anonymize.spark_engine import SparkRelease, report_for
    from privdl.anonymize.spark_mondrian import mondrian_spark
    from privdl.anonymize.spark_transforms import transform_identifiers

    source = work / f"input-{rows}.parquet"
    if not source.exists():
        generated(spark, rows).write.parquet(str(source))
    table = spark.read.parquet(str(source))
    out: dict[str, float] = {}
    read = _scan(table)
    out["read"] = read
    pseudo = transform_identifiers(table, POLICY, KEY)
    out["pseudonymize"] = max(_scan(pseudo.select("email")) - read, 1e-9)
    t = time.perf_counter()
    gen = mondrian_spark(pseudo, POLICY)
    plan = time.perf_counter() - t
    finish = _scan(gen.released.select(*QIS))
    out["partition"] = plan + max(finish - read, 1e-9)
    target = work / f"released-{rows}.parquet"
    shutil.rmtree(target, ignore_errors=True)
    t = time.perf_counter()
    gen.released.write.parquet(str(target))
    whole = time.perf_counter() - t
    # the write recomputes read, tokens and parts (nothing is cached): net of them, the
    # Parquet encoding itself is within the noise of this machine, so the end-to-end
    # release (plan + write job) is the figure that counts
    out["write"] = max(whole - finish - out["pseudonymize"], 0.0)
    out["release_total"] = plan + whole
    measured = spark.read.parquet(str(target))
    run = SparkRelease(table, gen.released, rows, gen, [], [])
    t = time.perf_counter()
    report = report_for(run, measured, policy=POLICY, key=KEY, linkable=lambda r, p, d: {})
    out["report"] = time.perf_counter() - t
    out["k"] = report.after["k"]
    out["ncp"] = report.information_loss["ncp"]
    out["parts"] = gen.info["parts"]
    shutil.rmtree(target, ignore_errors=True)
    return out


def pandas_run(work: Path, rows: int) -> dict[str, float]:
    from privdl import io
    from privdl.anonymize.generalize import generalize
    from privdl.anonymize.pseudonymize import pseudonymize_values

    source = work / f"input-{rows}.parquet"
    out: dict[str, float] = {}
    t = time.perf_counter()
    import pyarrow.parquet as pq

    frame = pq.read_table(str(source)).to_pandas()
    out["read"] = time.perf_counter() - t
    t = time.perf_counter()
    frame["email"] = pseudonymize_values(frame["email"], key=KEY)
    out["pseudonymize"] = time.perf_counter() - t
    t = time.perf_counter()
    gen = generalize(frame, POLICY)
    out["partition"] = time.perf_counter() - t
    t = time.perf_counter()
    io.write_table(gen.released, work / "released-pandas.parquet")
    out["write"] = time.perf_counter() - t
    out["release_total"] = sum(out[s] for s in ("read", "pseudonymize", "partition", "write"))
    out["k"] = float("nan")
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _line(label: str, rows: int, figures: dict[str, float]) -> str:
    stages = ["read", "pseudonymize", "partition", "write", "release_total"]
    cells = [f"{rows / figures[s]:>12,.0f}" if figures.get(s, 0) > 0.05 else f"{'(noise)':>12}" for s in stages]
    return f"{label:<22}{rows:>12,} " + " ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,3000000,10000000")
    parser.add_argument("--cores", default="*")
    parser.add_argument("--budget-s", type=float, default=600.0, help="skip sizes after one run took this long")
    args = parser.parse_args()
    sizes = [int(r) for r in args.rows.split(",")]
    from privdl.anonymize.spark_session import local_session

    spark = local_session(cores=args.cores)
    spark.sparkContext.setLogLevel("ERROR")
    work = Path(tempfile.mkdtemp(prefix="privdl-scale-"))
    print(f"Spark {spark.version} local[{args.cores}] on {os.cpu_count()} cores; policy: 1 pseudonymized, 8 QIs, k=10")
    header = (
        f"{'engine':<22}{'rows':>12} {'read/s':>12} {'pseudonym/s':>12} {'partition/s':>12}"
        f" {'write/s':>12} {'release/s':>12}"
    )
    results = []
    try:
        for rows in sizes:
            t = time.perf_counter()
            figures = spark_run(spark, rows, work)
            took = time.perf_counter() - t
            results.append((rows, figures))
            print(
                f"spark {rows:,} rows: release {figures['release_total']:.1f} s, report {figures['report']:.1f} s,"
                f" {figures['parts']:.0f} parts, k={figures['k']:.0f}, NCP {figures['ncp']:.2%}"
                f" (stage seconds: " + ", ".join(f"{s} {figures[s]:.1f}" for s in ("read", "pseudonymize", "partition", "write")) + ")",
                flush=True,
            )
            if took > args.budget_s and rows != sizes[-1]:
                print(f"stopping: {rows:,} rows took {took:.0f} s (> --budget-s {args.budget_s:.0f})")
                break
        base = min(sizes)
        pandas_figures = pandas_run(work, base)
        print(
            f"pandas {base:,} rows: stage seconds: "
            + ", ".join(f"{s} {pandas_figures[s]:.1f}" for s in ("read", "pseudonymize", "partition", "write"))
            + f"; peak RSS {pandas_figures['peak_rss_mb']:.0f} MB (driver, Spark runs included)"
        )
        print()
        print(header)
        for rows, figures in results:
            print(_line("spark local", rows, figures))
        print(_line("pandas (one process)", base, pandas_figures))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        spark.stop()
    torchrun = HERE / "scale_torchrun.py"
    if torchrun.exists():
        print(f"\n== {torchrun.name} ==", flush=True)
        done = subprocess.run([sys.executable, str(torchrun)], capture_output=True, text=True)
        print(done.stdout)
        if done.returncode:
            print(done.stderr[-3000:])
    else:
        print("\n(benchmarks/scale_torchrun.py is not in this tree: no torchrun figures)")


if __name__ == "__main__":
    main()
