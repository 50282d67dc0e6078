"""Model specifications sized when the trainer knows its input: ``logistic``, ``mlp:64,32``.

A :class:`TabularModel` stands for a model whose input width is not known before the
training table has been encoded (the encoder's vocabularies may come from a DP
estimate). Pass one as ``PrivateTrainer(model=...)``; ``fit`` builds the module from the
encoded width and the encoder's label set (never from counting the training labels)::

    PrivateTrainer(TabularModel.parse("mlp:64,32"), epsilon=2.0).fit(frame, target="y")

``logistic`` is one ``Linear`` layer; ``mlp:H1,H2,...`` adds hidden ``Linear`` + ``ReLU``
layers of those widths. A binary (or regression) target gets one output, a target with
``k > 2`` classes ``k`` outputs. Both are ``nn.Sequential`` of standard layers, so a saved
model folder rebuilds without code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from privdl.errors import UsageError

__all__ = ["TabularModel"]

_MAX_WIDTH = 65536


@dataclass(frozen=True)
class TabularModel:
    """A logistic regression or an MLP, built by ``PrivateTrainer.fit`` for the encoded table.

    Attributes:
        kind: ``"logistic"`` or ``"mlp"``.
        hidden: the hidden layer widths (MLP only).
    """

    kind: str
    hidden: tuple[int, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> TabularModel:
        """``"logistic"`` or ``"mlp:64,32"``.

        Raises:
            UsageError: another spelling (the message names the accepted ones).
        """
        text = str(spec).strip().lower()
        if text in ("logistic", "linear"):
            return cls("logistic")
        name, _, widths = text.partition(":")
        if name == "mlp":
            try:
                hidden = tuple(int(w) for w in widths.split(",") if w.strip())
            except ValueError:
                hidden = ()
            if hidden and all(0 < w <= _MAX_WIDTH for w in hidden):
                return cls("mlp", hidden)
        raise UsageError(f"--model {spec!r}: use logistic or mlp:H1,H2 (hidden widths, e.g. mlp:64,32)")

    def __str__(self) -> str:
        return "logistic" if self.kind == "logistic" else "mlp:" + ",".join(map(str, self.hidden))

    def build(self, n_features: int, n_classes: int | None) -> Any:
        """The ``nn.Sequential`` for ``n_features`` inputs; ``n_classes`` from the
        encoder's label set (``None``: a regression target, one output)."""
        from torch import nn

        outputs = 1 if n_classes is None or n_classes <= 2 else int(n_classes)
        layers: list[Any] = []
        width = int(n_features)
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, outputs))
        return nn.Sequential(*layers)
