"""What a trained model's outputs mean for its task: labels, probabilities, loss, metric.

:class:`Predictions` is the inference half of :class:`~privdl.PrivateTrainer`.

The task (``"binary"``: one logit; ``"multiclass"``: one logit per class;
``"regression"``: values) is chosen when the model is prepared
(:func:`~privdl.train.model_prep.infer_task`); these functions read raw outputs (CPU
tensors) under it, for :class:`~privdl.PrivateTrainer`'s ``predict``,
``predict_proba``, ``loss_per_sample``, ``score`` and the per-epoch validation metric.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from privdl._optional import require
from privdl.errors import InputError, NotFittedError, UsageError
from privdl.train.model_prep import make_loss, shape_for_loss

torch: Any = require("torch", "train")

__all__ = [
    "Predictions",
    "encode_target",
    "evaluate",
    "features",
    "labels",
    "metric",
    "per_sample_losses",
    "probabilities",
    "targets",
]


def labels(task: str | None, out: Any) -> Any:
    """Predicted labels (classification) or values (regression), as numpy."""
    if task == "regression":
        return (out.reshape(-1) if out.ndim == 2 and out.shape[1] == 1 else out).numpy()
    if task == "binary":
        return (out.reshape(-1) > 0).long().numpy()
    return out.argmax(dim=1).numpy()


def probabilities(task: str | None, out: Any) -> Any:
    """Class probabilities, shape ``(n, n_classes)``, as numpy (classification only)."""
    if task == "regression":
        raise UsageError("predict_proba is for classification")
    if task == "binary":
        p1 = torch.sigmoid(out.reshape(-1))
        return torch.stack([1 - p1, p1], dim=1).numpy()
    return torch.softmax(out, dim=1).numpy()


def per_sample_losses(loss: Any, task: str | None, out: Any, y: Any) -> Any:
    """Each record's loss under the run's loss (``loss``: as given to the trainer)."""
    out, y = shape_for_loss(task, out, y)
    crit: Any = make_loss(loss, task)
    old = crit.reduction
    crit.reduction = "none"
    try:
        with torch.no_grad():
            losses = crit(out, y)
    finally:
        crit.reduction = old
    if losses.ndim > 1:
        losses = losses.reshape(len(losses), -1).mean(dim=1)
    return losses.numpy()


def metric(task: str | None, out: Any, y: Any) -> tuple[str, float]:
    """``("accuracy", a)`` for classification, ``("neg_mse", -mse)`` for regression."""
    y = y.cpu()
    if task == "regression":
        out = out.reshape(y.shape) if out.numel() == y.numel() else out
        return "neg_mse", -float(((out - y.float()) ** 2).mean())
    pred = (out.reshape(-1) > 0).long() if task == "binary" else out.argmax(dim=1)
    return "accuracy", float((pred == y.long().reshape(-1)).float().mean())


def features(X: Any, encoder: Any) -> Any:
    """Model inputs from ``X`` (array, tensor, ``(X, y)``, or a DataFrame through the
    encoder the model was trained with)."""
    import pandas as pd

    from privdl.train.data import TensorData, as_data

    if isinstance(X, pd.DataFrame):
        if encoder is None:
            raise UsageError("a DataFrame needs the encoder the model was trained with")
        X = encoder.transform(X)
    if isinstance(X, tuple | list) and len(X) == 2:
        X = X[0]
    data = as_data((X, None), what="X")
    assert isinstance(data, TensorData)
    return data.X


def targets(X: Any, y: Any, encoder: Any) -> Any:
    """Targets as a tensor: ``y``, or the column ``y`` of DataFrame ``X`` encoded."""
    import pandas as pd

    from privdl.train.data import to_tensor

    if isinstance(X, pd.DataFrame) and isinstance(y, str):
        if encoder is None:
            raise UsageError("a DataFrame target needs the encoder the model was trained with")
        y = encode_target(encoder, X[y])
    elif isinstance(X, pd.DataFrame) and encoder is not None and not torch.is_tensor(y):
        # scikit-learn's score(X, y): raw labels beside the table, encoded as in fit
        y = encode_target(encoder, y if isinstance(y, pd.Series) else pd.Series(np.asarray(y)))
    return to_tensor(y, what="target")


def encode_target(encoder: Any, series: Any) -> Any:
    """The encoder's integer (or float) labels for a target column."""
    fn = getattr(encoder, "encode_target", None) or encoder.target_encode
    return fn(series)


def evaluate(forward: Any, task: str | None, val: Any) -> tuple[str, float]:
    """The validation metric of the model behind ``forward`` on ``val`` (TensorData or
    IndexedData)."""
    from privdl.train.data import IndexedData

    if isinstance(val, IndexedData):
        loader = torch.utils.data.DataLoader(val.dataset, batch_size=1024, collate_fn=val.collate_fn)
        pairs = [(forward((xb, None)), yb) for xb, yb in loader]
        return metric(task, torch.cat([o for o, _ in pairs]), torch.cat([y for _, y in pairs]))
    assert val.y is not None
    return metric(task, forward((val.X, None)), val.y)


class Predictions:
    """``predict``, ``predict_proba``, ``decision_function``, ``loss_per_sample`` and
    ``score`` of a fitted model (the inference half of :class:`~privdl.PrivateTrainer`).

    Reads the fitted ``model_``, ``task_``, ``n_outputs_``, ``encoder_`` and the
    ``loss`` parameter of the class it is mixed into.
    """

    model_: Any
    task_: str | None
    n_outputs_: int | None
    encoder_: Any
    loss: Any

    def _require_fitted(self) -> Any:
        if self.model_ is None:
            raise NotFittedError("the trainer is not fitted yet: call fit() first")
        return self.model_

    def _forward(self, X: Any, batch: int = 8192) -> Any:
        """Raw outputs (float32, CPU) of the model on ``X``, in batches, eval mode."""
        from privdl.train.data import to_device

        model = self._require_fitted()
        feats = features(X, self.encoder_)
        device = next(model.parameters()).device
        outs = []
        model.eval()
        with torch.no_grad():
            for start in range(0, len(feats), batch):
                outs.append(model(to_device(feats[start : start + batch], device)).float().cpu())
        return torch.cat(outs) if outs else torch.zeros((0, self.n_outputs_ or 1))

    def _evaluate(self, val: Any) -> tuple[str, float]:
        return evaluate(self._forward, self.task_, val)

    def decision_function(self, X: Any) -> np.ndarray:
        """Raw model outputs (logits) as a numpy array."""
        return self._forward(X).numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape ``(n, n_classes)`` (classification only)."""
        if self.task_ == "regression":
            raise UsageError("predict_proba is for classification")
        return probabilities(self.task_, self._forward(X))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (classification) or values (regression)."""
        return labels(self.task_, self._forward(X))

    def loss_per_sample(self, X: Any, y: Any) -> np.ndarray:
        """Per-record loss of the trained model (for membership-inference tests).

        Args:
            X: features (array, tensor, or DataFrame when trained on one).
            y: targets, or the target column name when ``X`` is a DataFrame.
        """
        out = self._forward(X)
        yt = targets(X, y, self.encoder_)
        if len(yt) != len(out):
            raise InputError(f"{len(out)} feature rows but {len(yt)} targets")
        return per_sample_losses(self.loss, self.task_, out, yt)

    def score(self, X: Any, y: Any) -> float:
        """Accuracy (classification) or negative mean squared error (regression)."""
        return metric(self.task_, self._forward(X), targets(X, y, self.encoder_))[1]
