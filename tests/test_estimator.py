"""EstimatorParams: scikit-learn's get_params / set_params from the __init__ signature."""

from __future__ import annotations

from typing import ClassVar

import pytest

from privdl.errors import UsageError
from privdl.estimator import EstimatorParams, param_names


class Inner(EstimatorParams):
    def __init__(self, depth=2):
        self.depth = depth


class Outer(EstimatorParams):
    _param_attributes: ClassVar[dict[str, str]] = {"epsilon": "target_epsilon"}

    def __init__(self, inner=None, *, epsilon=1.0, label="x"):
        self.inner = inner
        self.target_epsilon = epsilon
        self.label = label

    @property
    def epsilon(self):  # the spent figure, not the parameter
        return 0.0


def test_names_from_the_signature_and_a_renamed_attribute():
    assert param_names(Outer) == ["inner", "epsilon", "label"]
    o = Outer(Inner(3), epsilon=2.0)
    assert o.get_params(deep=False) == {"inner": o.inner, "epsilon": 2.0, "label": "x"}
    assert o.get_params()["inner__depth"] == 3


def test_set_params_nested_and_unknown():
    o = Outer(Inner())
    assert o.set_params(epsilon=5.0, inner__depth=7, label="y") is o
    assert o.target_epsilon == 5.0 and o.inner.depth == 7 and o.label == "y" and o.epsilon == 0.0
    with pytest.raises(UsageError, match="no parameter 'nope'"):
        o.set_params(nope=1)
    with pytest.raises(ValueError, match="no parameters of its own"):
        Outer(inner=3).set_params(inner__depth=1)


def test_sklearn_clone_works_on_it():
    clone = pytest.importorskip("sklearn.base").clone
    o = Outer(Inner(4), epsilon=3.0)
    twin = clone(o)
    assert twin is not o and twin.inner is not o.inner and twin.get_params()["inner__depth"] == 4
    assert twin.target_epsilon == 3.0
