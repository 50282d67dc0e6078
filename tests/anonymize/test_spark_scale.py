"""The driver's memory stays bounded while Spark anonymizes 3,000,000 records (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("pyspark")

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {bench!r})
    from privdl.anonymize.anonymizer import Anonymizer
    from privdl.anonymize.policy import Policy
    from privdl.anonymize.spark_session import local_session
    from privdl.keys import Secret
    from scale_data import QIS, SENSITIVE, generated

    spark = local_session(cores="2", shuffle_partitions=8)
    spark.sparkContext.setLogLevel("ERROR")
    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table = generated(spark, {rows})
    spark.range(10).count()  # the JVM and py4j are up: the baseline
    base = peak_mb()
    policy = Policy(identifiers=["email"], quasi_identifiers=QIS, sensitive=[SENSITIVE], k=10)
    anonymizer = Anonymizer(policy, key=Secret(b"s" * 32), engine="spark")
    released = anonymizer.fit_transform(table)
    released.write.parquet({out!r})
    print(json.dumps({{"base_mb": base, "peak_mb": peak_mb(), "k": anonymizer.report_.after["k"],
                      "rows": anonymizer.report_.rows_out, "ncp": anonymizer.report_.information_loss["ncp"]}}))
    """
)


@pytest.mark.slow
def test_driver_peak_rss_is_bounded_on_3m_rows(tmp_path) -> None:
    rows = 3_000_000
    script = SCRIPT.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), rows=rows, out=str(tmp_path / "out"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    print(facts)
    assert facts["rows"] == rows and facts["k"] >= 10
    # the table as pandas would need well over 500 MB (3M e-mails alone ~250 MB as
    # Python strings); the driver grows by a sample of integer codes and small figures
    assert facts["peak_mb"] - facts["base_mb"] < 250, facts
