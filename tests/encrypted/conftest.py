"""Shared fixtures for the encrypted-scoring tests (real TenSEAL, real models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("tenseal")

ADULT = Path("/work/shared/data/adult/adult.csv")
FIXTURE = Path(__file__).parents[1] / "data" / "encrypted_adult_sample.csv"

#: Adult-derived features: age and indicators, 20 in all (the retention model's shape).
ADULT_FEATURES = [
    "age",
    "sex=Male",
    "race=White",
    "race=Black",
    "marital-status=Married-civ-spouse",
    "marital-status=Never-married",
    "marital-status=Divorced",
    "education=Bachelors",
    "education=HS-grad",
    "education=Some-college",
    "education=Masters",
    "workclass=Private",
    "workclass=Self-emp-not-inc",
    "workclass=Local-gov",
    "occupation=Exec-managerial",
    "occupation=Prof-specialty",
    "occupation=Craft-repair",
    "occupation=Adm-clerical",
    "occupation=Sales",
    "native-country=United-States",
]


@pytest.fixture(scope="session")
def features() -> list[str]:
    return list(ADULT_FEATURES)


@pytest.fixture(scope="session")
def adult() -> pd.DataFrame:
    """The Adult table (full when the shared copy exists, else the small fixture)."""
    path = ADULT if ADULT.exists() else FIXTURE
    return pd.read_csv(path, sep=";")


@pytest.fixture(scope="session")
def adult_xy(adult: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    from privdl.encrypted.packing import feature_matrix

    x = feature_matrix(adult, ADULT_FEATURES)
    y = (adult["salary-class"].astype(str).str.strip() == ">50K").to_numpy().astype(int)
    return x, y


@pytest.fixture(scope="session")
def keys():
    from privdl.encrypted.keys import HEKeys

    return HEKeys.generate()


@pytest.fixture(scope="session")
def deep_keys():
    """Keys for a one-hidden-layer MLP with a degree-2 activation (depth 4)."""
    from privdl.encrypted.keys import HEKeys

    return HEKeys.generate(depth=4)
