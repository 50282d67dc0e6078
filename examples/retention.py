"""User-retention prediction on a media service: the single-table demo.

The main job is ``examples/retention/run.py`` (two tables, 100,000 users, an epsilon sweep,
a logistic model and an MLP); this smaller script, on the bundled 2,000-row
``examples/data/users.csv``, is kept for the soak test and as the shortest end-to-end read.

    raw export (examples/data/users.csv, synthetic)
      1. anonymize   pseudonymize ids; drop IPs, phones and the exact dates (birth date,
                     signup date: an attacker links on them); generalize age / ZIP /
                     sex / city until 5-anonymous (strict: every column has a role)
      2. train       logistic regression with DP-SGD (epsilon 2) under a per-dataset
                     budget ledger, with a non-private baseline and a membership audit
      3. score       the scoring service gets the demographics (age, sex, city) only as
                     CKKS ciphertexts; weekly plays arrive in plaintext (hybrid scoring)
      4. evidence    anonymization and privacy reports, a verified audit log, GDPR
                     Art. 30 records

    python examples/retention.py [--out retention-run] [--epsilon 2.0]

Keys come from PRIVDL_KEY / PRIVDL_AUDIT_KEY when set; otherwise fresh keys are written
to the output folder (mode 0600), as a demo would. Every file lands in ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATASET_ID = "retention-2026-11"
DEMOGRAPHICS = ("age", "sex", "city")


def _key(env: str, path: Path):  # type: ignore[no-untyped-def]
    from privdl import Secret

    if os.environ.get(env):
        return Secret.from_env(env)
    if path.exists():
        return Secret.from_file(path)
    key = Secret.generate()
    key.to_file(path)
    return key


def main() -> None:
    parser = argparse.ArgumentParser(description="privdl retention workflow")
    parser.add_argument("--data", type=Path, default=HERE / "data" / "users.csv")
    parser.add_argument("--out", type=Path, default=Path("retention-run"))
    parser.add_argument("--epsilon", type=float, default=2.0)
    parser.add_argument("--budget", type=float, default=8.0, help="epsilon budget of the dataset")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    parser.add_argument("--config", type=Path, default=HERE / "privdl.toml", help="controller, DPO, purposes")
    args = parser.parse_args()

    import torch
    from sklearn.linear_model import LogisticRegression
    from torch import nn

    import privdl
    from privdl.audit.checkpoint import generate_signing_key
    from privdl.audit.erasure import find_subject
    from privdl.audit.records import build_records, write_records
    from privdl.encrypted.models import load_model_spec

    out = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    key = _key("PRIVDL_KEY", out / "pseudonym.key")
    # two keys, two names: the HMAC chain key (a secret for writing and verifying the log)
    # and the Ed25519 key that signs checkpoints (its public half verifies them)
    audit_key = _key("PRIVDL_AUDIT_KEY", out / "audit-chain.key")
    signing_dir = out / "signing"  # in real use: kept apart from the log
    if not (signing_dir / "audit-signing.key").exists():
        generate_signing_key(signing_dir, name="audit-signing")
    log = privdl.AuditLog(
        out / "audit.jsonl", key=audit_key, signing_key=signing_dir / "audit-signing.key", config=args.config
    )

    # 1. anonymize --------------------------------------------------------------------
    raw = privdl.read_table(args.data)
    # strict: every column has a role. No exact or shifted date and no masked phone is
    # released beside the k claim: an attacker links on them (age stands for the birth
    # date and is generalized); what is kept is asserted not linkable.
    policy = privdl.Policy(
        identifiers=["user_id", "email:pseudonymize:normalize=email", "full_name"],
        drop=["ip", "phone", "birth_date", "signup_date"],
        keep=["plays_week1", "plays_week2", "retained"],
        quasi_identifiers=["age", "zip", "sex", "city"],
        hierarchies={"zip": "prefix"},
        k=args.k,
        strict=True,
    )
    anonymizer = privdl.Anonymizer(policy, key=key, audit_log=log)
    released = anonymizer.fit_transform(raw)
    privdl.write_table(released, out / "released.parquet")
    anonymizer.report_.save(out / "anonymization.html")
    summary = anonymizer.report_.to_dict()
    headline = anonymizer.report_.summary()  # the honest k: linkable columns counted too
    print(
        f"1. anonymized {len(raw)} users -> {len(released)} records, k={headline['k']}"
        f" with every linkable column counted (before: {summary['before']['unique_share']:.0%} unique on the QIs),"
        f" information loss {summary['information_loss']['ncp']:.1%}"
    )

    # 2. train with differential privacy -----------------------------------------------
    rng = np.random.default_rng(0)
    order = rng.permutation(len(released))
    cut = int(0.8 * len(order))
    train, test = released.iloc[order[:cut]], released.iloc[order[cut:]]
    features = ["age", "sex", "city", "plays_week1", "plays_week2"]
    encoder = privdl.TableEncoder(
        numeric_bounds={"age": (16, 90), "plays_week1": (0, 60), "plays_week2": (0, 60)},
        categories={
            "sex": ["female", "male", "diverse"],
            "city": sorted(set(raw["city"])),  # the service's city list: public, not learned
            "retained": [0, 1],
        },
        target="retained",
    )
    encoder.fit(train[[*features, "retained"]], target="retained")
    n_features = len(encoder.feature_names_)
    ledger = privdl.BudgetLedger(out / "budget.db")
    if DATASET_ID not in ledger.datasets():
        ledger.set_budget(DATASET_ID, epsilon=args.budget, delta=1e-5, audit_log=log)
    before = ledger.status(DATASET_ID)
    torch.manual_seed(0)
    trainer = privdl.PrivateTrainer(
        nn.Linear(n_features, 1), epsilon=args.epsilon, ledger=ledger, dataset_id=DATASET_ID,
        audit_log=log, encoder=encoder, seed=0, progress=False,
    )  # fmt: skip
    # the pseudonyms travel with the rows (the encoder never makes them features), so the
    # val-overlap check compares people, not look-alike generalized rows
    trainer.fit(
        train[["user_id", *features, "retained"]], target="retained",
        val=test[["user_id", *features, "retained"]],
        subjects=train["user_id"],  # pseudonyms: lets an erasure request find this run
    )  # fmt: skip
    accuracy = trainer.score(test[[*features, "retained"]], test["retained"])
    x_train, x_test = encoder.transform(train), encoder.transform(test)
    baseline = LogisticRegression(max_iter=2000).fit(x_train, train["retained"])
    baseline_acc = baseline.score(x_test, test["retained"])
    report = trainer.report(
        baseline={"metric": "accuracy", "value": baseline_acc},
        membership_data=((train[features], train["retained"]), (test[features], test["retained"])),
        ledger_before=before,
        ledger_after=ledger.status(DATASET_ID),
    )
    report.save(out / "privacy.html")
    report.save(out / "privacy.json")
    trainer.save(out / "model")
    print(
        f"2. trained with epsilon {trainer.epsilon:.3f} (delta {trainer.delta_:.1e}):"
        f" accuracy {accuracy:.3f} vs non-private {baseline_acc:.3f};"
        f" ledger {ledger.spent(DATASET_ID):.2f} of {args.budget} spent"
    )

    # 3. encrypted scoring of the demographics -----------------------------------------
    spec = load_model_spec(out / "model")
    keys = privdl.HEKeys.generate()
    public = keys.public()  # what the scoring service receives: no secret key
    scorer = privdl.EncryptedScorer.from_model(spec, public)
    sensitive = [c for c in spec.columns if c.split(":")[0].split("=")[0] in DEMOGRAPHICS]
    batch = keys.encrypt(
        test[list(DEMOGRAPHICS)], columns=sensitive, encoder=spec.info["encoder"], audit_log=log
    )
    scores = scorer.score(batch, plain=test[["plays_week1", "plays_week2"]], audit_log=log)
    probabilities = keys.decrypt(scores, audit_log=log)
    expected = trainer.predict_proba(test[features])
    expected = expected[:, -1] if expected.ndim == 2 else expected
    gap = float(np.max(np.abs(probabilities - expected)))
    print(
        f"3. scored {len(test)} users with encrypted {', '.join(DEMOGRAPHICS)}:"
        f" max |encrypted - plaintext| = {gap:.1e}"
    )

    # 4. evidence ----------------------------------------------------------------------
    checkpoint = signing_dir / "audit.checkpoint"
    log.checkpoint(path=checkpoint)
    result = privdl.verify_audit_log(
        out / "audit.jsonl", key=audit_key, checkpoint=checkpoint, public_key=signing_dir / "audit-signing.pub"
    )
    write_records(
        build_records(out / "audit.jsonl", config=args.config, verified=result), out / "records.csv"
    )
    print(f"4. {result.summary()}; Art. 30 records -> {out / 'records.csv'}")
    # what an Art. 17 request for one trained-on user would concern (read-only lookup;
    # `privdl audit erase-request` also records the request in the log)
    lineage = find_subject(out / "audit.jsonl", str(train["user_id"].iloc[0]), key=audit_key)
    concerned = ", ".join(f"{d['event']} #{d['seq']}" for d in lineage.direct + lineage.derived)
    print(f"   erasure lookup for one user's pseudonym: {concerned}")
    print(f"reports: {out / 'anonymization.html'}, {out / 'privacy.html'}")


def run() -> int:
    from privdl.errors import PrivdlError

    try:
        main()
    except PrivdlError as exc:  # e.g. the dataset's privacy budget is spent: one line, exit 1
        print(f"retention: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(run())
