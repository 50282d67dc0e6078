"""TableEncoder learns nothing from private data in silence and never stores identifiers
(issue 10, point 4): identifier screening, DP domains, and their place in the run's budget."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privdl.budget.accounting import epsilon_of
from privdl.errors import BudgetExceededError, InputError
from privdl.train.encoding import HASH_BUCKETS, TableEncoder, _bucket

WORDS = [
    "the",
    "customer",
    "called",
    "twice",
    "about",
    "billing",
    "and",
    "asked",
    "for",
    "a",
    "refund",
    "on",
    "the",
    "annual",
    "plan",
]


def _table(users: pd.DataFrame, key) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """A released table as the README trains on: pseudonyms, plus raw identifiers and
    free text that a careless export left in."""
    from privdl.anonymize.anonymizer import Anonymizer
    from privdl.anonymize.policy import Policy

    raw = users.copy()
    rng = np.random.default_rng(3)
    raw["notes"] = [" ".join(rng.choice(WORDS, size=8)) + f" ticket {i}" for i in range(len(raw))]
    raw["contact"] = raw["email"]  # an e-mail column under a name that says nothing
    released = Anonymizer(
        Policy(identifiers=["user_id", "email:pseudonymize:normalize=email"], drop=["ip"]), key=key
    ).fit_transform(raw)
    released["full_name"] = raw["full_name"].to_numpy()  # raw names
    released["phone"] = raw["phone"].to_numpy()  # raw phone numbers
    return released


def _secrets(frame: pd.DataFrame, raw: pd.DataFrame) -> list[str]:
    """Every identifier and free-text value of the table, raw and pseudonymized."""
    values: set[str] = set()
    for col in ("user_id", "email", "full_name", "phone", "contact", "notes"):
        values.update(str(v) for v in frame[col].dropna())
    for col in ("user_id", "email", "full_name", "phone"):
        values.update(str(v) for v in raw[col].dropna())
    return sorted(values)


def test_identifiers_and_identifier_like_columns_are_excluded_with_a_warning(users, key) -> None:
    released = _table(users, key)
    with pytest.warns(UserWarning, match="not used as features") as record:
        enc = TableEncoder(
            numeric_bounds={"age": (0, 100), "plays_week1": (0, 60), "plays_week2": (0, 60)},
            categories={"sex": ["female", "male"], "retained": [0, 1]},
            domains="policy",
            features=None,
        ).fit(released[["user_id", "email", "full_name", "phone", "contact", "notes",
                        "sex", "age", "plays_week1", "plays_week2", "retained"]],
              target="retained")  # fmt: skip
    message = " ".join(str(w.message) for w in record)
    for col in ("user_id", "email", "full_name", "phone", "contact", "notes"):
        assert col in enc.excluded_ and repr(col) in message
    assert {s["name"] for s in enc.columns_} == {"sex", "age", "plays_week1", "plays_week2"}
    assert enc.excluded_["notes"] == "free text"
    assert "notes" in enc.screened_ and "sex" not in enc.screened_  # named columns are not
    assert enc.excluded_["contact"] == "e-mail addresses"
    assert "pseudonym" in enc.excluded_["user_id"]
    # the warning names columns and kinds, never a value
    assert not any(v in message for v in _secrets(released, users))


def test_policy_identifiers_are_excluded_whatever_their_transform() -> None:
    from privdl.anonymize.policy import Policy

    policy = Policy(identifiers=["card:mask", "born:shift_dates:by=card"], keep=["plan"])
    frame = pd.DataFrame({"card": ["**12", "**34"], "born": ["1990-01-01", "1991-02-02"], "plan": ["a", "b"]})
    with pytest.warns(UserWarning, match="an identifier in the policy"):
        enc = TableEncoder(policy, categories={"plan": ["a", "b"]}).fit(frame)
    assert [s["name"] for s in enc.columns_] == ["plan"]
    with pytest.raises(InputError, match="'card' cannot be a feature: an identifier in the policy"):
        TableEncoder(policy, features=["card", "plan"], categories={"plan": ["a", "b"]}).fit(frame)


@pytest.mark.parametrize(
    ("column", "kind"),
    [("contact", "e-mail"), ("phone", "phone"), ("notes", "free text"), ("user_id", "pseudonym")],
)
def test_naming_an_identifier_like_column_as_a_feature_stops_the_fit(users, key, column, kind) -> None:
    released = _table(users, key)
    with pytest.raises(InputError) as info:
        TableEncoder(features=[column, "sex"], categories={"sex": ["female", "male"]}).fit(released)
    message = str(info.value)
    assert f"{column!r} cannot be a feature" in message and kind in message
    assert not any(v in message for v in _secrets(released, users))
    with pytest.raises(InputError, match=f"{column!r} cannot be a feature"):
        TableEncoder(categories={column: ["x"], "sex": ["female", "male"]}).fit(released[[column, "sex"]])


@pytest.mark.parametrize("domains", ["dp", "learned-unprotected"])
def test_no_identifier_or_free_text_value_reaches_the_model_folder(users, key, tmp_path, domains) -> None:
    """The README flow: fit(released, target=...) with no encoder, then save."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("opacus")
    from privdl.train.trainer import PrivateTrainer

    released = _table(users, key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # fitted first to size the model, as a user does; the trainer charges its estimate
        enc = TableEncoder(domains=domains).fit(released, target="retained")
        tr = PrivateTrainer(torch.nn.Linear(len(enc.feature_names_), 1), epsilon=3.0, epochs=1,
                            batch_size=64, progress=False, encoder=enc)  # fmt: skip
        tr.fit(released, target="retained")
    folder = tr.save(tmp_path / "model")
    blob = b"".join(p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file())
    leaked = [v for v in _secrets(released, users) if v.encode() in blob]
    assert leaked == [], f"{len(leaked)} identifier values in the model folder"
    assert set(tr.encoder_.excluded_) >= {"user_id", "email", "full_name", "phone", "contact", "notes"}
    assert tr.domain_source_ == domains
    # the trainer's own default encoder follows domains=
    with pytest.raises(InputError, match="no public domain"):
        PrivateTrainer(torch.nn.Linear(2, 1), epsilon=3.0, domains="policy", progress=False).fit(
            released[["sex", "retained"]], target="retained"
        )


def test_policy_mode_refuses_columns_without_a_public_domain() -> None:
    frame = pd.DataFrame({"income": [10.0, 20.0, 30.0], "city": ["x", "y", "x"], "y": [0, 1, 0]})
    with pytest.raises(InputError) as info:
        TableEncoder(domains="policy", categories={"y": [0, 1]}).fit(frame, target="y")
    assert "'income', 'city'" in str(info.value) and "numeric_bounds=" in str(info.value)
    with pytest.raises(InputError, match="no public domain for column\\(s\\) 'y'"):
        TableEncoder(domains="policy", features=[]).fit(frame, target="y")


def test_text_labels_need_a_public_label_set() -> None:
    frame = pd.DataFrame({"f": [1.0, 2.0], "y": ["no", "yes"]})
    with pytest.raises(InputError, match="text labels and no public label set"):
        TableEncoder(numeric_bounds={"f": (0, 5)}).fit(frame, target="y")


def _big_frame(n: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    city = rng.choice(["Berlin", "Hamburg", "Munich"], size=n, p=[0.5, 0.3, 0.2]).astype(object)
    city[:3] = ["Tinytown", "Smallville", "Nowhere"]  # one record each: must not survive
    return pd.DataFrame(
        {
            "city": city,
            "age": rng.integers(18, 90, size=n),
            "plays": [f"{a}-{a + 4}" for a in rng.integers(0, 50, size=n)],  # released ranges
            "y": rng.integers(0, 2, size=n),
        }
    )


def test_dp_domains_keep_frequent_values_drop_rare_ones_and_store_no_text() -> None:
    frame = _big_frame()
    with pytest.warns(UserWarning, match="estimated with differential privacy"):
        enc = TableEncoder(domain_epsilon=1.0, domain_delta=1e-6).fit(frame, target="y")
    assert enc.domain_source_ == "dp"
    # one Gaussian histogram per column (city, age, plays, y), one shared noise multiplier
    ((sigma, q, m),) = enc.domain_history_
    assert (q, m) == (1.0, 4) and sigma > 1
    assert epsilon_of(enc.domain_history_, delta=1e-6) <= 1.0
    assert enc.classes_ == ["0", "1"]
    city = enc.columns_[0]
    assert city["source"] == "dp" and city["hashed"]["buckets"] == HASH_BUCKETS
    kept = set(city["values"])
    assert {_bucket(c, HASH_BUCKETS) for c in ("Berlin", "Hamburg", "Munich")} <= kept
    assert not {_bucket(c, HASH_BUCKETS) for c in ("Tinytown", "Smallville", "Nowhere")} & kept
    text = enc.to_json()
    for value in ("Berlin", "Hamburg", "Munich", "Tinytown", "Smallville", "Nowhere"):
        assert value not in text
    X = enc.transform(frame)
    names = enc.feature_names_
    other = names.index("city=(other)")
    assert X[:3, other].tolist() == [1.0, 1.0, 1.0]  # the singletons are "other"
    cols = [j for j, n in enumerate(names) if n.startswith("city=")]
    berlin = X[np.ix_(np.flatnonzero(frame["city"] == "Berlin"), cols)]
    assert (berlin == berlin[0]).all() and berlin[0].sum() == 1.0 and berlin[0, cols.index(other)] == 0.0
    # numeric bounds on the public power-of-two grid, wide enough for the bulk
    age = enc.columns_[1]
    assert age["source"] == "dp" and (age["low"], age["high"]) == (16.0, 128.0)
    plays = enc.columns_[2]
    assert plays["low"] <= 2 and plays["high"] == 64.0
    assert " | ".join(enc.dp_domains_).count("(DP") == 4


def test_learned_unprotected_is_explicit_and_listed() -> None:
    frame = _big_frame(200)
    with pytest.warns(UserWarning, match="without differential privacy"):
        enc = TableEncoder(domains="learned-unprotected").fit(frame, target="y")
    assert enc.domain_source_ == "learned-unprotected" and enc.domain_history_ == []
    learned = " | ".join(enc.data_dependent_)
    assert "city: category vocabulary" in learned and "y: class labels" in learned
    assert "Tinytown" in enc.to_json()  # what "unprotected" means: listed, and reported


def test_version_1_encoders_still_load() -> None:
    enc = TableEncoder(numeric_bounds={"a": (0, 1)}).fit(pd.DataFrame({"a": [0.5]}))
    old = json.loads(enc.to_json())
    old["version"] = 1
    for k in ("dp_domains", "domain_source", "domain_history", "domain_epsilon", "domain_delta", "excluded"):
        old.pop(k)
    old["data_dependent"] = ["a: numeric range (min/max) taken from the training data"]
    back = TableEncoder.from_json(json.dumps(old))
    assert back.domain_source_ == "learned-unprotected" and back.domain_history_ == []


# -- in the trainer: charged, composed, and before the noise is drawn ------------------


def _trainer_frame(n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    plan = rng.choice(["basic", "plus", "pro"], size=n)
    return pd.DataFrame({"plan": plan, "age": rng.integers(18, 80, size=n), "y": (plan == "pro").astype(int)})


def test_trainer_charges_dp_domains_and_composes_them_into_epsilon(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("opacus")
    from privdl.budget.ledger import BudgetLedger
    from privdl.train.trainer import PrivateTrainer

    frame = _trainer_frame()
    ledger = BudgetLedger(tmp_path / "budget.db")
    ledger.set_budget("ds", epsilon=8.0, delta=1e-4)
    enc = TableEncoder(categories={"plan": ["basic", "plus", "pro"]})  # age, y: no public domain
    tr = PrivateTrainer(torch.nn.Linear(8, 1), epsilon=2.0, epochs=2, batch_size=64, encoder=enc,
                        ledger=ledger, dataset_id="ds", progress=False)  # fmt: skip
    with pytest.warns(UserWarning, match="estimated with differential privacy"):
        tr.fit(frame, target="y")
    ((sigma_d, q_d, m),) = tr.domain_history_
    assert (q_d, m) == (1.0, 2) and tr.domain_source_ == "dp"
    # the accountant's record of the run: the domain estimate, then DP-SGD
    assert tr.accountant_history_[0] == (sigma_d, 1.0, 2)
    assert tr.accountant_history_[1][0] == tr.noise_multiplier_
    sgd_alone = epsilon_of(tr.accountant_history_[1:], delta=tr.delta_)
    assert sgd_alone < tr.epsilon <= 2.0 * 1.001  # both together meet the target
    # the domain share on its own (a fifth of 2.0), and charged to the ledger first
    assert epsilon_of(tr.domain_history_, delta=tr.delta_) <= 0.4 * 1.001
    runs = ledger.runs("ds")
    assert [r.model_name for r in runs] == ["TableEncoder domains", "Linear"]
    assert runs[0].run_id == tr.domain_run_id_ == enc.domain_run_id_
    assert ledger.spent("ds") == pytest.approx(tr.epsilon, rel=1e-6)
    # saved and loaded, the model keeps where its domains came from
    back = PrivateTrainer.load(tr.save(tmp_path / "m"), model=torch.nn.Linear(8, 1))
    assert back.domain_source_ == "dp" and back.domain_history_ == tr.domain_history_
    assert back.epsilon == pytest.approx(tr.epsilon)


def test_a_refused_domain_estimate_draws_no_noise_and_fits_nothing(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("opacus")
    from privdl.budget.ledger import BudgetLedger
    from privdl.train.trainer import PrivateTrainer

    ledger = BudgetLedger(tmp_path / "budget.db")
    ledger.set_budget("ds", epsilon=0.1, delta=1e-4)
    enc = TableEncoder(domain_epsilon=0.5)  # more than the dataset's whole budget
    tr = PrivateTrainer(torch.nn.Linear(6, 1), epsilon=0.09, encoder=enc, ledger=ledger,
                        dataset_id="ds", progress=False)  # fmt: skip
    with pytest.raises(BudgetExceededError):
        tr.fit(_trainer_frame(), target="y")
    assert not hasattr(enc, "columns_") and tr.encoder_ is None
    assert ledger.runs("ds") == []


def test_a_policy_only_table_spends_nothing_on_domains(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("opacus")
    from privdl.train.trainer import PrivateTrainer

    enc = TableEncoder(
        numeric_bounds={"age": (0, 100)}, categories={"plan": ["basic", "plus", "pro"], "y": [0, 1]}
    )
    tr = PrivateTrainer(torch.nn.Linear(8, 1), epsilon=2.0, epochs=1, batch_size=64, encoder=enc,
                        progress=False)  # fmt: skip
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tr.fit(_trainer_frame(), target="y")
    assert not [w for w in record if "TableEncoder" in str(w.message)]  # nothing estimated
    assert tr.domain_source_ == "policy" and tr.domain_history_ == []
    assert len(tr.accountant_history_) == 1
