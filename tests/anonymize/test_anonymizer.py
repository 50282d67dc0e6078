import pandas as pd
import pytest

from privdl import Anonymizer, Policy
from privdl.errors import KeyMissingError, PolicyError, UsageError


def test_input_frame_is_never_modified(users, key):
    before = users.copy(deep=True)
    released = Anonymizer(Policy(identifiers=["email", "user_id"], drop=["ip"]), key=key).fit_transform(users)
    pd.testing.assert_frame_equal(users, before)
    assert "ip" not in released.columns and list(released.columns)[:2] == ["user_id", "email"]


def test_shift_dates_uses_original_ids_before_they_are_pseudonymized(users, key):
    policy = Policy(identifiers=["user_id", "birth_date:shift_dates:by=user_id,max_days=10"])
    released = Anonymizer(policy, key=key).fit_transform(users)
    delta = (pd.to_datetime(released["birth_date"]) - pd.to_datetime(users["birth_date"])).dt.days
    assert delta.abs().between(1, 10).all()
    # same offsets as shifting directly by the raw id column
    from privdl.anonymize.pseudonymize import date_offsets

    assert (delta.to_numpy() == date_offsets(users["user_id"], key=key, max_days=10)).all()


def test_subjects_are_pseudonyms_of_the_subject_column(users, key):
    anonymizer = Anonymizer(Policy(identifiers=["user_id", "email"]), key=key)
    released = anonymizer.fit_transform(users)
    assert anonymizer.subjects_ == sorted(set(released["user_id"]))
    assert set(anonymizer.subjects_).isdisjoint(users["user_id"])


def test_errors(users, key):
    with pytest.raises(KeyMissingError, match="email"):
        Anonymizer(Policy(identifiers=["email"])).fit_transform(users)
    with pytest.raises(PolicyError, match="'nope'"):
        Anonymizer(Policy(identifiers=["nope"]), key=key).fit_transform(users)
    with pytest.raises(UsageError, match="engine"):
        Anonymizer(Policy(identifiers=["email"]), key=key, engine="dask").fit_transform(users)


def test_repr_and_params_hold_only_the_key_id(users, key):
    anonymizer = Anonymizer(Policy(identifiers=["email"]), key=key)
    anonymizer.fit_transform(users)
    raw = key.reveal().hex()
    texts = (repr(anonymizer), str(anonymizer.get_params()), str(anonymizer.params_record()))
    for text in (*texts, str(anonymizer.report_.to_json())):
        assert raw not in text and raw[:12] not in text
    assert anonymizer.params_record()["key_id"] == key.key_id
    assert key.key_id in str(anonymizer.report_.to_json())


def test_identifier_only_report_lists_passthrough(users, key):
    anonymizer = Anonymizer(Policy(identifiers=["email"], keep=["age"]), key=key)
    anonymizer.fit_transform(users)
    payload = anonymizer.report_.to_dict()
    assert "plays_week1" in payload["passthrough"] and "age" not in payload["passthrough"]
    assert any("ip" in w for w in anonymizer.warnings_)
