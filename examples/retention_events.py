"""User-level DP on the retention job's play events: the guarantee protects each person.

    raw export (examples/data/users.csv, synthetic) -> a play-events table (one row per
    play, 1-60 per user, heavy-tailed, seeded), then
      1. pseudonymize   user_id -> keyed HMAC pseudonym (the only identifier kept)
      2. train          logistic regression with *user-level* DP-SGD (epsilon 2): users
                        are sampled, each user's gradient over their events is clipped as
                        one unit, and the ledger's budget is user-level too
      3. evidence       the privacy report states "user-level" in its headline

With record-level DP-SGD a user with 20 plays would be protected only by group privacy
(20 epsilon, ...). Here the epsilon bounds adding or removing one person with all their
plays.

    python examples/retention_events.py [--out retention-events-run] [--epsilon 2.0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATASET_ID = "retention-events-2026-11"
MAX_EVENTS = 60


def make_events(users, seed: int = 11):  # type: ignore[no-untyped-def]
    """One row per play: week, minutes, device; each user's retention label on every row."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    counts = np.clip(np.round(rng.lognormal(np.log(5), 1.0, len(users))), 1, MAX_EVENTS).astype(int)
    rows = users.iloc[np.repeat(np.arange(len(users)), counts)].reset_index(drop=True)
    activity = (rows["plays_week1"] + rows["plays_week2"]).to_numpy() / 2
    return pd.DataFrame(
        {
            "user_id": rows["user_id"],
            "week": rng.integers(1, 9, len(rows)),
            "minutes": np.clip(rng.gamma(2.0, 1 + activity / 4), 0, 180).round(1),
            "device": rng.choice(["phone", "tv", "web"], len(rows)),
            "retained": rows["retained"],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="privdl retention events at user level")
    parser.add_argument("--data", type=Path, default=HERE / "data" / "users.csv")
    parser.add_argument("--out", type=Path, default=Path("retention-events-run"))
    parser.add_argument("--epsilon", type=float, default=2.0)
    parser.add_argument("--budget", type=float, default=8.0, help="user-level epsilon budget of the dataset")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    args = parser.parse_args()

    import torch
    from sklearn.metrics import roc_auc_score
    from torch import nn

    import privdl
    from privdl.budget import report_document

    out = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    # the pseudonym key: PRIVDL_KEY when set (the retention job's), else a fresh one
    key = privdl.Secret.from_env("PRIVDL_KEY") if os.environ.get("PRIVDL_KEY") else privdl.Secret.generate()

    # 1. pseudonymize: the events keep a keyed pseudonym per user and no other identifier
    events = make_events(privdl.read_table(args.data))
    policy = privdl.Policy(identifiers=["user_id"], keep=["week", "minutes", "device", "retained"], k=None)
    released = privdl.Anonymizer(policy, key=key).fit_transform(events)
    per_user = released.groupby("user_id").size()
    print(
        f"1. {len(released)} play events of {len(per_user)} users (1-{per_user.max()} each, "
        f"median {int(per_user.median())}), user_id pseudonymized"
    )

    # 2. train at user level, split by users ----------------------------------------
    rng = np.random.default_rng(0)
    ids = per_user.index.to_numpy()
    test_ids = set(rng.permutation(ids)[: len(ids) // 5])
    is_test = released["user_id"].isin(test_ids).to_numpy()
    train, test = released[~is_test], released[is_test]
    encoder = privdl.TableEncoder(
        numeric_bounds={"week": (1, 8), "minutes": (0, 180)},
        categories={"device": ["phone", "tv", "web"], "retained": [0, 1]},
        target="retained",
    )  # public domains: nothing learned from the records
    features = ["week", "minutes", "device"]
    encoder.fit(train[[*features, "retained"]], target="retained")
    ledger = privdl.BudgetLedger(out / "budget.db")
    if DATASET_ID not in ledger.datasets():
        ledger.set_budget(
            DATASET_ID, epsilon=args.budget, delta=1e-5, privacy_unit="user", max_records_per_user=MAX_EVENTS
        )
    torch.manual_seed(0)
    trainer = privdl.PrivateTrainer(
        nn.Linear(len(encoder.feature_names_), 1), epsilon=args.epsilon, privacy_unit="user",
        max_records_per_user=MAX_EVENTS, ledger=ledger, dataset_id=DATASET_ID, encoder=encoder,
        batch_size=128, epochs=20, seed=0, progress=False,
    )  # fmt: skip
    trainer.fit(train[["user_id", *features, "retained"]], target="retained", user_column="user_id")
    proba = trainer.predict_proba(test[features])
    score = proba[:, -1] if proba.ndim == 2 else proba
    by_user = test.assign(score=score).groupby("user_id").agg(score=("score", "mean"), y=("retained", "first"))
    auc = roc_auc_score(by_user["y"], by_user["score"])
    status = ledger.status(DATASET_ID)
    print(
        f"2. trained at user level: epsilon {trainer.epsilon:.3f} (delta {trainer.delta_:.1e}) for one person "
        f"with all their events; {trainer.n_users_} users sampled at q={trainer.sample_rate_:.3g}; "
        f"test AUC per user {auc:.3f}; ledger ({status.privacy_unit}-level) {status.spent:.2f} of {status.epsilon:g}"
    )

    # 3. evidence ------------------------------------------------------------------
    report = trainer.report()
    report.save(out / "privacy.html")
    report.save(out / "privacy.json")
    print("3. " + report_document.statement(report).split(" for DP-SGD")[0])
    print(f"report: {out / 'privacy.html'}")


def run() -> int:
    from privdl.errors import PrivdlError

    try:
        main()
    except PrivdlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
