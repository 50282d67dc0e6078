"""A seeded, synthetic export of a media service: a user table and an events table.

Every person is invented, but the shape is that of a real export:

* ``users.csv``: one row per subscriber who signed up in the cohort window: direct
  identifiers (``user_id``, ``email``, ``full_name``, ``phone``), demographics
  (``birth_date``, ``sex``, ``city``, ``zip``), ``signup_date``, and the label the
  analytics team computed from the second week: ``retained_week2`` (1 if the user played
  anything on days 7-13 after signing up).
* ``events.csv``: one row per user and active day of the first week (days 0-6): the
  exact ``event_date``, the client ``ip``, the ``platform`` used most that day, and the
  day's ``plays``, ``minutes``, ``skips``, ``searches``, ``likes`` and ``playlist_adds``.

Retention depends on both demographics and activity (so that both matter to a model):
a latent engagement drives the first-week activity; the second-week retention depends
on that engagement *and* on age (a hump: users in their late twenties to forties stay
longer), the city (large cities retain better), the platform, and the week's trend
(activity that fades over the first days predicts churn).

    python examples/retention/make_export.py --users 100000 --seed 2026 --out DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

FIRST = [
    "Anna",
    "Ben",
    "Chloe",
    "David",
    "Emma",
    "Felix",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Klara",
    "Luca",
    "Mia",
    "Noah",
    "Olga",
    "Paul",
    "Rosa",
    "Samir",
    "Tara",
    "Umar",
    "Vera",
    "Wim",
    "Yara",
    "Zoe",
    "Aziz",
    "Lena",
    "Marek",
    "Nora",
    "Oskar",
    "Pia",
    "Rami",
    "Sofia",
    "Timo",
    "Lina",
    "Elif",
    "Mehmet",
    "Leon",
    "Hanna",
    "Jan",
    "Marie",
    "Finn",
    "Emilia",
    "Ali",
    "Sara",
    "Tom",
    "Lea",
    "Nils",
    "Ida",
    "Erik",
    "Maja",
]
LAST = [
    "Muller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
    "Koch",
    "Richter",
    "Klein",
    "Wolf",
    "Neumann",
    "Schwarz",
    "Braun",
    "Zimmermann",
    "Kaya",
    "Yilmaz",
    "Demir",
    "Nowak",
    "Kowalski",
    "Silva",
    "Rossi",
    "Martin",
    "Novak",
    "Horvat",
    "Jansen",
    "Peters",
    "Lange",
    "Krause",
    "Hartmann",
    "Werner",
    "Lehmann",
    "Kraus",
    "Vogel",
    "Frank",
]
# city -> (population weight, ZIP range, phone area code, size class 0 small .. 2 large)
CITIES = {
    "Berlin": (0.20, (10115, 14199), "30", 2),
    "Hamburg": (0.12, (20095, 22769), "40", 2),
    "Munich": (0.11, (80331, 81929), "89", 2),
    "Cologne": (0.08, (50667, 51149), "221", 2),
    "Frankfurt": (0.07, (60306, 60599), "69", 1),
    "Stuttgart": (0.06, (70173, 70629), "711", 1),
    "Dusseldorf": (0.05, (40210, 40629), "211", 1),
    "Leipzig": (0.05, (4103, 4357), "341", 1),
    "Dresden": (0.05, (1067, 1328), "351", 1),
    "Hanover": (0.05, (30159, 30669), "511", 1),
    "Freiburg": (0.04, (79098, 79117), "761", 0),
    "Kiel": (0.04, (24103, 24159), "431", 0),
    "Rostock": (0.03, (18055, 18147), "381", 0),
    "Passau": (0.03, (94032, 94036), "851", 0),
    "Gorlitz": (0.02, (2826, 2828), "3581", 0),
}
PLATFORMS = ("android", "ios", "web", "tv")
DOMAINS = ("example.com", "mail.example", "post.example.org", "web.example.net")
COHORT_START = np.datetime64("2026-09-01")
COHORT_DAYS = 61  # signups from 1 September to 31 October 2026
REFERENCE = np.datetime64("2026-11-15")  # the export date


def generate(users: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (users, events) tables for ``users`` invented subscribers; same seed, same tables."""
    rng = np.random.default_rng(seed)
    n = users
    names = list(CITIES)
    weights = np.array([CITIES[c][0] for c in names])
    city_idx = rng.choice(len(names), n, p=weights / weights.sum())
    city = np.array(names)[city_idx]
    size = np.array([CITIES[c][3] for c in names])[city_idx]
    low = np.array([CITIES[c][1][0] for c in names])[city_idx]
    high = np.array([CITIES[c][1][1] for c in names])[city_idx]
    zips = np.char.zfill((low + (rng.random(n) * (high - low + 1)).astype(int)).astype(str), 5)
    sex = rng.choice(["female", "male", "diverse"], n, p=[0.49, 0.49, 0.02])
    age = np.clip(rng.gamma(5.0, 6.5, n) + 16, 16, 89)
    signup = COHORT_START + rng.integers(0, COHORT_DAYS, n).astype("timedelta64[D]")
    birth = signup - (age * 365.25).astype("timedelta64[D]")

    # platform: younger users are more on phones, older on web and TV
    young = age < 35
    p_platform = np.where(
        young[:, None], np.array([[0.5, 0.35, 0.1, 0.05]]), np.array([[0.35, 0.25, 0.25, 0.15]])
    )
    platform_idx = (rng.random((n, 1)) > np.cumsum(p_platform, axis=1)).sum(axis=1)
    platform_idx = np.minimum(platform_idx, len(PLATFORMS) - 1)

    # latent engagement: activity in the first week
    hump = -(((age - 36.0) / 14.0) ** 2)  # late twenties to forties engage most
    engagement = np.exp(0.35 * hump + 0.15 * size + rng.normal(0.0, 0.55, n))
    fade = rng.beta(2.0, 2.0, n)  # 0: fades fast over the week, 1: stays
    days = np.arange(7)
    decay = np.exp(-np.outer(1.0 - fade, days) * 0.45)  # (n, 7)
    p_active = np.clip(0.25 + 0.5 * engagement[:, None] / (1.0 + engagement[:, None]), 0.05, 0.95) * decay
    p_active[:, 0] = np.maximum(p_active[:, 0], 0.85)  # nearly everyone plays on signup day
    active = rng.random((n, 7)) < p_active
    plays = rng.poisson(2.5 * engagement[:, None] * (0.6 + 0.4 * decay)) * active
    plays = np.where(active & (plays == 0), 1, plays)

    # second-week retention: activity, its trend, and demographics
    week_plays = plays.sum(axis=1)
    active_days = active.sum(axis=1)
    late = plays[:, 4:].sum(axis=1)
    logit = (
        -2.1
        + 0.55 * np.log1p(week_plays)
        + 0.18 * active_days
        + 0.35 * np.log1p(late)
        + 0.9 * hump
        + 0.25 * size
        + np.where(sex == "diverse", -0.2, 0.0)
        + np.array([0.1, 0.25, -0.35, 0.3])[platform_idx]
        + rng.normal(0.0, 0.6, n)
    )
    retained = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)

    first = rng.choice(FIRST, n)
    last = rng.choice(LAST, n)
    user_id = np.char.add("u", (rng.choice(90_000_000, n, replace=False) + 10_000_000).astype(str))
    email = [
        f"{f.lower()}.{s.lower()}{k}@{d}"
        for f, s, k, d in zip(first, last, rng.integers(1, 9999, n), rng.choice(DOMAINS, n), strict=True)
    ]
    area = np.array([CITIES[c][2] for c in names])[city_idx]
    phone = [f"+49 {a} {k}" for a, k in zip(area, rng.integers(1_000_000, 9_999_999, n), strict=True)]
    users_frame = pd.DataFrame(
        {
            "user_id": user_id,
            "email": email,
            "full_name": np.char.add(np.char.add(first, " "), last),
            "phone": phone,
            "birth_date": birth.astype(str),
            "sex": sex,
            "city": city,
            "zip": zips,
            "signup_date": signup.astype(str),
            "retained_week2": retained,
        }
    )

    # events: one row per active user-day
    rows, day = np.nonzero(active)
    k = len(rows)
    p = plays[rows, day]
    # the day's platform: mostly the user's own, sometimes another
    other = rng.integers(0, len(PLATFORMS), k)
    plat = np.where(rng.random(k) < 0.85, platform_idx[rows], other)
    minutes = np.round(p * rng.gamma(3.0, 1.2, k), 1)
    skip_rate = np.clip(0.35 - 0.05 * np.log1p(engagement[rows]) + rng.normal(0, 0.05, k), 0.02, 0.9)
    ip = [f"10.{a}.{b}.{c}" for a, b, c in rng.integers(0, 255, (k, 3))]
    events_frame = pd.DataFrame(
        {
            "user_id": user_id[rows],
            "event_date": (signup[rows] + day.astype("timedelta64[D]")).astype(str),
            "ip": ip,
            "day": day,
            "platform": np.array(PLATFORMS)[plat],
            "plays": p,
            "minutes": minutes,
            "skips": rng.binomial(p, skip_rate),
            "searches": rng.poisson(0.3 + 0.2 * p),
            "likes": rng.binomial(p, np.clip(0.08 * engagement[rows] / (1 + engagement[rows]) * 2, 0, 0.5)),
            "playlist_adds": rng.poisson(0.05 * p),
        }
    )
    order = rng.permutation(k)  # an export is not sorted by user
    return users_frame, events_frame.iloc[order].reset_index(drop=True)


def write(users: int, seed: int, out: Path) -> tuple[Path, Path]:
    """Write ``users.csv`` and ``events.csv`` into ``out``; their paths."""
    users_frame, events_frame = generate(users, seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "users.csv", out / "events.csv"
    users_frame.to_csv(paths[0], index=False)
    events_frame.to_csv(paths[1], index=False)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path("retention-export"))
    args = parser.parse_args()
    users_path, events_path = write(args.users, args.seed, args.out)
    print(f"wrote {users_path} and {events_path}")


if __name__ == "__main__":
    main()
