"""The serialization contract, implemented once.

Every report and value has ``to_dict()`` (plain JSON-compatible data), ``to_json()``
(that data as a JSON string with sorted keys), ``from_dict(data)`` and
``from_json(text)``, which reads the JSON string or its already parsed dict (a saved
``.json`` file loaded with :func:`json.load`). :class:`JSONSerializable` gives a class
``to_json`` and ``from_json`` from its ``to_dict`` and ``from_dict``, and those two as
well for a frozen dataclass of plain data. It is built on :func:`json_text` and
:func:`json_mapping`, which a class whose ``from_json`` takes more arguments (an
encrypted scorer needs its public keys) calls directly.

The JSON layout of each class is part of its file format (reports, manifests and
scorer files are diffed, hashed and read by other tools), so the options are kept
per class: ``_json_indent`` (``None`` for one compact line) and ``_json_allow_nan``
(``False`` where a NaN would make a file other JSON readers refuse).

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Point(JSONSerializable):
    ...     _json_kind = "point"
    ...     x: int
    >>> Point(1).to_json()
    '{"x": 1}'
    >>> Point.from_json('{"x": 1}') == Point.from_json({"x": 1}) == Point(1)
    True
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from privdl.errors import InputError, PrivdlError

if TYPE_CHECKING:
    from typing import Self

__all__ = ["JSONSerializable", "json_mapping", "json_text"]


def json_text(data: Any, *, indent: int | None = None, allow_nan: bool = True) -> str:
    """``data`` as a JSON string with sorted keys (stable: equal data, equal text).

    Args:
        data: plain JSON-compatible data (a ``to_dict()`` result).
        indent: spaces per level, or ``None`` for one compact line.
        allow_nan: write NaN and infinities as JavaScript literals; when ``False`` they
            raise :class:`ValueError` instead (strict JSON).
    """
    return json.dumps(data, sort_keys=True, indent=indent, allow_nan=allow_nan)


def json_mapping(
    text: str | bytes | Mapping[str, Any],
    *,
    kind: str,
    error: type[InputError] = InputError,
) -> Mapping[str, Any]:
    """A JSON object given as text, or an already parsed mapping, as a mapping.

    Args:
        text: a JSON string (or its UTF-8 bytes), or the parsed mapping itself.
        kind: what the object should be, for the message (``"risk report"``).
        error: the :class:`~privdl.errors.InputError` subclass to raise.

    Raises:
        InputError: (or ``error``) ``text`` is not JSON, or not a JSON object; the
            message names the kind, never the text.
    """
    if isinstance(text, str | bytes | bytearray):
        try:
            text = json.loads(text)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise error(f"not a privdl {kind}: not JSON") from exc
    if not isinstance(text, Mapping):
        raise error(f"not a privdl {kind}: not a JSON object")
    return text


class JSONSerializable:
    """Mixin: ``to_json`` / ``from_json`` from a class's ``to_dict`` / ``from_dict``.

    A frozen dataclass of plain data needs neither of those: the defaults here copy its
    fields out (:func:`dataclasses.asdict`) and back in (unknown keys are ignored, so a
    file written by a newer version still loads). Set on the class, as plain class attributes (a dataclass does not take them for
    fields):

    * ``_json_kind``: what the class is, for error messages (default: its name);
    * ``_json_indent``: ``None`` (one line, the default) or spaces per level;
    * ``_json_allow_nan``: ``True`` (the default) or ``False`` for strict JSON;
    * ``_json_error``: the :class:`~privdl.errors.InputError` subclass raised on bad
      input (default ``InputError``).
    """

    _json_kind: ClassVar[str] = ""
    _json_indent: ClassVar[int | None] = None
    _json_allow_nan: ClassVar[bool] = True
    _json_error: ClassVar[type[InputError]] = InputError

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON-compatible data: the dataclass's fields, copied."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`to_dict` output (fields the class does not know are ignored).

        Raises:
            InputError: not a mapping, or a field without a default is missing.
        """
        kind = cls._json_kind or cls.__name__
        if not isinstance(data, Mapping):
            raise cls._json_error(f"not a privdl {kind}: not a JSON object")
        names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
        try:
            return cls(**{name: data[name] for name in names if name in data})
        except TypeError as exc:
            raise cls._json_error(f"not a privdl {kind}") from exc

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string (sorted keys)."""
        return json_text(self.to_dict(), indent=self._json_indent, allow_nan=self._json_allow_nan)

    @classmethod
    def from_json(cls, text: str | bytes | Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`to_json` output: the JSON string, or its parsed dict.

        Raises:
            InputError: not JSON, not an object, or not this kind of object (the
                class's own error, a subclass of :class:`~privdl.errors.InputError`,
                where it has one).
        """
        kind = cls._json_kind or cls.__name__
        data = json_mapping(text, kind=kind, error=cls._json_error)
        try:
            return cls.from_dict(data)
        except PrivdlError:
            raise  # already says what is wrong
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise cls._json_error(f"not a privdl {kind}") from exc


class ReadByName:
    """Read access to a frozen dataclass's fields by name: ``value["name"]``,
    ``value.get("name")`` and ``"name" in value`` (for code written when the value was a
    dict in a report)."""

    def __getitem__(self, name: str) -> Any:
        if name in self.__dataclass_fields__:  # type: ignore[attr-defined]
            return getattr(self, name)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return name in self.__dataclass_fields__  # type: ignore[attr-defined]

    def get(self, name: str, default: Any = None) -> Any:
        """Read a field by name, as :meth:`dict.get`."""
        return getattr(self, name) if name in self else default
