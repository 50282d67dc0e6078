"""Audit log throughput: appends per second and the time to verify a million entries.

    python benchmarks/audit.py [--appends 50000] [--batch 1000] [--entries 1000000]
                               [--log PATH]

* appends/s: one process, realistic entries (params, input and output fingerprints),
  ``with log.batch()`` of ``--batch`` entries, one fsync per batch; also single
  appends (fsync each, state file replaced each) for reference.
* verify: ``verify_audit_log`` on a log of ``--entries`` entries written by AuditLog
  (generated once in a temporary folder, or kept at ``--log`` and reused).

Anchors (issue 6): Crosby and Wallach 2009, 1,750 events/s per core; goals >= 10,000
appends/s and <= 10 s to verify 1,000,000 entries.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from privdl.audit import AuditLog, verify_audit_log
from privdl.keys import Secret

PARAMS = {
    "policy": {
        "identifiers": ["email", "name"],
        "quasi_identifiers": ["age", "zip", "sex"],
        "sensitive": ["diagnosis"],
        "k": 5,
        "max_suppression": 0.02,
    },
    "key_id": "kid_0011223344556677",
    "epsilon": 3.0,
    "delta": 1e-05,
}
FINGERPRINT = {"name": "adult.csv", "sha256": "ab" * 32, "bytes": 3974305, "rows": 32561, "columns": 15}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _append_rate(folder: Path, key: Secret, n: int, batch: int) -> tuple[float, float]:
    log = AuditLog(folder / "append.jsonl", key=key, actor="bench", purpose="benchmark")
    start, cpu = time.perf_counter(), time.process_time()
    for first in range(0, n, batch):
        with log.batch():
            for i in range(first, min(n, first + batch)):
                log.append(
                    "anonymize", params={**PARAMS, "i": i}, inputs=[FINGERPRINT], outputs=[FINGERPRINT]
                )
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def _single_rate(folder: Path, key: Secret, n: int) -> float:
    log = AuditLog(folder / "single.jsonl", key=key, actor="bench")
    start = time.perf_counter()
    for i in range(n):
        log.append("risk", params={**PARAMS, "i": i})
    return n / (time.perf_counter() - start)


def _make_log(path: Path, key: Secret, n: int) -> None:
    log = AuditLog(path, key=key, actor="bench", purpose="benchmark")
    have = len(log)
    for first in range(have, n, 10_000):
        with log.batch():
            for i in range(first, min(n, first + 10_000)):
                log.append("anonymize", params={**PARAMS, "i": i}, inputs=[FINGERPRINT])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--appends", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--single", type=int, default=300)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--log", type=Path, help="keep the verify log here and reuse it")
    args = ap.parse_args()

    key_file = args.log.with_name(args.log.name + ".benchkey") if args.log else None
    if key_file is not None and key_file.exists():
        key = Secret(bytes.fromhex(key_file.read_text()))
    else:
        key = Secret.generate()
        if key_file is not None:  # a throwaway benchmark key, kept only to reuse the log
            key_file.write_text(key.reveal().hex())
    print(f"machine: {_cpu()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}")
    if hasattr(os, "getloadavg"):
        print(f"load average before the run: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="privdl-audit-bench-") as tmp:
        folder = Path(tmp)
        rate, cpu_rate = _append_rate(folder, key, args.appends, args.batch)
        print(
            f"appends/s, batches of {args.batch} (fsync per batch): {rate:,.0f} wall-clock,"
            f" {cpu_rate:,.0f} per CPU-second  ({rate / 1750:.1f}x Crosby-Wallach 1,750/s;"
            " goal 10,000)"
        )
        single = _single_rate(folder, key, args.single)
        print(f"appends/s, one at a time (fsync + state file each): {single:,.0f}")

        path = args.log or folder / "verify.jsonl"
        start = time.perf_counter()
        _make_log(path, key, args.entries)
        made = time.perf_counter() - start
        size = path.stat().st_size
        start, cpu = time.perf_counter(), time.process_time()
        result = verify_audit_log(path, key=key)
        took, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert result.entries == args.entries, result.entries
        print(f"log of {args.entries:,} entries ({size / 1e6:,.0f} MB) written in {made:.1f} s")
        print(
            f"verify {args.entries:,} entries: {took:.2f} s wall-clock, {cpu:.2f} s CPU"
            f"  ({args.entries / took:,.0f} entries/s; goal <= 10 s per 1,000,000)"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average during the run: {load:.1f} (wall-clock times above it are inflated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
