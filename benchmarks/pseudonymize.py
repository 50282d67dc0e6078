"""Pseudonymization throughput: privdl vs a naive per-row ``hmac.digest`` loop.

Prints rows/s for (a) 1,000,000 distinct e-mail addresses and (b) 1,000,000 event rows
drawn from 50,000 users, beside the anchor: a plain Python loop that computes
HMAC-SHA256 and base32 per row (about 210,000 rows/s on the 2-core reference machine).

    python benchmarks/pseudonymize.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import base64
import hmac
import os
import time

import numpy as np
import pandas as pd

from privdl.anonymize.pseudonymize import pseudonymize_values
from privdl.keys import Secret


def naive(values: list[str], key: bytes) -> list[str]:
    return [base64.b32encode(hmac.digest(key, v.encode(), "sha256")[:20]).decode().lower() for v in values]


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    args = parser.parse_args()
    key = Secret.generate()
    raw_key = key.derive("pseudonymize").reveal()
    rng = np.random.default_rng(0)
    distinct = pd.Series([f"user{i}.{rng.integers(1e9)}@example.org" for i in range(args.rows)])
    users = distinct[: args.users].to_numpy()
    events = pd.Series(users[rng.integers(0, args.users, args.rows)])

    sample = distinct[:200_000].tolist()
    t_naive = best_of(lambda: naive(sample, raw_key), repeat=2)
    naive_rate = len(sample) / t_naive
    # same tokens as the naive loop: the benchmark compares equal work
    assert pseudonymize_values(distinct[:1000], key=key).tolist() == naive(distinct[:1000].tolist(), raw_key)

    t_distinct = best_of(lambda: pseudonymize_values(distinct, key=key))
    t_events = best_of(lambda: pseudonymize_values(events, key=key))
    rate_d, rate_e = args.rows / t_distinct, args.rows / t_events
    print(f"cores: {os.cpu_count()}  rows: {args.rows:,}  (anchor measured on {len(sample):,} rows)")
    print(f"{'workload':<44}{'privdl rows/s':>15}{'naive rows/s':>15}{'ratio':>8}{'goal':>8}")
    print(
        f"{'1M distinct e-mails':<44}{rate_d:>15,.0f}{naive_rate:>15,.0f}{rate_d / naive_rate:>7.1f}x{'>=2x':>8}"
    )
    print(
        f"{'1M events from 50,000 users':<44}{rate_e:>15,.0f}{naive_rate:>15,.0f}{rate_e / naive_rate:>7.1f}x{'>=10x':>8}"
    )


if __name__ == "__main__":
    main()
