"""Generate examples/data/users.csv: a raw user export of a media service (synthetic).

Every person in it is invented (seeded random draws from name, city and ZIP lists), but
the shape is that of a real export: direct identifiers (user_id, email, full_name,
phone, ip), dates, quasi-identifiers (sex, age, zip, city) and behaviour (plays per
week) with a retention label that depends on them, so the retention workflow has a
signal to learn.

    python examples/make_users.py [--rows 2000] [--seed 7] [-o examples/data/users.csv]
"""

from __future__ import annotations

import argparse
from datetime import date, timedelta
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
    "Priya",
]
LAST = [
    "Schmidt",
    "Garcia",
    "Rossi",
    "Nowak",
    "Dubois",
    "Jensen",
    "Silva",
    "Novak",
    "Horvat",
    "Kowalski",
    "Moreau",
    "Fischer",
    "Costa",
    "Andersen",
    "Weber",
    "Martin",
    "Lopez",
    "Meyer",
    "Ricci",
    "Janssen",
    "Berg",
    "Kaya",
    "Ivanova",
    "Byrne",
    "Lindqvist",
]
CITIES = {  # city -> ZIP prefix (3 digits) and phone area code
    "Berlin": ("101", "30"),
    "Hamburg": ("204", "40"),
    "Munich": ("803", "89"),
    "Cologne": ("506", "221"),
    "Frankfurt": ("603", "69"),
    "Stuttgart": ("701", "711"),
    "Leipzig": ("041", "341"),
    "Dresden": ("010", "351"),
}
DOMAINS = ["example.com", "mail.example", "post.example.org", "web.example.net"]


def generate(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    first = rng.choice(FIRST, rows)
    last = rng.choice(LAST, rows)
    city_names = list(CITIES)
    city = rng.choice(city_names, rows, p=[0.25, 0.15, 0.15, 0.1, 0.1, 0.1, 0.08, 0.07])
    age = np.clip(rng.gamma(6.0, 6.0, rows).astype(int) + 16, 16, 90)
    sex = rng.choice(["female", "male", "diverse"], rows, p=[0.49, 0.49, 0.02])
    today = date(2026, 11, 1)
    birth = [
        today - timedelta(days=int(a * 365.25 + d))
        for a, d in zip(age, rng.integers(0, 365, rows), strict=True)
    ]
    signup = [today - timedelta(days=int(d)) for d in rng.integers(30, 1500, rows)]
    zips = [CITIES[c][0] + f"{z:02d}" for c, z in zip(city, rng.integers(0, 100, rows), strict=True)]
    phones = [
        f"+49 {CITIES[c][1]} {n // 10000:04d}{n % 10000:04d}"[:18]
        for c, n in zip(city, rng.integers(10_000_000, 99_999_999, rows), strict=True)
    ]
    ips = [f"10.{a}.{b}.{c}" for a, b, c in rng.integers(0, 255, (rows, 3))]
    user_id = [f"u{n:07d}" for n in rng.choice(9_000_000, rows, replace=False) + 1_000_000]
    email = [
        f"{f.lower()}.{s.lower()}{n}@{d}"
        for f, s, n, d in zip(first, last, rng.integers(1, 999, rows), rng.choice(DOMAINS, rows), strict=True)
    ]
    engagement = rng.gamma(2.0, 1.0, rows)
    plays1 = rng.poisson(engagement * 6)
    plays2 = rng.poisson(engagement * 5 * np.where(age < 30, 1.1, 0.9))
    logit = -2.2 + 0.22 * plays2 + 0.08 * plays1 - 0.012 * (age - 40) + np.where(city == "Berlin", 0.3, 0.0)
    retained = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            "user_id": user_id,
            "email": email,
            "full_name": [f"{f} {s}" for f, s in zip(first, last, strict=True)],
            "phone": phones,
            "ip": ips,
            "birth_date": [d.isoformat() for d in birth],
            "signup_date": [d.isoformat() for d in signup],
            "sex": sex,
            "age": age,
            "zip": zips,
            "city": city,
            "plays_week1": plays1,
            "plays_week2": plays2,
            "retained": retained,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "data" / "users.csv")
    args = parser.parse_args()
    generate(args.rows, args.seed).to_csv(args.output, index=False)
    print(f"wrote {args.rows} rows to {args.output}")


if __name__ == "__main__":
    main()
