"""The Anonymizer as a scikit-learn transformer: clone, parameters, Pipeline, set_output."""

from __future__ import annotations

import pandas as pd
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer  # noqa: E402
from sklearn.utils import estimator_checks as checks  # noqa: E402

from privdl import Anonymizer, Policy  # noqa: E402
from privdl.errors import InputError, NotFittedError, UsageError  # noqa: E402


def policy():
    return Policy(identifiers=["email", "user_id"], quasi_identifiers=["age"], drop=["ip"], k=2)


def test_clone_and_params(key):
    anonymizer = Anonymizer(policy(), key=key, engine="pandas")
    params = anonymizer.get_params()
    assert set(params) == {"policy", "key", "engine", "audit_log"}  # from the signature
    assert params["policy"] is anonymizer.policy and params["key"] is key
    twin = clone(anonymizer)
    assert twin is not anonymizer and twin.policy is anonymizer.policy and twin.key is key
    assert anonymizer.set_params(engine="spark") is anonymizer and anonymizer.engine == "spark"
    with pytest.raises(UsageError, match="no parameter 'k'"):
        anonymizer.set_params(k=3)
    # the audit record is its own method and holds the key's id only
    assert anonymizer.params_record()["key_id"] == key.key_id


@pytest.mark.parametrize(
    "check",
    [
        checks.check_get_params_invariance,
        checks.check_set_params,
        checks.check_no_attributes_set_in_init,
        checks.check_estimator_cloneable,
        checks.check_estimator_repr,
        checks.check_do_not_raise_errors_in_init_or_set_params,
    ],
)
def test_sklearn_estimator_checks(check, key):
    check("Anonymizer", Anonymizer(policy(), key=key))


def test_not_fitted_before_a_release(users, key):
    anonymizer = Anonymizer(policy(), key=key)
    with pytest.raises(NotFittedError, match="report_"):
        anonymizer.report_
    with pytest.raises(NotFittedError):
        anonymizer.transform(users)
    from sklearn.utils.validation import check_is_fitted

    with pytest.raises(sklearn.exceptions.NotFittedError):
        check_is_fitted(anonymizer)
    anonymizer.fit(users)
    check_is_fitted(anonymizer)
    assert anonymizer.n_features_in_ == len(users.columns)
    assert "report_" not in vars(anonymizer)  # fit releases nothing


def test_fit_then_transform_releases_the_table(users, key):
    anonymizer = Anonymizer(policy(), key=key).fit(users)
    released = anonymizer.transform(users)
    assert "ip" not in released.columns and set(released["email"]).isdisjoint(users["email"])
    assert released.groupby("age", dropna=False).size().min() >= 2  # k=2 holds in the release
    assert list(anonymizer.get_feature_names_out()) == list(released.columns)
    with pytest.raises(InputError, match="lacks column 'ip'"):
        anonymizer.transform(users.drop(columns=["ip"]))


def test_pipeline_step_with_pandas_output(users, key):
    keep_numbers = FunctionTransformer(lambda frame: frame.select_dtypes("number"))
    pipe = Pipeline([("anonymize", Anonymizer(policy(), key=key)), ("numbers", keep_numbers)])
    pipe.set_output(transform="pandas")
    out = pipe.fit_transform(users)
    assert isinstance(out, pd.DataFrame) and len(out) == len(users)
    assert pipe.named_steps["anonymize"].report_.to_dict()  # the release has its report
    assert "email" not in out.columns and "ip" not in out.columns
    # a clone of the pipeline is unfitted and releases the same way
    again = clone(pipe).fit_transform(users)
    pd.testing.assert_frame_equal(again, out)
    with pytest.raises(UsageError, match="polars"):
        Anonymizer(policy(), key=key).set_output(transform="polars")
