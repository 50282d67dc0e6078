"""Encrypted scoring throughput: privdl feature-major CKKS vs TenSEAL per-row `dot`.

A 20-feature logistic model (one ciphertext per feature per 4096 rows, N=8192,
[60, 40, 60], scale 2^40, 128-bit security). Prints each figure beside its anchor
(docs/ANCHORS: TenSEAL per-row dot ~30 rows/s, Concrete-ML 1.9 ~116 rows/s server-side)
and the goal, and the ratio.

    python benchmarks/he_score.py            # streamed run on 200,000 rows
    python benchmarks/he_score.py --full     # streamed run on 1,000,000 rows (goal <= 60 s)
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

FEATURES = 20
SLOTS = 4096


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def model(rng: np.random.Generator):
    from privdl.encrypted.models import Layer, ModelSpec

    w = rng.normal(scale=0.3, size=(1, FEATURES))
    columns = tuple(f"f{i}" for i in range(FEATURES))
    return ModelSpec(columns=columns, layers=(Layer.from_arrays(w, [0.1]),), link="logit")


def blocks(rows: int, seed: int):
    """Synthetic standardized features, generated block by block (never all at once)."""
    rng = np.random.default_rng(seed)
    for start in range(0, rows, SLOTS):
        yield rng.normal(size=(min(SLOTS, rows - start), FEATURES))


def baseline_per_row(n: int, w: np.ndarray, b: float) -> dict[str, float]:
    """TenSEAL's per-row packing: one ciphertext per row, `dot` (needs Galois keys)."""
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    ctx.global_scale = 2**40
    ctx.generate_galois_keys()
    public = ts.context_from(ctx.serialize(save_secret_key=False))
    x = np.random.default_rng(1).normal(size=(n, FEATURES))
    wl = w.tolist()
    t0 = time.perf_counter()
    uploads = [ts.ckks_vector(ctx, row.tolist()).serialize() for row in x]
    t1 = time.perf_counter()
    results = [(ts.ckks_vector_from(public, u).dot(wl) + b).serialize() for u in uploads]
    t2 = time.perf_counter()
    out = np.array([ts.ckks_vector_from(ctx, r).decrypt()[0] for r in results])
    t3 = time.perf_counter()
    err = float(np.max(np.abs(out - (x @ w + b))))
    return {
        "server_rows_s": n / (t2 - t1),
        "e2e_rows_s": n / (t3 - t0),
        "upload_bytes_row": sum(map(len, uploads)) / n,
        "max_err": err,
    }


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (immune to other users' load)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def prepared_batch(keys, scorer, rows: int):
    from privdl.encrypted.wire import BatchHeader, EncryptedBatch

    chunks = tuple(keys.encrypt_blocks(blocks(rows, 2), workers=2))
    header = BatchHeader(
        kind="features",
        params=keys.params,
        key_id=keys.key_id,
        columns=scorer.model_.columns,
        rows=rows,
    )
    return EncryptedBatch(header, chunks)


def server_side(scorer, batch, workers: int) -> tuple[float, float]:
    """(wall rows/s, rows per CPU-second) of scorer.score: deserialize, score, serialize."""
    scorer.score(batch, workers=workers)  # warm-up (starts the fork server once)
    c0, t0 = cpu_seconds(), time.perf_counter()
    scorer.score(batch, workers=workers)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return batch.rows / wall, batch.rows / cpu


def compute_only(scorer, batch) -> tuple[float, float]:
    """(wall, CPU) rows/s of the homomorphic products alone, ciphertexts in memory."""
    import tenseal as ts

    ctx = scorer.public_keys.context()
    plan = scorer.plan(batch.columns)
    vecs = [[ts.ckks_vector_from(ctx, b) for b in c.blobs] for c in batch.chunks]
    partials = [scorer._partial(plan, None, 0, c.rows) for c in batch.chunks]
    c0, t0 = time.process_time(), time.perf_counter()
    for v, p in zip(vecs, partials):
        scorer.evaluate(v, plan, p)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return batch.rows / wall, batch.rows / cpu


def end_to_end(keys, scorer, rows: int, workers: int) -> dict[str, float]:
    """Streamed: encrypt (client) -> score (server) -> decrypt (client), chunk by chunk."""
    spec = scorer.model_
    w, b = spec.folded()
    uploaded = 0
    max_err = 0.0
    done = 0
    rss = []

    def counted(chunks):
        nonlocal uploaded
        for c in chunks:
            uploaded += c.nbytes
            yield c

    c0, t0 = cpu_seconds(), time.perf_counter()
    enc = counted(keys.encrypt_blocks(blocks(rows, 3), workers=workers))
    scored = scorer.score_chunks(enc, columns=spec.columns, workers=workers)
    truth = blocks(rows, 3)
    for values in keys.decrypt_chunks(scored, workers=workers):
        probs = 0.5 * (1 + np.tanh(0.5 * values[:, 0]))
        expected = 0.5 * (1 + np.tanh(0.5 * (next(truth) @ w[0] + b[0])))
        max_err = max(max_err, float(np.max(np.abs(probs - expected))))
        done += len(values)
        if done % (SLOTS * 16) < SLOTS:
            rss.append(rss_mb())
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    assert done == rows
    return {
        "seconds": seconds,
        "rows_s": rows / seconds,
        "rows_cpu_s": rows / cpu,
        "upload_bytes_row": uploaded / rows,
        "max_err": max_err,
        "rss_first_mb": rss[0] if rss else rss_mb(),
        "rss_last_mb": rss_mb(),
        "child_max_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def line(name: str, value: float, unit: str, anchor: str, ratio: str) -> None:
    print(f"{name:<44} {value:>12,.1f} {unit:<8} | {anchor:<44} | {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="stream 1,000,000 rows")
    parser.add_argument("--rows", type=int, default=None, help="rows for the streamed run")
    parser.add_argument("--baseline-rows", type=int, default=200)
    parser.add_argument("--server-rows", type=int, default=SLOTS * 16)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    rows = args.rows or (1_000_000 if args.full else 200_000)

    from privdl.encrypted.keys import HEKeys
    from privdl.encrypted.scorer import EncryptedScorer

    rng = np.random.default_rng(0)
    spec = model(rng)
    keys = HEKeys.generate()
    scorer = EncryptedScorer.from_model(spec, keys.public())
    w, b = spec.folded()
    print(
        f"privdl he_score: {FEATURES}-feature logistic model, N={keys.params.poly_modulus_degree}, "
        f"moduli {list(keys.params.coeff_mod_bit_sizes)}, scale 2^{keys.params.scale_bits}, "
        f"{keys.params.security}-bit, {keys.params.encryption} encryption, "
        f"{args.workers} worker(s), {os.cpu_count()} CPU(s)"
    )
    print(f"public context for the scorer: {len(keys.public().to_bytes()):,} bytes")

    base = baseline_per_row(args.baseline_rows, w[0], float(b[0]))
    print(f"baseline: TenSEAL per-row dot on {args.baseline_rows} rows (max err {base['max_err']:.1e})")
    line("  baseline server-side rows/s", base["server_rows_s"], "rows/s", "anchor ~30 rows/s", "")
    line("  baseline end-to-end rows/s", base["e2e_rows_s"], "rows/s", "", "")
    line("  baseline upload bytes/row", base["upload_bytes_row"], "B/row", "anchor ~330 KB/row", "")

    batch = prepared_batch(keys, scorer, args.server_rows)
    cw, cc = compute_only(scorer, batch)
    one, one_cpu = server_side(scorer, batch, 1)
    two, _ = server_side(scorer, batch, args.workers)
    print(f"server-side scoring on {args.server_rows:,} rows")
    line("  products only, 1 core (wall)", cw, "rows/s", "SEAL ct-by-scalar bound 400-600k/core",
         f"{cc:,.0f} rows per CPU-s = {cc / 300_000:.2f}x goal")  # fmt: skip
    line("  with (de)serialization, 1 core (wall)", one, "rows/s", "goal >= 300,000; per-row dot ~30",
         f"{one_cpu:,.0f} rows per CPU-s = {one_cpu / 300_000:.2f}x goal, "
         f"{one / base['server_rows_s']:,.0f}x per-row dot")  # fmt: skip
    line(f"  with (de)serialization, {args.workers} workers (wall)", two, "rows/s",
         "Concrete-ML 1.9 ~116 rows/s", f"{two / 116:,.0f}x Concrete-ML")  # fmt: skip

    e2e = end_to_end(keys, scorer, rows, args.workers)
    kind = "1,000,000 rows (--full)" if rows == 1_000_000 else f"{rows:,} rows (--full: 1,000,000)"
    print(f"end-to-end streamed: encrypt -> score -> decrypt, {kind}, max err {e2e['max_err']:.1e}")
    line("  end-to-end rows/s (wall)", e2e["rows_s"], "rows/s", "goal >= 30,000; per-row dot ~30",
         f"{e2e['rows_s'] / 30_000:.2f}x goal, "
         f"{e2e['rows_s'] / base['e2e_rows_s']:,.0f}x per-row dot")  # fmt: skip
    line("  end-to-end rows per CPU-second", e2e["rows_cpu_s"], "rows/s",
         "2 free cores give ~2x this", f"{2 * e2e['rows_cpu_s'] / 30_000:.2f}x goal on 2 free cores")  # fmt: skip
    projected = e2e["seconds"] * 1_000_000 / rows
    line("  end-to-end seconds (wall)", e2e["seconds"], "s",
         "goal <= 60 s for 1M rows x 20",
         f"{projected:.1f} s per 1M rows ({60 / projected:.2f}x goal)")  # fmt: skip
    line("  upload bytes/row", e2e["upload_bytes_row"], "B/row", "goal <= 2 KB; per-row ~330 KB",
         f"{2048 / e2e['upload_bytes_row']:.2f}x under goal, "
         f"{base['upload_bytes_row'] / e2e['upload_bytes_row']:,.0f}x smaller than per-row")  # fmt: skip
    line("  client RSS at last checkpoint", e2e["rss_last_mb"], "MB",
         f"first checkpoint {e2e['rss_first_mb']:.0f} MB (flat = same)",
         f"largest worker {e2e['child_max_rss_mb']:.0f} MB")  # fmt: skip
    print(
        f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: wall figures "
        "share the machine; CPU-second figures do not)"
    )


if __name__ == "__main__":
    main()
