"""Income prediction on the Adult census data: k-anonymity and differential privacy together.

    1. split       80 % training records, 20 % held-out records (seeded)
    2. anonymize   the training records with the ARX hierarchies (8 quasi-identifiers,
                   salary-class sensitive) at several k
    3. train       a DP logistic model on each released table at several epsilon, all on
                   one ledger; a non-private logistic model beside each
    4. measure     accuracy on the raw held-out records (what the model will score);
                   one PNG: accuracy vs epsilon, one line per k

    python examples/adult/run.py [--quick] [--out adult-run]

The data (UCI Adult, CC BY 4.0, via ARX) is bundled in ``examples/adult/data/``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
QUASI_IDENTIFIERS = (
    "sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation",
)  # fmt: skip
LABEL = "salary-class"
DATASET_ID = "adult-census-1994"


def policy_for(k: int) -> Any:
    import privdl

    return privdl.Policy(
        quasi_identifiers=list(QUASI_IDENTIFIERS),
        sensitive=[LABEL],
        hierarchies={c: str(DATA / f"adult_hierarchy_{c}.csv") for c in QUASI_IDENTIFIERS},
        k=k,
        strict=True,
    )


def plot(path: Path, results: dict[tuple[int, float | None], float], ks: tuple[int, ...], epsilons: tuple[float, ...]) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in ks:
        label = "raw (no k-anonymity)" if k == 1 else f"k={k}"
        line = ax.plot(epsilons, [results[k, e] for e in epsilons], "o-", label=label)[0]
        ax.axhline(results[k, None], color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
    ax.set_xlabel("epsilon (record level)")
    ax.set_ylabel("accuracy on raw held-out records")
    ax.set_title("Adult income: accuracy vs epsilon per k (dotted: non-private)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="privdl Adult example: k x epsilon")
    parser.add_argument("--quick", action="store_true", help="two k, two epsilon (< 1 minute)")
    parser.add_argument("--out", type=Path, default=Path("adult-run"))
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    args = parser.parse_args(argv)
    ks: tuple[int, ...] = (1, 10) if args.quick else (1, 5, 10, 50)
    epsilons: tuple[float, ...] = (1.0, 4.0) if args.quick else (0.5, 1.0, 2.0, 4.0, 8.0)

    import torch
    from sklearn.linear_model import LogisticRegression
    from torch import nn

    import privdl

    torch.set_num_threads(1)  # with one BLAS thread below: the same figures on any core count
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    out = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    if (out / "budget.db").exists():
        raise SystemExit(
            f"adult: {out} holds an earlier run (its ledger is spent): use --fresh or another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    raw = pd.read_csv(DATA / "adult.csv.gz", sep=";", dtype=str)
    order = np.random.default_rng(0).permutation(len(raw))
    cut = int(0.8 * len(raw))
    train_raw, test = raw.iloc[order[:cut]], raw.iloc[order[cut:]]
    ledger = privdl.BudgetLedger(out / "budget.db")
    budget = sum(epsilons) * len(ks)  # every point of the sweep is a run on the same people
    ledger.set_budget(DATASET_ID, epsilon=budget, delta=1e-5)

    results: dict[tuple[int, float | None], float] = {}
    loss: dict[int, float] = {}
    achieved: dict[int, int] = {}
    for k in ks:
        policy = policy_for(max(k, 1))
        if k == 1:
            released = train_raw
            loss[k], achieved[k] = (
                0.0,
                privdl.assess_risk(train_raw, quasi_identifiers=list(QUASI_IDENTIFIERS)).k,
            )
        else:
            anonymizer = privdl.Anonymizer(policy)
            released = anonymizer.fit_transform(train_raw)
            anonymizer.report_.save(out / f"anonymization-k{k}.html")
            loss[k] = float(anonymizer.report_.to_dict()["information_loss"]["ncp"])
            # recomputed from the released table
            achieved[k] = privdl.assess_risk(released, quasi_identifiers=list(QUASI_IDENTIFIERS)).k
        # domains from the ARX hierarchies and the label set: public, not learned
        encoder = privdl.TableEncoder(policy, categories={LABEL: ["<=50K", ">50K"]}, target=LABEL)
        encoder.fit(released, target=LABEL)
        x_train, y_train = encoder.transform(released), encoder.encode_target(released[LABEL])
        x_test, y_test = encoder.transform(test), encoder.encode_target(test[LABEL])
        baseline = LogisticRegression(max_iter=2000).fit(x_train, y_train)
        results[k, None] = float(baseline.score(x_test, y_test))
        for epsilon in epsilons:
            torch.manual_seed(0)
            trainer = privdl.PrivateTrainer(
                nn.Linear(len(encoder.feature_names_), 1), epsilon=epsilon, delta=1e-6,
                epochs=10, batch_size=512, ledger=ledger, dataset_id=DATASET_ID,
                encoder=encoder, seed=0, progress=False,
            )  # fmt: skip
            trainer.fit(released, target=LABEL)
            results[k, epsilon] = float(trainer.score(test, LABEL))
        if k == max(ks):
            trainer.report(baseline={"metric": "accuracy", "value": results[k, None]}).save(
                out / f"privacy-k{k}-eps{epsilons[-1]:g}.html"
            )

    plot(out / "accuracy-vs-epsilon.png", results, ks, epsilons)
    print(
        f"adult: {len(train_raw):,} training records, {len(test):,} held out; DP logistic regression, accuracy"
    )
    header = "".join(f"{f'eps={e:g}':>9}" for e in epsilons)
    print(f"{'release':<10}{'k':>5}{'NCP':>8}{header}{'non-DP':>9}")
    for k in ks:
        name = "raw" if k == 1 else f"k={k}"
        row = "".join(f"{results[k, e]:>9.3f}" for e in epsilons)
        print(f"{name:<10}{achieved[k]:>5}{loss[k]:>8.1%}{row}{results[k, None]:>9.3f}")
    print(
        f"ledger: epsilon {ledger.spent(DATASET_ID):.2f} spent over {len(ks) * len(epsilons)} runs on the same people"
    )
    print(f"wrote {out / 'accuracy-vs-epsilon.png'} in {time.perf_counter() - started:.0f} s")


def run() -> int:
    from privdl.errors import PrivdlError

    try:
        main()
    except PrivdlError as exc:
        print(f"adult: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(run())
