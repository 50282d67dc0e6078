"""DP vs non-private training throughput on a GPU (issue 4, item 6).

Run:  python benchmarks/train_gpu.py            # needs CUDA; prints a skip line otherwise
      python benchmarks/train_gpu.py --device cpu --quick   # dry run of the script on CPU

For a small CNN (MNIST-shaped 1x28x28 inputs) and an MLP, it measures training
throughput (records per second) of a plain PyTorch loop fed by vectorized indexing and
of PrivateTrainer's DP step with each gradient engine: privdl's one-backward ``bk``
engine (Linear, Conv1d/2d, LayerNorm, GroupNorm, Embedding), Opacus' ghost clipping,
hooks, functorch and expanded weights. Model, batches and noise live on the GPU (``device="auto"`` picks CUDA). The
goal is DP throughput >= 0.5x non-private on an H100. Synthetic data: throughput does
not depend on the values.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

warnings.filterwarnings("ignore")

MODES = ("bk", "ghost", "hooks", "functorch", "ew")


def models(torch):
    from torch import nn

    def cnn():
        return nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def mlp():
        return nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)
        )

    def mlp_small():
        return nn.Sequential(nn.Linear(100, 64), nn.ReLU(), nn.Linear(64, 2))

    return [
        ("small CNN (2 conv + 2 linear), 1x28x28", cnn, (1, 28, 28), 10, 256),
        ("MLP 784-512-256-10", mlp, (784,), 10, 1024),
        ("MLP 100-64-2", mlp_small, (100,), 2, 256),
    ]


def sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_throughput(torch, make, X, y, batch, steps, device):
    from torch import nn

    torch.manual_seed(0)
    model = make().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.CrossEntropyLoss()
    n = len(X)
    gen = torch.Generator(device=device).manual_seed(0)

    def run(k):
        for _ in range(k):
            idx = torch.randint(0, n, (batch,), device=device, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss(model(X[idx]), y[idx]).backward()
            opt.step()

    run(5)  # warm-up: kernels, allocator
    sync(torch, device)
    t = time.perf_counter()
    run(steps)
    sync(torch, device)
    return steps * batch / (time.perf_counter() - t)


def dp_throughput(torch, make, X, y, batch, steps, device, mode):
    from privdl import PrivateTrainer
    from privdl.train.params import check_params

    torch.manual_seed(0)
    tr = PrivateTrainer(
        make(),
        epsilon=8.0,
        epochs=1,
        batch_size=batch,
        device=str(device),
        grad_sample_mode=mode,
        progress=False,
    )
    check_params(tr)
    run = tr._setup((X, y), None, None)
    for _ in range(5):
        run.step(run.sampler.sample())
    sync(torch, device)
    t = time.perf_counter()
    records = 0
    for _ in range(steps):
        idx = run.sampler.sample()
        run.step(idx)
        records += len(idx)
    sync(torch, device)
    return records / (time.perf_counter() - t), tr.grad_sample_mode_


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="few steps (dry run)")
    parser.add_argument("--n", type=int, default=60_000, help="records in memory")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per figure")
    parser.add_argument("--only", default=None, help="run the models whose title contains this")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_gpu: no CUDA device: skipped (run on a GPU machine; --device cpu dry-runs)")
        return 0
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    steps = args.steps or (3 if args.quick else 200)
    n = 1024 if args.quick else args.n
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"privdl GPU benchmark on {name}, torch {torch.__version__}, {steps} steps per figure")
    for title, make, shape, classes, batch in models(torch):
        if args.only and args.only not in title:
            continue
        gen = torch.Generator(device=device).manual_seed(0)
        X = torch.randn((n, *shape), device=device, generator=gen)
        y = torch.randint(0, classes, (n,), device=device, generator=gen)
        base = plain_throughput(torch, make, X, y, batch, steps, device)
        print(f"{title}, batch {batch}: non-private {base:,.0f} records/s")
        for mode in MODES:
            try:
                rate, used = dp_throughput(torch, make, X, y, batch, steps, device, mode)
            except Exception as exc:  # a mode that does not support a layer is reported
                print(f"  DP {mode:<10} not available for this model ({type(exc).__name__})")
                continue
            ratio = rate / base
            verdict = "meets" if ratio >= 0.5 else "below"
            print(
                f"  DP {used:<10} {rate:>12,.0f} records/s   {ratio:.2f}x non-private "
                f"({verdict} goal >= 0.5x)"
            )
        del X, y
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
