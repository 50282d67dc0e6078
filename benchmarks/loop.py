"""make_private (your own loop) beside PrivateTrainer: utility and epoch time.

Run:  python benchmarks/loop.py [--seeds 3]

Utility: digits, logistic regression, epsilon=2, the same defaults in both (Adam lr 0.02,
batch 256, 20 epochs, C=1, features standardized with training-split statistics: that
preprocessing is *not* covered by DP). Speed: MLP 100-64-2, 30,000 rows, batch 256,
one torch thread, one epoch of steps in each (calibration and ledger not timed), against
a plain non-private loop over the same Poisson batches. Anchors from ANCHORS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def line(name: str, value: str, anchor: str) -> None:
    print(f"{name:<52} {value:>12}   anchor {anchor}")


def digits(seed: int, loop: bool) -> float:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.utils.data import DataLoader, TensorDataset

    import privdl

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    Xtr, Xte = ((Xtr - mu) / sd).astype(np.float32), ((Xte - mu) / sd).astype(np.float32)
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 10)
    if not loop:
        tr = privdl.PrivateTrainer(model, epsilon=2.0, seed=seed, progress=False).fit(Xtr, ytr)
        return tr.score(Xte, yte)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    loader = DataLoader(TensorDataset(torch.tensor(Xtr), torch.tensor(ytr)), batch_size=256)
    with privdl.make_private(model, opt, loader, epsilon=2.0, epochs=20, seed=seed) as run:
        for _ in range(20):
            for xb, yb in run.data_loader:
                run.optimizer.zero_grad()
                torch.nn.functional.cross_entropy(run.model(xb), yb).backward()
                run.optimizer.step()
    with torch.no_grad():
        return float((run.model(torch.tensor(Xte)).argmax(1).numpy() == yte).mean())


def epoch_times() -> None:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import privdl
    from privdl.train.data import PoissonSampler

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30_000, 100, generator=g)
    y = (X[:, 0] > 0).long()

    def mlp() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(100, 64), nn.ReLU(), nn.Linear(64, 2))

    def plain() -> float:
        model = mlp()
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        sampler = PoissonSampler(30_000, 1 / 118)
        t = time.perf_counter()
        for _ in range(118):
            idx = sampler.sample()
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
        return time.perf_counter() - t

    def loop(mode: str) -> float:
        model = mlp()
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        loader = DataLoader(TensorDataset(X, y), batch_size=256)
        with privdl.make_private(model, opt, loader, epsilon=2.0, epochs=1, grad_sample_mode=mode) as run:
            t = time.perf_counter()
            for xb, yb in run.data_loader:
                run.optimizer.zero_grad()
                nn.functional.cross_entropy(run.model(xb), yb).backward()
                run.optimizer.step()
            return time.perf_counter() - t

    def trainer() -> float:
        tr = privdl.PrivateTrainer(mlp(), epsilon=2.0, epochs=1, progress=False)
        tr.fit(X, y)
        return float(tr.fit_seconds_)

    base = min(plain() for _ in range(3))
    line("plain loop epoch (Poisson indexing)", f"{base:.2f} s", "0.14 s (vectorized indexing)")
    for name, fn, anchor in [
        ("make_private bk epoch", lambda: loop("bk"), "-"),
        ("make_private Opacus hooks epoch", lambda: loop("hooks"), "1.79 s (Opacus hooks)"),
        ("PrivateTrainer epoch (auto: bk)", trainer, "1.38 s (Opacus ghost)"),
    ]:
        best = min(fn() for _ in range(3))
        line(name, f"{best:.2f} s {best / base:.1f}x", anchor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    for loop in (True, False):
        accs = [digits(s, loop) for s in range(args.seeds)]
        name = "make_private" if loop else "PrivateTrainer"
        line(f"digits LR eps=2, {name} ({args.seeds} seeds)", f"{100 * statistics.mean(accs):.1f} %", "89.3 %")
    epoch_times()


if __name__ == "__main__":
    main()
