"""The accountant's record of a run: frozen :class:`Segment` and :class:`History` values.

A run of DP-SGD with Poisson sampling is described by its *history*: segments
``(noise_multiplier, sample_rate, steps)``, in order (Opacus' ``accountant.history``).
The ledger stores histories, the trainer records one, the accountants compose them and
the reports print them: this module is the one place a segment is validated.

Both values are tuples, so plain ``(sigma, q, steps)`` tuples and lists are accepted
wherever a history is, ``for sigma, q, steps in history`` keeps working, and they
serialize to JSON as ``[[sigma, q, steps], ...]``.

Example:
    >>> history = History([(1.1, 0.01, 3000), (2.0, 0.01, 0)])
    >>> history
    History([Segment(noise_multiplier=1.1, sample_rate=0.01, steps=3000)])
    >>> history == [(1.1, 0.01, 3000)]
    True
    >>> [steps for _, _, steps in history]
    [3000]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, SupportsIndex, overload

from privdl.errors import PrivacyParameterError

__all__ = ["History", "Segment", "normalize_history"]


class _SegmentFields(NamedTuple):
    noise_multiplier: float
    sample_rate: float
    steps: int


class Segment(_SegmentFields):
    """``steps`` steps of DP-SGD at one noise multiplier and Poisson sampling rate.

    A validated, immutable 3-tuple: ``sigma, q, steps = segment`` unpacks it.

    Args:
        noise_multiplier: noise standard deviation over the clipping norm, >= 0, finite.
        sample_rate: Poisson sampling rate q, in [0, 1] (q = 0 releases nothing).
        steps: number of steps, a non-negative integer.

    Raises:
        PrivacyParameterError: a field is out of range or not a number.
    """

    __slots__ = ()

    def __new__(cls, noise_multiplier: Any, sample_rate: Any, steps: Any) -> Segment:
        try:
            sigma, q, n = float(noise_multiplier), float(sample_rate), float(steps)
        except (TypeError, ValueError):
            raise PrivacyParameterError("a segment is not (noise_multiplier, sample_rate, steps)") from None
        if not n.is_integer() or n < 0:
            raise PrivacyParameterError("steps must be a non-negative integer")
        if not (math.isfinite(sigma) and sigma >= 0):
            raise PrivacyParameterError("noise_multiplier must be >= 0 and finite")
        if not 0.0 <= q <= 1.0:
            raise PrivacyParameterError("sample_rate must be in [0, 1]")
        return super().__new__(cls, sigma, q, int(n))

    @classmethod
    def of(cls, value: Sequence[Any]) -> Segment:
        """A segment from a ``(noise_multiplier, sample_rate, steps)`` tuple or list.

        Raises:
            PrivacyParameterError: not three values, or a value out of range.
        """
        if isinstance(value, Segment):
            return value
        try:
            sigma, q, steps = value
        except (TypeError, ValueError):
            raise PrivacyParameterError("a segment is not (noise_multiplier, sample_rate, steps)") from None
        return cls(sigma, q, steps)

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Segment:  # type: ignore[override]
        # namedtuple's _make (and so _replace) would bypass the validation above
        return cls.of(tuple(iterable))

    def _replace(self, **changes: Any) -> Segment:
        return Segment(**{**self._asdict(), **changes})


class History(tuple[Segment, ...]):
    """An accountant history: validated :class:`Segment` values, in order.

    Segments with zero steps are dropped (they release nothing); nothing else is
    merged or reordered. A history compares equal to a tuple or list of the same
    segments, so ``ledger.history(ds) == [(1.0, 0.01, 100)]`` holds; ``+`` and slices
    give histories.

    Args:
        segments: ``(noise_multiplier, sample_rate, steps)`` tuples, lists or segments.

    Raises:
        PrivacyParameterError: a segment is malformed or out of range; the message
            names its position (``history segment 2: ...``).
    """

    __slots__ = ()

    def __new__(cls, segments: Iterable[Sequence[Any]] = ()) -> History:
        if isinstance(segments, History):
            return segments
        out: list[Segment] = []
        for pos, seg in enumerate(segments):
            try:
                segment = Segment.of(seg)
            except PrivacyParameterError as exc:
                detail = str(exc)
                if detail.startswith("a segment is not"):
                    raise PrivacyParameterError(
                        f"history segment {pos} is not (noise_multiplier, sample_rate, steps)"
                    ) from None
                raise PrivacyParameterError(f"history segment {pos}: {detail}") from None
            if segment.steps > 0:
                out.append(segment)
        return super().__new__(cls, out)

    @property
    def steps(self) -> int:
        """Total number of steps over every segment."""
        return sum(seg.steps for seg in self)

    def to_list(self) -> list[list[float | int]]:
        """The JSON shape: ``[[noise_multiplier, sample_rate, steps], ...]``."""
        return [list(seg) for seg in self]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, tuple):
            return tuple.__eq__(self, other)
        if isinstance(other, list):
            return tuple.__eq__(self, tuple(other))
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = tuple.__hash__

    def __add__(self, other: Iterable[Sequence[Any]]) -> History:  # type: ignore[override]
        return History([*self, *History(other)])

    @overload
    def __getitem__(self, index: SupportsIndex) -> Segment: ...
    @overload
    def __getitem__(self, index: slice) -> History: ...
    def __getitem__(self, index: SupportsIndex | slice) -> Segment | History:
        if isinstance(index, slice):
            return History(tuple.__getitem__(self, index))
        return tuple.__getitem__(self, index)

    def __repr__(self) -> str:
        return f"History([{', '.join(map(repr, self))}])"

    def __getnewargs__(self) -> tuple[tuple[Segment, ...]]:
        return (tuple(self),)


def normalize_history(history: Iterable[Sequence[Any]]) -> History:
    """Validate a history given as ``(noise_multiplier, sample_rate, steps)`` segments.

    The same as :class:`History` ``(history)``, kept under its earlier name.

    Raises:
        PrivacyParameterError: a segment is malformed or out of range.
    """
    return History(history)
