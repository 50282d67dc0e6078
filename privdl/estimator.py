"""scikit-learn's estimator contract, without importing scikit-learn.

:class:`EstimatorParams` gives a class ``get_params(deep=True)`` and ``set_params(**params)``
whose names come from its ``__init__`` signature, as ``sklearn.base.BaseEstimator``
derives them, so a parameter added to ``__init__`` later is included without a list to
keep up to date. The constructor must store each parameter untouched, under its own
name or under the attribute named in ``_param_attributes`` (``PrivateTrainer`` keeps
``epsilon=`` as ``target_epsilon``, since ``trainer.epsilon`` is the epsilon spent).
``sklearn.base.clone``, ``GridSearchCV`` and ``Pipeline`` then work on it.

The data wing uses it too (``Anonymizer``), so nothing here imports scikit-learn,
torch or pandas.

Example:
    >>> from privdl.estimator import EstimatorParams
    >>> class Scaler(EstimatorParams):
    ...     def __init__(self, factor=2.0, *, shift=0.0):
    ...         self.factor, self.shift = factor, shift
    >>> Scaler(factor=3.0).set_params(shift=1.0).get_params()
    {'factor': 3.0, 'shift': 1.0}
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from privdl.errors import UsageError

__all__ = ["EstimatorParams", "param_names"]


def param_names(cls: type) -> list[str]:
    """The parameter names of ``cls.__init__`` (no ``self``, ``*args`` or ``**kwargs``)."""
    init = cls.__init__
    if init is object.__init__:
        return []
    params = inspect.signature(init).parameters.values()
    return [
        p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


class EstimatorParams:
    """``get_params`` / ``set_params`` from the ``__init__`` signature (scikit-learn's
    ``BaseEstimator`` contract)."""

    #: parameter name -> the attribute ``__init__`` stores it in, where they differ
    _param_attributes: ClassVar[dict[str, str]] = {}
    #: scikit-learn's kind: ``"transformer"`` or ``"supervised"`` (needs ``y``)
    _sklearn_kind: ClassVar[str] = "supervised"

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's estimator tags (scikit-learn is imported only when it asks)."""
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        transformer = self._sklearn_kind == "transformer"
        return Tags(
            estimator_type=None,
            target_tags=TargetTags(required=not transformer),
            transformer_tags=TransformerTags() if transformer else None,
            # DP noise and Poisson sampling: two fits never give the same model
            non_deterministic=not transformer,
            input_tags=InputTags(
                two_d_array=True, string=transformer, categorical=True, allow_nan=transformer
            ),
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters, as stored (``deep``: also ``name__sub`` for
        parameters that are estimators themselves, as scikit-learn's)."""
        out: dict[str, Any] = {}
        for name in param_names(type(self)):
            value = getattr(self, self._param_attributes.get(name, name))
            if deep and _is_estimator(value):
                out.update((f"{name}__{k}", v) for k, v in value.get_params(deep=True).items())
            out[name] = value
        return out

    def set_params(self, **params: Any) -> Any:
        """Set constructor parameters (``name__sub`` reaches into a nested estimator).

        Raises:
            UsageError: a name that is not a parameter (also a ``ValueError``, as
                scikit-learn raises).
        """
        if not params:
            return self
        valid = param_names(type(self))
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in valid:
                raise UsageError(
                    f"{type(self).__name__} has no parameter {name!r} (parameters: {', '.join(valid)})"
                )
            if sub:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, self._param_attributes.get(name, name), value)
        for name, sub_params in nested.items():
            inner = getattr(self, self._param_attributes.get(name, name))
            if not _is_estimator(inner):
                raise UsageError(f"parameter {name!r} of {type(self).__name__} has no parameters of its own")
            inner.set_params(**sub_params)
        return self


def _is_estimator(value: Any) -> bool:
    """An object following the contract (``get_params(deep=...)`` and ``set_params``)."""
    return not isinstance(value, type) and callable(getattr(value, "set_params", None)) and callable(
        getattr(value, "get_params", None)
    )
