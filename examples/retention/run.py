"""Second-week retention of a media service, end to end with privdl (the main job).

The terms of service forbid raw demographics reaching the model or the scoring service.

    0. export      a seeded synthetic export: users.csv (identifiers, birth date, sex, city,
                   ZIP, signup date, the week-2 label) and events.csv (first-week activity)
    1. anonymize   `privdl anonymize` on both tables with one key: keyed pseudonyms join
                   them; the user table is k-anonymous on its demographics and l-diverse on
                   the label; the events table is pseudonymized (not k-anonymized)
    2. features    first-week activity aggregated per pseudonym, joined to the released users
    3. train       PrivateTrainer at epsilon 1, 3, 8 for a logistic model and a small MLP,
                   one ledger whose budget covers the sweep; non-private baselines beside them
    3b. user level a small MLP on the released events table itself (one row per user and
                   active day, <= 7 per user) with user-level DP-SGD at epsilon 3, on a
                   user-level budget in the same ledger: it protects one person with all
                   their events
    4. score       new users scored by EncryptedScorer: their demographics reach the service
                   only as CKKS ciphertexts, their activity in plaintext (hybrid)
    5. evidence    privacy report (HTML, plots, membership audit), anonymization reports,
                   the audit log verified against a signed checkpoint, the Art. 30 record

    python examples/retention/run.py [--quick] [--out retention-run] [--users N] [--fresh]

Prints one table and writes ``privacy-utility.png``; every file lands in ``--out``. Keys
come from PRIVDL_KEY / PRIVDL_AUDIT_KEY when set; otherwise fresh keys are written to the
output folder (mode 0600), as a demo would. Real deployments keep keys elsewhere.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_export  # noqa: E402  (the generator beside this script)

DATASET_ID = "retention-export-2026-11"
LABEL = "retained_week2"
EPSILONS = (1.0, 3.0, 8.0)
DEPLOYED = ("logistic", 3.0)  # the model the scoring service gets
DELTA = 1e-6  # per run; the dataset's budget below holds all six
DEMOGRAPHICS = ("age", "sex", "city")  # encrypted on the client
# the user-level stage: the events table's own dataset id and budget, in the same ledger
EVENTS_DATASET_ID = "retention-events-2026-11"
EVENTS_EPSILON = 3.0
EVENTS_BUDGET = 3.0  # user-level: one person with all their events
DAYS = 7  # the export's window (days 0-6): at most one event row per user and day
EVENT_FEATURES = ("day", "platform", "log_plays", "log_minutes", "log_skips", "log_searches", "log_likes", "log_playlist_adds")  # fmt: skip
ACTIVITY = (
    "active_days",
    "log_plays",
    "log_minutes",
    "log_late_plays",
    "skip_rate",
    "log_searches",
    "log_likes",
    "log_playlist_adds",
    "mobile_share",
)
FEATURES = (*DEMOGRAPHICS, *ACTIVITY)
REFERENCE_YEAR = 2026  # the export's year: ages are counted from it


def _key(env: str, path: Path) -> Any:
    from privdl import Secret

    if os.environ.get(env):
        return Secret.from_env(env)
    if path.exists():
        return Secret.from_file(path)
    key = Secret.generate()
    key.to_file(path)
    return key


# -- features ------------------------------------------------------------------------


def age_label(label: str) -> str:
    """The age range (years, at the end of the export's year) that a released birth-date
    label stands for: ``1985`` -> ``40-41``, ``1985-Q3`` or ``1985-07-14`` -> ``41``
    (to the year), ``*`` -> ``*`` (unknown: the encoder's missing/wide cell)."""
    text = str(label)
    if not text[:4].isdigit():
        return "*"
    year = int(text[:4])
    high = REFERENCE_YEAR - year
    return f"{high - 1}-{high}" if len(text) == 4 else str(high - 1)


def activity(events: pd.DataFrame) -> pd.DataFrame:
    """First-week activity per pseudonym (one row per user with at least one event)."""
    grouped = events.groupby("user_id", sort=True)
    late = events[events["day"] >= 4].groupby("user_id")["plays"].sum()
    mobile = events["platform"].isin(["android", "ios"]).groupby(events["user_id"]).mean()
    out = pd.DataFrame(
        {
            "active_days": grouped["day"].nunique(),
            "plays": grouped["plays"].sum(),
            "minutes": grouped["minutes"].sum(),
            "skips": grouped["skips"].sum(),
            "searches": grouped["searches"].sum(),
            "likes": grouped["likes"].sum(),
            "playlist_adds": grouped["playlist_adds"].sum(),
        }
    )
    out["late_plays"] = late.reindex(out.index, fill_value=0)
    out["mobile_share"] = mobile.reindex(out.index)
    out["skip_rate"] = out["skips"] / out["plays"].clip(lower=1)
    for column in ("plays", "minutes", "late_plays", "searches", "likes", "playlist_adds"):
        out[f"log_{column}"] = np.log1p(out[column])
    return out[list(ACTIVITY)]


def feature_table(users: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """One row per user: demographics as released (age from the generalized birth date)
    and aggregated activity (zeros for a user with no event)."""
    table = users.copy()
    table["age"] = table["birth_date"].map(age_label)
    joined = table.join(activity(events), on="user_id")
    joined[list(ACTIVITY)] = joined[list(ACTIVITY)].fillna(0.0)
    return joined


# -- stages --------------------------------------------------------------------------


def anonymize_cli(table: Path, policy: Path, out: Path, report: Path, *, env: dict[str, str], key: list[str], log: Path) -> None:  # fmt: skip
    """Run `privdl anonymize` as a user would (one audit entry per table)."""
    command = [
        sys.executable, "-m", "privdl", "anonymize", str(table), "-o", str(out),
        "--policy", str(policy), *key, "--report", str(report),
        "--audit-log", str(log),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(done.returncode)


def event_rows(events: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """The released events table as training rows: one per user and active day, its
    counts log-scaled, joined by pseudonym to the user's label (users without an event
    have no row)."""
    rows = events.join(users.set_index("user_id")[[LABEL]], on="user_id", how="inner")
    for column in ("plays", "minutes", "skips", "searches", "likes", "playlist_adds"):
        rows[f"log_{column}"] = np.log1p(rows[column])
    return rows[["user_id", *EVENT_FEATURES, LABEL]]


def events_encoder() -> Any:
    """The event rows' TableEncoder: public domains (the window, bounds, the platforms)."""
    import privdl

    bounds = {"day": (0, DAYS - 1), "log_plays": (0, 6), "log_minutes": (0, 8), "log_skips": (0, 5),
              "log_searches": (0, 5), "log_likes": (0, 5), "log_playlist_adds": (0, 4)}  # fmt: skip
    return privdl.TableEncoder(
        numeric_bounds=bounds,
        categories={"platform": ["android", "ios", "tv", "web"], LABEL: [0, 1]},
        target=LABEL,
    )


def per_user(rows: pd.DataFrame, p: np.ndarray) -> pd.DataFrame:
    """A user's score: the mean of their rows' predicted probabilities; their label."""
    return rows.assign(score=p).groupby("user_id").agg(score=("score", "mean"), y=(LABEL, "first"))


def encoder_for(cities: list[str]) -> Any:
    """The TableEncoder: every domain public (bounds, the service's city list), none
    learned from the records."""
    import privdl

    bounds = {
        "age": (16, 90),
        "active_days": (0, 7),
        "log_plays": (0, 6),
        "log_minutes": (0, 8),
        "log_late_plays": (0, 5),
        "skip_rate": (0, 1),
        "log_searches": (0, 5),
        "log_likes": (0, 5),
        "log_playlist_adds": (0, 4),
        "mobile_share": (0, 1),
    }
    return privdl.TableEncoder(
        numeric_bounds=bounds,
        categories={"sex": ["female", "male", "diverse"], "city": cities, LABEL: [0, 1]},
        target=LABEL,
    )


def make_model(kind: str, n_features: int) -> Any:
    from torch import nn

    if kind == "logistic":
        return nn.Linear(n_features, 1)
    return nn.Sequential(nn.Linear(n_features, 32), nn.ReLU(), nn.Linear(32, 1))


def scores(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)), float(np.mean((p >= 0.5) == (y == 1)))


def plot(path: Path, results: dict[tuple[str, float | None], tuple[float, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, color in (("logistic", "tab:blue"), ("mlp", "tab:orange")):
        ax.plot(EPSILONS, [results[kind, e][0] for e in EPSILONS], "o-", color=color, label=f"{kind}, DP")
        ax.axhline(results[kind, None][0], color=color, ls="--", lw=1, label=f"{kind}, non-private")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(EPSILONS, [f"{e:g}" for e in EPSILONS])
    ax.set_xlabel("epsilon (privacy unit: the record; one record per user)")
    ax.set_ylabel("test AUC")
    ax.set_title("Second-week retention: privacy-utility trade-off")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="privdl retention workflow (the main job)")
    parser.add_argument("--quick", action="store_true", help="5,000 users, fewer epochs (< 1 minute)")
    parser.add_argument("--users", type=int, default=None, help="users in the export (default 100,000)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path("retention-run"))
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    args = parser.parse_args(argv)
    n_users = args.users or (5_000 if args.quick else 100_000)
    epochs, batch_size = (20, 256) if args.quick else (10, 1024)
    new_users = 500 if args.quick else 2_000

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    import privdl
    from privdl.audit.checkpoint import generate_signing_key
    from privdl.audit.records import build_records, write_records
    from privdl.encrypted.models import load_model_spec

    torch.set_num_threads(1)  # with one BLAS thread below: the same figures on any core count
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    out = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    if (out / "budget.db").exists():
        raise SystemExit(
            f"retention: {out} holds an earlier run (its ledger is spent): use --fresh or another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    config = HERE / "privdl.toml"
    # the CLI reads the pseudonymization key from PRIVDL_KEY when set, else from the
    # demo's key file (mode 0600); the audit key likewise
    _key("PRIVDL_KEY", out / "pseudonym.key")
    key_option = (
        ["--key-env", "PRIVDL_KEY"]
        if os.environ.get("PRIVDL_KEY")
        else ["--key-file", str(out / "pseudonym.key")]
    )
    audit_key = _key("PRIVDL_AUDIT_KEY", out / "audit-chain.key")
    signing_dir = out / "signing"  # in real use: kept apart from the log
    generate_signing_key(signing_dir, name="audit-signing")
    log_path = out / "audit.jsonl"
    timings: dict[str, float] = {}

    # 0. the export ---------------------------------------------------------------------
    t = time.perf_counter()
    raw_dir = out / "export"  # raw (synthetic) personal data: stays with the data owner
    users_csv, events_csv = make_export.write(n_users, args.seed, raw_dir)
    n_events = sum(1 for _ in events_csv.open()) - 1
    timings["export"] = time.perf_counter() - t

    # 1. anonymize with the CLI -----------------------------------------------------------
    t = time.perf_counter()
    env = {**os.environ, "PRIVDL_CONFIG": str(config)}
    if not os.environ.get("PRIVDL_AUDIT_KEY"):  # the demo's audit key file, as the CLI reads keys
        env["PRIVDL_AUDIT_KEY"] = (out / "audit-chain.key").read_text().strip()
    anonymize_cli(users_csv, HERE / "users-policy.toml", out / "users.parquet",
                  out / "anonymization-users.html", env=env, key=key_option, log=log_path)  # fmt: skip
    anonymize_cli(events_csv, HERE / "events-policy.toml", out / "events.parquet",
                  out / "anonymization-events.html", env=env, key=key_option, log=log_path)  # fmt: skip
    users = pd.read_parquet(out / "users.parquet")
    events = pd.read_parquet(out / "events.parquet")
    policy = privdl.Policy.from_toml(HERE / "users-policy.toml")
    # recomputed from the released table, not copied from the CLI's report
    risk = privdl.assess_risk(users, quasi_identifiers=list(policy.quasi_identifiers), sensitive=[LABEL])
    joined_share = float(users["user_id"].isin(set(events["user_id"])).mean())
    timings["anonymize"] = time.perf_counter() - t

    # 2. features per pseudonym -----------------------------------------------------------
    t = time.perf_counter()
    table = feature_table(users, events)
    order = np.random.default_rng(args.seed).permutation(len(table))
    cut = int(0.8 * len(order))
    train, test = table.iloc[order[:cut]], table.iloc[order[cut:]]
    cities = sorted(make_export.CITIES)  # the service's city list: public, not learned
    encoder = encoder_for(cities).fit(train[[*FEATURES, LABEL]], target=LABEL)
    x_train, x_test = encoder.transform(train), encoder.transform(test)
    y_train, y_test = train[LABEL].to_numpy(), test[LABEL].to_numpy()
    timings["features"] = time.perf_counter() - t

    # 3. train: the privacy-utility sweep under one ledger ---------------------------------
    t = time.perf_counter()
    log = privdl.AuditLog(log_path, key=audit_key, signing_key=signing_dir / "audit-signing.key", config=config)
    ledger = privdl.BudgetLedger(out / "budget.db")
    budget = 2 * sum(EPSILONS)  # covers the whole sweep, even summed without composition
    ledger.set_budget(DATASET_ID, epsilon=budget, delta=1e-5, audit_log=log)
    results: dict[tuple[str, float | None], tuple[float, float]] = {}
    trainers: dict[tuple[str, float], Any] = {}
    status: dict[str, Any] = {}
    for kind in ("logistic", "mlp"):
        for epsilon in EPSILONS:
            torch.manual_seed(0)
            if (kind, epsilon) == DEPLOYED:
                status["before"] = ledger.status(DATASET_ID)
            # USER-LEVEL DP: one row per account here (activity aggregated per pseudonym), so
            # record level is account level and the unit stays "record". Stage 3b below
            # trains on the event rows themselves (several per user) at user level:
            # privacy_unit="user", max_records_per_user=DAYS, fit(..., user_column=...),
            # on its own user-level budget in this ledger.
            trainer = privdl.PrivateTrainer(
                make_model(kind, len(encoder.feature_names_)), epsilon=epsilon, delta=DELTA,
                epochs=epochs, batch_size=batch_size, ledger=ledger, dataset_id=DATASET_ID,
                audit_log=log, encoder=encoder, seed=0, progress=False,
            )  # fmt: skip
            # the deployed run also reports its held-out accuracy per epoch (computed without
            # noise: its report lists it as not covered); the pseudonyms travel with the
            # rows (never features), so the overlap check compares people
            val = test[["user_id", *FEATURES, LABEL]] if (kind, epsilon) == DEPLOYED else None
            trainer.fit(
                train[["user_id", *FEATURES, LABEL]], target=LABEL, val=val,
                subjects=train["user_id"],  # pseudonyms: an erasure request finds this run
            )  # fmt: skip
            proba = trainer.predict_proba(test[list(FEATURES)])
            results[kind, epsilon] = scores(y_test, proba[:, -1] if proba.ndim == 2 else proba)
            trainers[kind, epsilon] = trainer
            if (kind, epsilon) == DEPLOYED:
                status["after"] = ledger.status(DATASET_ID)
    # non-private baselines: not charged, not covered by DP; shown for comparison only
    baselines = {
        "logistic": LogisticRegression(max_iter=2000),
        "mlp": MLPClassifier(hidden_layer_sizes=(32,), max_iter=60, early_stopping=True, random_state=0),
    }
    for kind, model in baselines.items():
        model.fit(x_train, y_train)
        results[kind, None] = scores(y_test, model.predict_proba(x_test)[:, 1])
    timings["train"] = time.perf_counter() - t

    # 3b. user level on the events table: the unit is one person with all their events ----
    t = time.perf_counter()
    rows = event_rows(events, users)
    in_test = rows["user_id"].isin(set(test["user_id"])).to_numpy()  # split by the same users
    rows_train, rows_test = rows[~in_test], rows[in_test]
    events_enc = events_encoder().fit(rows_train[[*EVENT_FEATURES, LABEL]], target=LABEL)
    ledger.set_budget(EVENTS_DATASET_ID, epsilon=EVENTS_BUDGET, delta=1e-5, privacy_unit="user",
                      max_records_per_user=DAYS, audit_log=log)  # fmt: skip
    torch.manual_seed(0)
    user_level = privdl.PrivateTrainer(
        make_model("mlp", len(events_enc.feature_names_)), epsilon=EVENTS_EPSILON, delta=DELTA,
        privacy_unit="user", max_records_per_user=DAYS, epochs=epochs, batch_size=batch_size,
        ledger=ledger, dataset_id=EVENTS_DATASET_ID, audit_log=log, encoder=events_enc, seed=0,
        progress=False,
    )  # fmt: skip
    user_level.fit(rows_train, target=LABEL, user_column="user_id", subjects=rows_train["user_id"])
    proba = user_level.predict_proba(rows_test[list(EVENT_FEATURES)])
    held_out = per_user(rows_test, proba[:, -1] if proba.ndim == 2 else proba)
    user_auc = scores(held_out["y"].to_numpy(), held_out["score"].to_numpy())[0]
    # the same rows without DP (logistic regression, per-user mean): what the rows allow
    rows_model = LogisticRegression(max_iter=2000).fit(events_enc.transform(rows_train), rows_train[LABEL])
    plain_rows = per_user(rows_test, rows_model.predict_proba(events_enc.transform(rows_test))[:, 1])
    rows_auc = scores(plain_rows["y"].to_numpy(), plain_rows["score"].to_numpy())[0]
    user_level.report().save(out / "privacy-events.html")  # headline: user-level
    events_status = ledger.status(EVENTS_DATASET_ID)
    timings["user-level"] = time.perf_counter() - t

    # the deployed model's privacy report, with a membership audit
    t = time.perf_counter()
    deployed = trainers[DEPLOYED]
    audit_rows = min(2_000, len(test))
    report = deployed.report(
        baseline={"metric": "accuracy", "value": results["logistic", None][1]},
        membership_data=(
            (train[list(FEATURES)].iloc[:audit_rows], train[LABEL].iloc[:audit_rows]),
            (test[list(FEATURES)].iloc[:audit_rows], test[LABEL].iloc[:audit_rows]),
        ),
        ledger_before=status["before"],
        ledger_after=status["after"],
    )
    report.save(out / "privacy.html")
    report.save(out / "privacy.json")
    deployed.save(out / "model")
    timings["report"] = time.perf_counter() - t

    # 4. encrypted scoring of new users ------------------------------------------------------
    t = time.perf_counter()
    # the service's client side holds the new users' own data (raw, never released)
    fresh_users, fresh_events = make_export.generate(new_users, args.seed + 1)
    fresh_users["age"] = (
        pd.to_datetime(fresh_users["signup_date"]) - pd.to_datetime(fresh_users["birth_date"])
    ).dt.days // 365
    fresh = fresh_users.join(activity(fresh_events), on="user_id")
    fresh[list(ACTIVITY)] = fresh[list(ACTIVITY)].fillna(0.0)
    spec = load_model_spec(out / "model")
    keys = privdl.HEKeys.generate()
    scorer = privdl.EncryptedScorer.from_model(spec, keys.public())  # no secret key inside
    encrypted_columns = [c for c in spec.columns if c.split(":")[0].split("=")[0] in DEMOGRAPHICS]
    batch = keys.encrypt(
        fresh[list(DEMOGRAPHICS)], columns=encrypted_columns, encoder=spec.info["encoder"], audit_log=log
    )
    encrypted = keys.decrypt(scorer.score(batch, plain=fresh[list(ACTIVITY)], audit_log=log), audit_log=log)
    plain = deployed.predict_proba(fresh[list(FEATURES)])
    plain = plain[:, -1] if plain.ndim == 2 else plain
    gap = float(np.max(np.abs(encrypted - plain)))
    same = float(np.mean((encrypted >= 0.5) == (plain >= 0.5)))
    # printed as a power-of-ten bound: the CKKS noise in the last digits differs run to run
    bound = 10.0 ** math.ceil(math.log10(max(gap, 1e-15)))
    timings["score"] = time.perf_counter() - t

    # 5. evidence -----------------------------------------------------------------------
    t = time.perf_counter()
    checkpoint = signing_dir / "audit.checkpoint"
    log.checkpoint(path=checkpoint)
    verified = privdl.verify_audit_log(
        log_path, key=audit_key, checkpoint=checkpoint, public_key=signing_dir / "audit-signing.pub"
    )
    write_records(build_records(log_path, config=config, verified=verified), out / "records.csv")
    plot(out / "privacy-utility.png", results)
    timings["evidence"] = time.perf_counter() - t

    # the table ---------------------------------------------------------------------------
    spent = ledger.spent(DATASET_ID)
    print(
        f"retention: {n_users:,} users, {n_events:,} events (seed {args.seed}); test AUC / accuracy on {len(test):,} held-out users"
    )
    print(f"{'model':<10}{'epsilon':>12}{'AUC':>8}{'accuracy':>10}")
    for kind in ("logistic", "mlp"):
        for epsilon in (*EPSILONS, None):
            auc, acc = results[kind, epsilon]
            label = "non-private" if epsilon is None else f"{trainers[kind, epsilon].epsilon:.2f}"
            print(f"{kind:<10}{label:>12}{auc:>8.3f}{acc:>10.3f}")
    print(
        f"released users: k={risk.k}, l={risk.l_distinct[LABEL]} (distinct, on {LABEL}), "
        f"{risk.rows:,} rows, recomputed from the released table; {joined_share:.1%} join events by pseudonym"
    )
    print(
        f"user-level (events table, mlp, epsilon {user_level.epsilon:.2f}, <= {DAYS} days per user): "
        f"AUC {user_auc:.3f} per user on {len(held_out):,} held-out users with events "
        f"(non-private on the same rows {rows_auc:.3f}); protects one person with all their events"
    )
    print(
        f"ledger: epsilon {spent:.2f} of {budget:g} spent by {len(EPSILONS) * 2} runs (composed, PRV); "
        f"user-level budget of the events table: {events_status.spent:.2f} of {EVENTS_BUDGET:g}"
    )
    print(
        f"encrypted scoring ({DEPLOYED[0]}, epsilon {DEPLOYED[1]:g}) of {new_users:,} new users: "
        f"max |encrypted - plain| < {bound:.0e}, same decision for {same:.1%}"
    )
    print(
        f"audit log: OK, {verified.entries} entries verified, {verified.checkpoint_size} covered by the"
        f" signed checkpoint; Art. 30 record -> records.csv"
    )
    print("wall s: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in timings.items()))
    print(
        f"outputs in {out}/: privacy.html, privacy-events.html, anonymization-users.html, anonymization-events.html,"
        " privacy-utility.png"
    )


def run() -> int:
    from privdl.errors import PrivdlError

    try:
        main()
    except PrivdlError as exc:  # e.g. the dataset's budget is spent: one line, its exit code
        print(f"retention: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(run())
