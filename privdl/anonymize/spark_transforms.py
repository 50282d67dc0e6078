"""Identifier transforms on a Spark DataFrame, as vectorized pandas UDFs.

Every transform of :mod:`privdl.anonymize.pseudonymize` runs unchanged inside a
scalar pandas UDF (one Arrow batch at a time, never one Python call per row), so a
pseudonym, an AES-SIV token, a mask or a shifted date is byte-identical to the pandas
engine's for the same key. ``drop`` is a column projection.

Keys: the executors need key material to compute keyed tokens. They receive only the
per-purpose keys a rule needs (``pseudonymize[/domain]``, ``encrypt[/domain]``,
``shift_dates[/domain]``, derived on the driver with HKDF), never the master key: a
stolen executor key pseudonymizes for that purpose and domain only. On a cluster,
turn on Spark's RPC authentication and encryption (``spark.authenticate``,
``spark.network.crypto.enabled``), since the UDF closures travel over it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from privdl.anonymize.pseudonymize import _purpose, apply_rule
from privdl.errors import PolicyError
from privdl.keys import Secret

__all__ = ["PurposeKeys", "transform_identifiers"]


class PurposeKeys:
    """The derived keys one rule needs, standing in for the master key on executors.

    ``derive(purpose, length=...)`` returns the key the master key would derive, for
    the purposes computed on the driver only; any other purpose is refused. It pickles
    (a :class:`~privdl.keys.Secret` does not), holding derived bytes only, and its
    ``repr`` shows no key material.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[tuple[str, int], bytes]) -> None:
        self._keys = dict(keys)

    @classmethod
    def for_rule(cls, key: Secret, transform: str, options: Mapping[str, Any]) -> PurposeKeys:
        """Derive, on the driver, exactly the keys ``transform`` asks of its key."""
        domain = {"domain": str(options.get("domain", "") or "")}
        wanted: list[tuple[str, int]] = []
        if transform in ("pseudonymize", "shift_dates"):
            wanted.append((_purpose("pseudonymize", domain), 32))
        if transform == "shift_dates":
            wanted.append((_purpose("shift_dates", domain), 32))
        if transform == "encrypt":
            wanted.append((_purpose("encrypt", domain), 64))
        return cls({(p, n): key.derive(p, length=n).reveal() for p, n in wanted})

    def derive(self, purpose: str, *, length: int = 32) -> Secret:
        """The derived key for ``purpose`` (only those computed by :meth:`for_rule`)."""
        try:
            return Secret(self._keys[(purpose, length)], source=f"derived/{purpose}")
        except KeyError:
            raise PolicyError(f"no derived key for purpose {purpose!r} on this executor") from None

    def __repr__(self) -> str:
        return f"PurposeKeys(<{len(self._keys)} derived keys>)"


def _udf(
    column: str,
    transform: str,
    options: Mapping[str, Any],
    keys: PurposeKeys | None,
    inputs: list[str],
    return_type: Any,
) -> Any:
    from pyspark.sql.functions import pandas_udf

    opts = dict(options)
    as_text = isinstance(return_type, str) and return_type == "string"

    def apply(series: list[pd.Series]) -> pd.Series:
        frame = pd.DataFrame({name: s for name, s in zip(inputs, series, strict=True)})
        out = apply_rule(frame, column, transform, opts, keys)  # type: ignore[arg-type]
        assert out is not None
        return out.astype(object).where(out.notna(), None) if as_text else out

    # pandas UDFs need a fixed arity: one column, or the date and its person
    if len(inputs) == 1:

        def one(a: pd.Series) -> pd.Series:
            return apply([a])

        return pandas_udf(one, return_type)  # type: ignore[call-overload]

    def two(a: pd.Series, b: pd.Series) -> pd.Series:
        return apply([a, b])

    return pandas_udf(two, return_type)  # type: ignore[call-overload]


def transform_identifiers(sdf: Any, policy: Any, key: Secret | None) -> Any:
    """``sdf`` with the policy's identifier rules applied and dropped columns removed.

    Every new column is computed from the *original* columns (one projection), so a
    ``shift_dates`` keyed by ``user_id`` uses the raw id even when ``user_id`` is
    pseudonymized too, as in the pandas engine. Lazy: nothing runs until an action.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    dtypes = {f.name: f.dataType for f in sdf.schema.fields}
    replaced: dict[str, Any] = {}
    dropped = set(policy.drop)
    for rule in policy.identifiers:
        if rule.transform == "drop":
            dropped.add(rule.column)
            continue
        keys = PurposeKeys.for_rule(key, rule.transform, rule.options) if key is not None else None
        inputs = [rule.column]
        return_type: Any = "string"
        col = F.col(f"`{rule.column}`")
        args = [col]
        if rule.transform == "shift_dates":
            by = rule.options.get("by")
            if not by:
                raise PolicyError(f"column {rule.column!r}: shift_dates needs by=<person id column>")
            if str(by) not in dtypes:
                raise PolicyError(f"column {rule.column!r}: shift_dates by={by!r} is not a column")
            inputs.append(str(by))
            args.append(F.col(f"`{by}`"))
            kind = dtypes[rule.column]
            if isinstance(kind, T.TimestampType | T.TimestampNTZType):
                return_type = kind
            elif isinstance(kind, T.DateType):
                args[0] = col.cast("timestamp")
                return_type = T.TimestampType()
        udf = _udf(rule.column, rule.transform, rule.options, keys, inputs, return_type)
        value = udf(*args)
        if isinstance(dtypes[rule.column], T.DateType) and rule.transform == "shift_dates":
            value = value.cast("date")
        replaced[rule.column] = value
    return sdf.select(
        *[
            (replaced[c].alias(c) if c in replaced else F.col(f"`{c}`"))
            for c in sdf.columns
            if c not in dropped
        ]
    )
