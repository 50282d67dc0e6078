"""User-level DP-SGD against the group-privacy route and non-private training (issue 16).

Run:  python benchmarks/user_level.py [--quick] [--seeds 10] [--fixed] [--no-cost]

It ends with the cost of the user as the unit: fits of 1 and 3 epochs of user-level
DP-SGD beside record-level DP-SGD on the same records, with as many records per step
(bk and Opacus' hooks; the best of two fits each).

Two retention-like regimes, each split by users (80 % train, 20 % test), target per user,
user-level guarantee (epsilon=2, delta=1e-5) for the two private routes:

* many users: 20,000 users, 5-60 events each (uniform), a logistic model;
* few users: 2,000 users, events lognormal with median 5 capped at 60, a small MLP.

Routes, printed side by side as test AUC per user (a user's score is the mean of the
model's logits over their events):

* ``user``: ``PrivateTrainer(privacy_unit="user", max_records_per_user=m)`` at (2, 1e-5),
  m chosen on the tuning draw (below);
* ``group``: record-level DP-SGD calibrated so that group privacy over k = 60 records per
  person gives the same (2, 1e-5): ``k eps_r = 2`` and ``k e^((k-1) eps_r) delta_r = 1e-5``;
* ``group k chosen``: the same group route with its own contribution bound: at most k
  records per user (their first ones) and group privacy over k, k in {16, 60} chosen like
  the other hyperparameters (k = 60 is the ``group`` route). The issue's goals are stated
  against ``group`` (k = 60); the script prints the comparison with both;
* ``non-private``: the same model, loss and optimizer without clipping or noise;
* ``(sklearn)``: a converged non-private reference (scikit-learn's LogisticRegression, or
  MLPClassifier with the same 32 tanh units). The goal "within 3 points of non-private"
  is checked against the better of the two.

Hyperparameters: Adam, clipping norm 1, and per route a grid search over the expected
batch (a fraction of the training units: users for ``user``, records for ``group`` and
the non-private run) in {1/20, 1/5, 1/2}, the learning rate in {0.02, 0.1} and the
number of epochs in {2, 5, 15, 40} (40 was added when the first grid's optimum sat at
its edge, 15 epochs, for every route in the many-users regime; the grid is the same for
every route); the user-level route also chooses its contribution bound
``max_records_per_user`` in {16, 60} (``group`` keeps k = 60, the largest number of
records one person has; ``group k chosen`` chooses its k in {16, 60}). Each route keeps
the point with the best validation AUC, averaged over 2 training seeds, on *independent
draws* of the generator (seeds 9999 and 10000: trained on the first's training split,
validated on all users of the second; never evaluated): public look-alikes, as a team
would tune on synthetic or public data. ``--fixed`` skips the selection and uses 1/20,
0.02, 10 epochs and the cap 60 for every route (the rule of the first version of this
script). The evaluation draws (seeds 0..) are never used to choose anything.

Printed per regime: the mean test AUC over the seeds and its standard error
(sample standard deviation / sqrt(seeds)), and the paired difference user - group
(per seed, same draw) with its standard error. The goal "never below the group route"
is stated as met only when the user-level mean is >= the group mean; the line says
whether the difference is within one standard error of 0.

The event generator: user u has latent features z_u ~ N(0, I_32); an event is
``z_u + N(0, 2^2 I)``; the target is Bernoulli(sigmoid(f(z_u))), with f linear in the
many-users regime and with an interaction term in the few-users one. The features are
synthetic and need no preprocessing.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")

EPSILON, DELTA, K = 2.0, 1e-5, 60
D = int(os.environ.get("PRIVDL_BENCH_FEATURES", "32"))  # features per event


def group_calibration(epsilon: float = EPSILON, delta: float = DELTA, k: int = K) -> tuple[float, float]:
    """Record-level (eps_r, delta_r) whose group privacy over k records is (epsilon, delta)."""
    eps_r = epsilon / k
    delta_r = delta / (k * math.exp((k - 1) * eps_r))
    return eps_r, delta_r


def make_regime(name: str, seed: int, quick: bool):
    rng = np.random.default_rng(1000 + seed)
    if name == "many":
        n_users = 4000 if quick else 20000
        counts = rng.integers(5, 61, n_users)
    else:
        n_users = 2000
        counts = np.minimum(np.maximum(1, np.round(rng.lognormal(math.log(5), 1.0, n_users))), K).astype(int)
    z = rng.normal(size=(n_users, D))
    w = np.linspace(1.0, -0.6, D)
    f = z @ w * 0.8
    if name == "few":
        f = f + 1.2 * z[:, 0] * z[:, 1]
    label = (rng.random(n_users) < 1 / (1 + np.exp(-f))).astype(np.int64)
    owner = np.repeat(np.arange(n_users), counts)
    X = (z[owner] + 2.0 * rng.normal(size=(len(owner), D))).astype(np.float32)
    y = label[owner]
    test_users = rng.permutation(n_users)[: n_users // 5]
    is_test = np.isin(owner, test_users)
    return (X[~is_test], y[~is_test], owner[~is_test]), (X[is_test], owner[is_test], label), n_users


def make_model(name: str, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if name == "many":
        return nn.Linear(D, 1)
    return nn.Sequential(nn.Linear(D, 32), nn.Tanh(), nn.Linear(32, 1))


def user_auc(model, test) -> float:
    import torch
    from sklearn.metrics import roc_auc_score

    X, owner, label = test
    with torch.no_grad():
        logit = model(torch.from_numpy(X)).reshape(-1).numpy()
    users, inv = np.unique(owner, return_inverse=True)
    score = np.bincount(inv, weights=logit) / np.bincount(inv)
    return float(roc_auc_score(label[users], score))


def non_private(name, train, seed, epochs, batch, lr=0.02):
    import torch

    X, y, _ = train
    model = make_model(name, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).float()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(Xt), generator=g)
        for idx in perm.split(batch):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(Xt[idx]).reshape(-1), yt[idx])
            loss.backward()
            opt.step()
    return model


def reference(name, train, seed):
    """A converged non-private reference from scikit-learn (LogisticRegression for the
    logistic regime, MLPClassifier with the same 32 tanh units for the MLP one), as a
    logit function for :func:`user_auc`."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    X, y, _ = train
    if name == "many":
        clf = LogisticRegression(max_iter=1000).fit(X, y)
    else:
        clf = MLPClassifier((32,), activation="tanh", max_iter=300, random_state=seed).fit(X, y)

    def logit(x):
        p = np.clip(clf.predict_proba(x.numpy())[:, 1], 1e-12, 1 - 1e-12)
        return torch.from_numpy(np.log(p / (1 - p)))

    return logit


def private(name, train, seed, epochs, *, unit: str, fraction: float = 1 / 20, lr: float = 0.02, cap: int = K):
    from privdl import PrivateTrainer

    X, y, owner = train
    n_users = len(np.unique(owner))
    if unit == "user":
        t = PrivateTrainer(
            make_model(name, seed),
            epsilon=EPSILON,
            delta=DELTA,
            privacy_unit="user",
            max_records_per_user=cap,
            epochs=epochs,
            batch_size=max(1, round(n_users * fraction)),
            lr=lr,
            seed=seed,
            progress=False,
        )
        t.fit((X, y), users=owner)
    else:
        if cap < K:  # the group route's own contribution bound: the first `cap` records of each user
            X, y, owner = cap_records(train, cap)
        eps_r, delta_r = group_calibration(k=cap)
        t = PrivateTrainer(
            make_model(name, seed),
            epsilon=eps_r,
            delta=delta_r,
            epochs=epochs,
            batch_size=max(1, round(len(X) * fraction)),
            lr=lr,
            seed=seed,
            progress=False,
        )
        t.fit((X, y))
    return t


def cap_records(train, cap):
    """At most ``cap`` records per user (their first ones; a user's events are exchangeable)."""
    X, y, owner = train
    order = np.argsort(owner, kind="stable")
    o = owner[order]
    first = np.r_[0, np.flatnonzero(np.diff(o)) + 1]
    rank = np.arange(len(o)) - np.repeat(first, np.diff(np.r_[first, len(o)]))
    keep = np.sort(order[rank < cap])
    return X[keep], y[keep], owner[keep]


FRACTIONS, LRS, EPOCHS, CAPS = (1 / 20, 1 / 5, 1 / 2), (0.02, 0.1), (2, 5, 15, 40), (16, K)
FIXED = {"fraction": 1 / 20, "lr": 0.02, "epochs": 10, "cap": K}
PROXY_SEED = 9999  # the tuning draws: 9999 (training) and 10000 (validation)
SELECT_REPEATS = 2  # training seeds per grid point in the selection


def grid(route):
    caps = CAPS if route in ("user", "groupk") else (K,)
    return [
        {"fraction": f, "lr": lr, "epochs": e, "cap": m} for f in FRACTIONS for lr in LRS for e in EPOCHS for m in caps
    ]


def train_route(route, name, train, seed, hp):
    if route == "none":
        return non_private(name, train, seed, hp["epochs"], max(1, round(len(train[0]) * hp["fraction"])), lr=hp["lr"])
    cap = hp["cap"] if route in ("user", "groupk") else K
    unit = "user" if route == "user" else "group"
    return private(name, train, seed, hp["epochs"], unit=unit, fraction=hp["fraction"], lr=hp["lr"], cap=cap)


def select(name, quick, repeats=SELECT_REPEATS):
    """Per route, the hyperparameters with the best validation AUC, averaged over
    ``repeats`` training seeds, trained on the training split of one independent draw of
    the generator and validated on all users of a second one (never evaluated)."""
    fit, _test, _n = make_regime(name, PROXY_SEED, quick)
    (Xa, _ya, oa), (Xb, ob, label), _n = make_regime(name, PROXY_SEED + 1, quick)
    val = (np.concatenate([Xa, Xb]), np.concatenate([oa, ob]), label)
    chosen, cache = {}, {}
    for route in ("user", "group", "groupk", "none"):
        best = None
        for hp in grid(route):
            key = ("group" if route == "groupk" and hp["cap"] == K else route, tuple(sorted(hp.items())))
            if key not in cache:  # groupk at k = 60 is the group route: scored once
                scores = []
                for r in range(repeats):
                    out = train_route(route, name, fit, 100 + r, hp)
                    scores.append(user_auc(out if route == "none" else out.model_, val))
                cache[key] = statistics.mean(scores)
            score = cache[key]
            if best is None or score > best[0]:
                best = (score, hp)
        chosen[route] = best[1]
    return chosen


def mean_se(values):
    m = statistics.mean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, se


def describe(route, hp):
    cap = f"/cap {hp['cap']}" if route in ("user", "groupk") else ""
    return f"{route} {hp['fraction']:.2g}/{hp['lr']:g}/{hp['epochs']}ep{cap}"


def cost(quick: bool) -> None:
    """The price of the user as the unit: seconds of a fit of user-level DP-SGD beside
    record-level DP-SGD on the same records (the many-users training split, the 32-unit
    MLP), with the same expected number of records per step, for the ``bk`` engine and
    Opacus' hooks; 1 epoch (set-up included: the kept-record draw sorts every record once
    per fit) and 3 epochs."""
    from privdl import PrivateTrainer

    train, _test, _n = make_regime("many", 0, quick)
    X, y, owner = train
    n_users = len(np.unique(owner))
    records_per_step = 2048
    users_per_step = max(1, round(records_per_step * n_users / len(X)))  # every record kept (cap 60)
    print(f"cost: {len(X):,} records of {n_users:,} users, MLP {D}-32-1, about "
          f"{records_per_step} records per step ({users_per_step} users at user level)")
    for mode in ("bk", "hooks"):
        for epochs in (1, 3):
            seconds = {}
            for unit in ("record", "user"):
                user = unit == "user"
                runs = []
                for _ in range(2):  # the best of two fits (the first pays one-time set-up)
                    t = PrivateTrainer(
                        make_model("few", 0),
                        epsilon=EPSILON,
                        delta=DELTA if user else 1 / (10 * len(X)),  # below 1/n at record level
                        epochs=epochs,
                        batch_size=users_per_step if user else records_per_step,
                        grad_sample_mode=mode,
                        seed=0,
                        progress=False,
                        **({"privacy_unit": "user", "max_records_per_user": K} if user else {}),
                    )
                    t0 = time.perf_counter()
                    t.fit((X, y), **({"users": owner} if user else {}))
                    runs.append(time.perf_counter() - t0)
                seconds[unit] = min(runs)
            per = {u: s_ / (len(X) * epochs) * 1e6 for u, s_ in seconds.items()}
            print(f"  {mode:<6} {epochs} epoch(s)  record-level {seconds['record']:6.2f} s "
                  f"({per['record']:.1f} us/record)   user-level {seconds['user']:6.2f} s "
                  f"({per['user']:.1f} us/record)   user/record {seconds['user'] / seconds['record']:.2f}x"
                  " | issue: close to record level")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="4,000 users in the many-users regime")
    ap.add_argument("--fixed", action="store_true", help="no selection: batch 1/20, lr 0.02, 10 epochs, cap 60")
    ap.add_argument("--regimes", default="many,few", help="comma-separated: many, few")
    ap.add_argument("--no-cost", action="store_true", help="skip the cost comparison")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    eps_r, delta_r = group_calibration()
    print(f"user-level target (epsilon={EPSILON}, delta={DELTA}); group route: record-level "
          f"(eps_r={eps_r:.4g}, delta_r={delta_r:.3g}) over k={K} records per person")
    print(f"test AUC per user, mean +- standard error over {args.seeds} seed(s)")
    print(
        f"{'regime':<32}{'user-level':>17}{'group k=60':>17}{'group k chosen':>17}{'non-private':>17}{'(sklearn)':>17}"
        "   user-level eps (trainer)"
    )
    regimes = (("many", "many users (20,000, logistic)"), ("few", "few users (2,000, MLP)"))
    for name, label in regimes:
        if name not in args.regimes.split(","):
            continue
        rows = {"user": [], "group": [], "groupk": [], "none": [], "ref": []}
        eps = []
        t0 = time.perf_counter()
        chosen = {route: FIXED for route in ("user", "group", "groupk", "none")} if args.fixed else select(name, args.quick)
        t_select = time.perf_counter() - t0
        print(f"{'':<32}chosen (batch fraction/lr/epochs): " + ", ".join(describe(r, hp) for r, hp in chosen.items()))
        for seed in range(args.seeds):
            train, test, n_users = make_regime(name, seed, args.quick)
            u = train_route("user", name, train, seed, chosen["user"])
            rows["user"].append(user_auc(u.model_, test))
            eps.append(u.epsilon)
            rows["group"].append(user_auc(train_route("group", name, train, seed, chosen["group"]).model_, test))
            rows["groupk"].append(user_auc(train_route("groupk", name, train, seed, chosen["groupk"]).model_, test))
            rows["none"].append(user_auc(train_route("none", name, train, seed, chosen["none"]), test))
            rows["ref"].append(user_auc(reference(name, train, seed), test))
        if name == "many" and args.quick:
            label = f"many users ({n_users:,}, logistic)"
        stat = {k: mean_se(v) for k, v in rows.items()}
        cells = "".join(f"{f'{m:.4f} +- {se:.4f}':>17}" for m, se in (stat[k] for k in ("user", "group", "groupk", "none", "ref")))
        print(
            f"{label:<32}{cells}   {statistics.mean(eps):.3f}   "
            f"(select {t_select:.0f} s, total {time.perf_counter() - t0:.0f} s)"
        )
        mean = {k: v[0] for k, v in stat.items()}
        # against the better of the two non-private models (the stricter comparison)
        gap = (max(mean["none"], mean["ref"]) - mean["user"]) * 100
        print(f"{'':<32}goal: user within 3 points of non-private: {gap:.1f} points "
              f"({'met' if gap <= 3 else 'MISSED'})")
        for other, what in (("group", "group k=60"), ("groupk", "group k chosen")):
            lead, lead_se = mean_se([(u - g) * 100 for u, g in zip(rows["user"], rows[other])])
            within = "within" if abs(lead) <= lead_se else "outside"
            print(f"{'':<32}goal: never below {what}: user - group {lead:+.2f} +- {lead_se:.2f} points, paired "
                  f"({'met' if lead >= 0 else 'MISSED'}; {within} one standard error of 0)"
                  + (f"; goal >= 10: {'met' if lead >= 10 else 'MISSED'}" if name == "few" else ""))
    if not args.no_cost:
        cost(args.quick)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
