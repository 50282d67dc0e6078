"""The anonymization policy: which column plays which role, and the targets to meet.

A :class:`Policy` is a frozen value. Build it in Python, load it from TOML, or let the
CLI build it from flags; :meth:`Policy.get_params` is what goes into audit records.

TOML layout (every section optional)::

    k = 10                       # or under [privacy]: k, l, l_kind, t, max_suppression
    strict = true                # every column of the data must have a role
    quasi_identifiers = ["age", "zip", "sex"]
    sensitive = ["diagnosis"]
    keep = ["plays_week1"]
    drop = ["ip"]
    algorithm = "mondrian"

    [identifiers]
    email = { transform = "pseudonymize", normalize = "email" }
    full_name = "pseudonymize"
    phone = { transform = "mask", keep_last = 4 }
    birth_date = { transform = "shift_dates", by = "user_id", max_days = 30 }

    [hierarchies]
    zip = "prefix"
    education = "adult_hierarchy_education.csv"   # relative to the TOML file

Roles: ``identifiers`` (direct identifiers, each with a transform), ``quasi_identifiers``
(generalized until k-anonymous), ``sensitive`` (kept, checked for l-diversity /
t-closeness), ``keep`` (released unchanged: the user asserts the column is not
linkable), ``drop`` (removed). A column may have one role only, with one exception: a
``shift_dates`` identifier may also be a quasi-identifier, which shifts it first and
then generalizes the shifted dates (``shift_dates`` alone is not generalization: a
date moved by at most 30 days still singles a person out).

Columns with no role pass through unchanged and are listed in the report; dates,
free text and high-cardinality ones among them are *linkable* and the report measures
the risk with them added to the quasi-identifiers. With ``strict`` every column of the
data must have a role (as every attribute gets a type in ARX); an unassigned column is
a :class:`~privdl.errors.PolicyError` naming it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from privdl.anonymize.pseudonymize import NORMALIZERS, TRANSFORMS
from privdl.errors import InputError, PolicyError

__all__ = ["ALGORITHMS", "IdentifierRule", "Policy"]

ALGORITHMS = ("mondrian", "global")
L_KINDS = ("distinct", "entropy")


@dataclass(frozen=True)
class IdentifierRule:
    """One direct identifier and the transform applied to it.

    Args:
        column: column name.
        transform: ``pseudonymize`` (default), ``encrypt``, ``mask``, ``redact``, ``drop``
            or ``shift_dates``.
        options: transform options (``normalize``, ``domain``, ``keep_last``, ``char``,
            ``by``, ``max_days``).
    """

    column: str
    transform: str = "pseudonymize"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise PolicyError(
                f"column {self.column!r}: unknown transform {self.transform!r};"
                f" choose one of {', '.join(sorted(TRANSFORMS))}"
            )
        unknown = sorted(set(self.options) - TRANSFORMS[self.transform])
        if unknown:
            raise PolicyError(
                f"column {self.column!r}: option {unknown[0]!r} does not apply to {self.transform}"
            )
        normalize = self.options.get("normalize", "none")
        if normalize not in NORMALIZERS:
            raise PolicyError(
                f"column {self.column!r}: unknown normalize {normalize!r};"
                f" choose one of {', '.join(NORMALIZERS)}"
            )
        for name in ("keep_last", "max_days"):
            if name in self.options:
                try:
                    value = int(self.options[name])
                except (TypeError, ValueError):
                    raise PolicyError(f"column {self.column!r}: {name} must be an integer") from None
                if value < (1 if name == "max_days" else 0):
                    raise PolicyError(f"column {self.column!r}: {name} is out of range")
        if self.transform == "shift_dates" and not self.options.get("by"):
            raise PolicyError(f"column {self.column!r}: shift_dates needs by=<person id column>")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @classmethod
    def parse(cls, spec: str) -> IdentifierRule:
        """Parse the CLI form ``COL[:TRANSFORM[:OPT=VALUE[,OPT=VALUE...]]]``.

        Example:
            >>> IdentifierRule.parse("phone:mask:keep_last=2").options["keep_last"]
            2
        """
        parts = spec.split(":", 2)
        column = parts[0].strip()
        if not column:
            raise PolicyError(f"--id {spec!r}: no column name")
        transform = parts[1].strip() if len(parts) > 1 and parts[1].strip() else "pseudonymize"
        options: dict[str, Any] = {}
        if len(parts) > 2:
            for item in parts[2].split(","):
                if not item.strip():
                    continue
                name, sep, value = item.partition("=")
                if not sep:
                    raise PolicyError(f"--id {column}: option {item.strip()!r} needs NAME=VALUE")
                value = value.strip()
                options[name.strip()] = int(value) if value.lstrip("-").isdigit() else value
        return cls(column, transform, options)

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "transform": self.transform, **dict(self.options)}


def _names(value: Any, role: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise PolicyError(f"{role} must be a list of column names")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise PolicyError(f"{role}: column names must be non-empty strings")
    return items


def _rules(value: Any) -> tuple[IdentifierRule, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if isinstance(value, Mapping):
        rules = []
        for column, spec in value.items():
            if isinstance(spec, str):
                rules.append(IdentifierRule(column, spec))
            elif isinstance(spec, Mapping):
                opts = dict(spec)
                transform = opts.pop("transform", "pseudonymize")
                rules.append(IdentifierRule(column, transform, opts))
            else:
                raise PolicyError(f"identifiers: entry for {column!r} must be a transform or a table")
        return tuple(rules)
    if not isinstance(value, Iterable):
        raise PolicyError("identifiers must be a list of column names or a table of column = transform")
    rules = []
    for item in value:
        if isinstance(item, IdentifierRule):
            rules.append(item)
        elif isinstance(item, str):
            rules.append(IdentifierRule.parse(item))
        else:
            raise PolicyError("identifiers: expected column names or IdentifierRule values")
    return tuple(rules)


@dataclass(frozen=True)
class Policy:
    """Column roles and anonymization targets (a frozen value).

    Args:
        identifiers: direct identifiers: column names (pseudonymized), ``"COL:TRANSFORM"``
            strings, a mapping column → transform / options, or :class:`IdentifierRule` s.
        quasi_identifiers: columns generalized until every record shares its values
            with at least ``k - 1`` others.
        sensitive: columns kept as they are and checked for l-diversity / t-closeness.
        keep: columns released unchanged on the user's assertion that an attacker cannot
            link on them (silences the identifier and linkable-column warnings; listed
            in the report as asserted by the user).
        drop: columns removed from the release.
        k: k-anonymity target (needs ``quasi_identifiers``).
        l: l-diversity target for every sensitive column (``l_kind`` distinct or entropy).
        t: t-closeness target (earth mover's distance, 0 < t <= 1).
        max_suppression: share of records that may be suppressed (0 <= f < 1).
        hierarchies: column → generalization spec (``"prefix"``, ``"interval:10"``,
            ``"date"`` or an ARX hierarchy CSV path, relative to ``base_dir``).
        algorithm: ``"mondrian"`` (local recoding, default) or ``"global"``.
        subject_id: the column that identifies a data subject (for erasure requests);
            defaults to the first pseudonymized identifier.
        base_dir: folder against which relative hierarchy paths resolve.
        strict: every column of the data must have a role; :meth:`validate` raises
            :class:`~privdl.errors.PolicyError` naming the columns without one.

    Example:
        >>> p = Policy(identifiers=["email"], quasi_identifiers=["age"], k=5)
        >>> p.identifier_columns
        ('email',)
    """

    identifiers: tuple[IdentifierRule, ...] = ()
    quasi_identifiers: tuple[str, ...] = ()
    sensitive: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    k: int | None = None
    l: int | None = None  # noqa: E741 - the literature's name
    l_kind: str = "distinct"
    t: float | None = None
    max_suppression: float = 0.0
    hierarchies: Mapping[str, str] = field(default_factory=dict)
    algorithm: str = "mondrian"
    subject_id: str | None = None
    base_dir: Path | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "identifiers", _rules(self.identifiers))
        for role in ("quasi_identifiers", "sensitive", "keep", "drop"):
            set_(self, role, _names(getattr(self, role), role))
        from privdl.anonymize.hierarchy import check_spec  # numpy/pandas only when needed

        if self.hierarchies is not None and not isinstance(self.hierarchies, Mapping):
            raise PolicyError("hierarchies must be a table of column = spec")
        hier = dict(self.hierarchies or {})
        for column, spec in hier.items():
            if not isinstance(spec, str | os.PathLike) or not str(spec):
                raise PolicyError(f"hierarchy for column {column!r} must be a spec string or path")
            if isinstance(spec, str):
                check_spec(spec, column=column)
        set_(self, "hierarchies", MappingProxyType({c: os.fspath(s) for c, s in hier.items()}))
        if self.base_dir is not None:
            set_(self, "base_dir", Path(self.base_dir))
        if not isinstance(self.strict, bool):
            raise PolicyError("strict must be true or false")
        self._check_roles()
        self._check_targets()

    # -- checks -----------------------------------------------------------------------
    def _check_roles(self) -> None:
        seen: dict[str, str] = {}
        shifted = set(self.shifted_columns)
        for role, columns in self.roles().items():
            for column in columns:
                if column in seen:
                    if column in shifted and {seen[column], role} == {"identifiers", "quasi_identifiers"}:
                        continue  # shift first, then generalize the shifted dates
                    if seen[column] == role:
                        raise PolicyError(f"column {column!r} is listed twice as {role}")
                    raise PolicyError(f"column {column!r} has two roles: {seen[column]} and {role}")
                seen[column] = role
        for column in self.hierarchies:
            if column not in self.quasi_identifiers:
                raise PolicyError(f"hierarchy given for column {column!r}, which is not a quasi-identifier")
        if self.subject_id is not None and self.subject_id not in self.identifier_columns:
            raise PolicyError(f"subject_id {self.subject_id!r} is not an identifier column")

    def _check_targets(self) -> None:
        def _int(name: str, value: Any) -> int | None:
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PolicyError(f"{name} must be an integer >= 1")
            return value

        _int("k", self.k)
        _int("l", self.l)
        if self.l_kind not in L_KINDS:
            raise PolicyError(f"l_kind must be one of {', '.join(L_KINDS)}")
        if self.t is not None and not (isinstance(self.t, int | float) and 0 < self.t <= 1):
            raise PolicyError("t must be a number with 0 < t <= 1")
        if not (isinstance(self.max_suppression, int | float) and 0 <= self.max_suppression < 1):
            raise PolicyError("max_suppression must be a share with 0 <= f < 1")
        if self.algorithm not in ALGORITHMS:
            raise PolicyError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
        if self.quasi_identifiers and self.k is None:
            raise PolicyError("quasi-identifiers are given but no k: set k (e.g. -k 5)")
        if self.k is not None and not self.quasi_identifiers:
            raise PolicyError("k is set but no quasi-identifiers are given (--qi COL)")
        if (self.l is not None or self.t is not None) and not self.sensitive:
            raise PolicyError("l-diversity / t-closeness need a sensitive column (--sensitive COL)")
        if (self.l is not None or self.t is not None) and not self.quasi_identifiers:
            raise PolicyError("l-diversity / t-closeness need quasi-identifiers (--qi COL)")

    def roles(self) -> dict[str, tuple[str, ...]]:
        """Role name → columns, in a fixed order."""
        return {
            "identifiers": tuple(r.column for r in self.identifiers),
            "quasi_identifiers": self.quasi_identifiers,
            "sensitive": self.sensitive,
            "keep": self.keep,
            "drop": self.drop,
        }

    @property
    def identifier_columns(self) -> tuple[str, ...]:
        return tuple(r.column for r in self.identifiers)

    @property
    def shifted_columns(self) -> tuple[str, ...]:
        """Identifier columns transformed with ``shift_dates``."""
        return tuple(r.column for r in self.identifiers if r.transform == "shift_dates")

    @property
    def named_columns(self) -> tuple[str, ...]:
        """Every column the policy gives a role to (each once)."""
        return tuple(dict.fromkeys(c for cols in self.roles().values() for c in cols))

    @property
    def needs_key(self) -> bool:
        from privdl.anonymize.pseudonymize import KEYED

        return any(r.transform in KEYED for r in self.identifiers)

    @property
    def subject_column(self) -> str | None:
        """The column whose pseudonyms identify data subjects (for erasure requests)."""
        if self.subject_id is not None:
            return self.subject_id
        for rule in self.identifiers:
            if rule.transform == "pseudonymize":
                return rule.column
        return None

    def validate(self, columns: Iterable[str], *, source: str = "the data") -> None:
        """Check that every column the policy names exists (and, if strict, has a role).

        Raises:
            PolicyError: naming the first missing column, or (strict) every column of
                the data without a role.
        """
        columns = list(columns)
        present = set(columns)
        for column in self.named_columns:
            if column not in present:
                raise PolicyError(f"column {column!r} is named in the policy but not found in {source}")
        for rule in self.identifiers:
            by = rule.options.get("by")
            if by is not None and by not in present:
                raise PolicyError(f"column {by!r} (by= of {rule.column!r}) not found in {source}")
        if self.strict:
            unassigned = self.passthrough(columns)
            if unassigned:
                names = ", ".join(repr(c) for c in unassigned)
                raise PolicyError(
                    f"strict policy: column(s) {names} of {source} have no role; give each one"
                    " --id, --qi, --sensitive, --drop or --keep (keep = you assert it is not linkable)"
                )

    def passthrough(self, columns: Iterable[str]) -> list[str]:
        """Columns of the data that have no role: released unchanged."""
        named = set(self.named_columns)
        return [c for c in columns if c not in named]

    def __sklearn_clone__(self) -> Policy:
        """``sklearn.base.clone`` of an estimator holding this policy: a frozen value is
        its own clone (its ``get_params`` is the audit record, not constructor params)."""
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Policy:
        return self  # a frozen value (its mappings are read-only views) copies as itself

    # -- serialization ----------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Plain-data description for audit records and reports (holds no key)."""
        return {
            "identifiers": [r.to_dict() for r in self.identifiers],
            "quasi_identifiers": list(self.quasi_identifiers),
            "sensitive": list(self.sensitive),
            "keep": list(self.keep),
            "drop": list(self.drop),
            "k": self.k,
            "l": self.l,
            "l_kind": self.l_kind,
            "t": self.t,
            "max_suppression": self.max_suppression,
            "hierarchies": dict(self.hierarchies),
            "algorithm": self.algorithm,
            "subject_id": self.subject_column,
            "strict": self.strict,
        }

    to_json = get_params

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: Path | None = None) -> Policy:
        """Build from the TOML / JSON structure documented in the module docstring."""
        data = dict(data)
        privacy = data.pop("privacy", {}) or {}
        if not isinstance(privacy, Mapping):
            raise PolicyError("[privacy] must be a table")
        data.update(privacy)
        allowed = {f.name for f in fields(cls)} - {"base_dir"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise PolicyError(f"unknown policy setting {unknown[0]!r}")
        for role in ("quasi_identifiers", "sensitive", "keep", "drop"):
            # a file spells a role as a list: a bare string or number is a mistake, not one column
            if role in data and not (isinstance(data[role], Sequence) and not isinstance(data[role], str)):
                raise PolicyError(f"{role} must be a list of column names")
        if "identifiers" in data and (
            isinstance(data["identifiers"], str) or not isinstance(data["identifiers"], Sequence | Mapping)
        ):
            raise PolicyError("identifiers must be a list of column names or a table of column = transform")
        if (
            "identifiers" in data
            and isinstance(data["identifiers"], Sequence)
            and not isinstance(data["identifiers"], str)
        ):
            items = []
            for item in data["identifiers"]:
                if isinstance(item, Mapping):
                    opts = dict(item)
                    column = opts.pop("column", None)
                    if not column:
                        raise PolicyError("identifiers: each entry needs a column")
                    items.append(IdentifierRule(column, opts.pop("transform", "pseudonymize"), opts))
                else:
                    items.append(item)
            data["identifiers"] = items
        return cls(**data, base_dir=base_dir)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Policy:
        return cls.from_dict(data)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Policy:
        """Load a policy file; relative hierarchy paths resolve against its folder.

        Raises:
            InputError: the file is missing or is not valid TOML (with the line).
            PolicyError: unknown settings or inconsistent roles.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"policy file {p} does not exist") from None
        except (OSError, UnicodeDecodeError):
            raise InputError(f"policy file {p} cannot be read as UTF-8 text") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message names the line and column, not the content
            raise InputError(f"policy file {p} is not valid TOML: {exc}") from None
        try:
            return cls.from_dict(data, base_dir=p.parent.resolve())
        except PolicyError as exc:
            raise PolicyError(f"{p}: {exc}") from None

    def merge(self, **changes: Any) -> Policy:
        """A new policy with roles extended and targets replaced (used by the CLI)."""
        updates: dict[str, Any] = {}
        for role in ("quasi_identifiers", "sensitive", "keep", "drop"):
            extra = _names(changes.pop(role, None), role)
            if extra:
                updates[role] = tuple(getattr(self, role)) + extra
        extra_ids = _rules(changes.pop("identifiers", None))
        if extra_ids:
            updates["identifiers"] = tuple(self.identifiers) + extra_ids
        extra_h = changes.pop("hierarchies", None)
        if extra_h:
            updates["hierarchies"] = {**self.hierarchies, **extra_h}
        # strict=False from a CLI without --strict must not loosen a strict policy file
        if changes.get("strict") is False:
            changes.pop("strict")
        updates.update({k: v for k, v in changes.items() if v is not None})
        return replace(self, **updates)
