"""Making a model trainable with per-sample gradients: layer fixes, task and loss.

* :func:`prepare_model` trains a ``torch.compile``'d model through its original module,
  replaces the layers Opacus cannot train privately (BatchNorm
  becomes GroupNorm, see :func:`~privdl.train.opacus_step.fix_for_opacus`) and switches
  in-place modules (``ReLU(inplace=True)``) out of place: such a module changes a layer's
  output after the per-sample hooks saw it, in training mode only; out of place the
  outputs are the same. Every change is named for the report.
* :func:`infer_task`, :func:`make_loss` and :func:`shape_for_loss` choose the task
  (``"binary"``, ``"multiclass"``, ``"regression"``) from the target and the model's
  output width, and the loss for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from privdl._optional import require
from privdl.errors import InputError, UsageError
from privdl.train.opacus_step import fix_for_opacus

torch: Any = require("torch", "train")
from torch import nn  # noqa: E402

__all__ = [
    "LOSSES",
    "PreparedModel",
    "infer_task",
    "make_loss",
    "output_width",
    "prepare_for_training",
    "prepare_model",
    "refuse_random_under_vmap",
    "shape_for_loss",
]

LOSSES = ("cross_entropy", "bce", "mse")
_TASK_OF_LOSS = {"cross_entropy": "multiclass", "bce": "binary", "mse": "regression"}


@dataclass(frozen=True)
class PreparedModel:
    """A model made ready for DP training, and what was learned about it on the way.

    Attributes:
        model: the module, fixed and on the device.
        replaced: the changes made (``"name: Before -> After"``).
        n_outputs: the width of its output.
        task: ``"binary"``, ``"multiclass"`` or ``"regression"``.
        criterion: the loss module.
        example: a batch of (at most) two training inputs on the device.
        probe: what one eval-mode forward pass on ``example`` shows
            (:class:`~privdl.train.bookkeeping.ForwardProbe`).
    """

    model: Any
    replaced: tuple[str, ...]
    n_outputs: int
    task: str
    criterion: Any
    example: Any = field(repr=False)
    probe: Any = field(repr=False)


def prepare_for_training(model: nn.Module, train: Any, *, loss: Any, device: Any) -> PreparedModel:
    """:func:`prepare_model`, moved to ``device``, with its task and loss from the
    training data ``train`` (TensorData or IndexedData) and the model's output width."""
    from privdl.train.bookkeeping import forward_probe
    from privdl.train.data import TensorData, to_device

    model, replaced = prepare_model(model)
    model = model.to(device)
    x0, y0 = train.batch(torch.arange(min(len(train), 2)))
    x0 = to_device(x0, device)
    try:
        width = output_width(model, x0)
    except RuntimeError as exc:
        _refuse_float_padding_mask(model, exc)
        _refuse_input_size(model, x0, exc)
        raise
    task = infer_task(loss, train.y if isinstance(train, TensorData) else y0, width)
    return PreparedModel(
        model=model,
        replaced=tuple(replaced),
        n_outputs=width,
        task=task,
        criterion=make_loss(loss, task),
        example=x0,
        probe=forward_probe(model, x0),
    )


def _refuse_float_padding_mask(model: nn.Module, exc: BaseException) -> None:
    """Name the attention layer when a forward pass failed on a float padding mask:
    Opacus' DPMultiheadAttention (what ``nn.MultiheadAttention`` is trained as, also
    inside ``nn.TransformerEncoderLayer``) takes boolean masks only."""
    if "masked_fill" not in str(exc) or "boolean" not in str(exc):
        return
    from opacus.layers import DPMultiheadAttention

    names = [name for name, m in model.named_modules() if isinstance(m, DPMultiheadAttention)]
    if not names:
        return
    shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
    blocks = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    if any(isinstance(m, blocks) for m in model.modules()):
        # these layers turn every mask (boolean too) into a float one before attention
        raise UsageError(
            f"attention layer {shown} (MultiheadAttention in an nn.TransformerEncoderLayer or "
            "DecoderLayer, trained as Opacus' DPMultiheadAttention) got a float padding or "
            "attention mask, and these layers make every mask a float one: call them without "
            "a mask, or build the block from nn.MultiheadAttention with a boolean "
            "key_padding_mask (True where a position is padding)"
        ) from exc
    raise UsageError(
        f"attention layer {shown} (MultiheadAttention, trained as Opacus' DPMultiheadAttention) "
        "got a float padding or attention mask: pass a boolean mask instead (True where a "
        "position is padding, e.g. mask != 0)"
    ) from exc


def refuse_random_under_vmap(model: nn.Module, mode: str) -> None:
    """Refuse, before any budget is reserved, a dropout inside a module that Opacus
    trains with functorch's ``vmap`` (a module holding a parameter of its own, e.g. a
    learned positional ``nn.Parameter``, whose type Opacus has no per-sample rule for):
    vmap cannot run random operations.

    Raises:
        UsageError: naming the module, its parameter and the dropout.
    """
    if mode not in ("hooks", "ghost", "functorch"):
        return
    from opacus.grad_sample import GradSampleModule

    supported = GradSampleModule.GRAD_SAMPLERS
    for name, module in model.named_modules():
        own = [p_name for p_name, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own or (type(module) in supported and mode != "functorch"):
            continue
        for sub_name, sub in module.named_modules():
            if sub is not module and isinstance(sub, nn.modules.dropout._DropoutNd) and sub.p > 0:
                where = f"{name}.{own[0]}" if name else own[0]
                drop = f"{name}.{sub_name}" if name else sub_name
                raise UsageError(
                    f"layer {where!r} (a parameter held directly by {type(module).__name__}) is "
                    f"trained with functorch's vmap, which cannot run the dropout {drop!r} "
                    "inside it: hold the parameter in its own layer (for learned positions an "
                    "nn.Embedding over the positions) and apply the dropout outside that layer"
                )


def _refuse_input_size(model: nn.Module, x: Any, exc: BaseException) -> None:
    """Turn a forward pass that failed on the training features into a clear error when
    the model's first layer expects another number of features (before any budget is
    reserved); otherwise return, and the caller re-raises."""
    first = next((m for m in model.modules() if isinstance(getattr(m, "in_features", None), int)), None)
    if first is None or not torch.is_tensor(x) or x.ndim < 2:
        return
    expected, given = int(first.in_features), int(x.shape[-1])
    if expected != given:
        raise InputError(
            f"the model expects {expected} input features but the training data has {given} "
            "(encoded) features"
        ) from exc


def prepare_model(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """``model`` made trainable with per-sample gradients, and what was changed.

    Returns:
        ``(model, replaced)``: ``replaced`` holds ``"name: Before -> After"`` notes
        (layer replacements, ``inplace=True -> inplace=False``).

    Raises:
        InputError: a layer Opacus cannot train privately is left.
        UsageError: the model has no trainable parameters.
    """
    model, compiled = _uncompiled(model)
    model.train()  # validation and per-sample gradients need training mode
    model, replaced = fix_for_opacus(model)
    replaced = compiled + replaced
    replaced += [f"{name}: inplace=True -> inplace=False" for name in _out_of_place(model)]
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError("the model has no trainable parameters")
    return model, replaced


def _uncompiled(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """``model`` with every ``torch.compile`` wrapper replaced by the module it wraps
    (``_orig_mod``, which holds the same parameters), and a note for each.

    Per-sample gradients need hooks on each layer and its outputs as the layer returned
    them; a compiled graph fuses layers and reuses output buffers (which looked like a
    layer output "modified in place"), so DP training runs the original module eagerly.
    Compile the trained module again for inference if you want to.
    """
    import warnings

    from torch._dynamo.eval_frame import OptimizedModule

    notes: list[str] = []
    if isinstance(model, OptimizedModule):
        model = model._orig_mod
        notes.append("(model): torch.compile -> original module")
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, OptimizedModule):
                setattr(parent, child_name, child._orig_mod)
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                notes.append(f"{name}: torch.compile -> original module")
    if notes:
        warnings.warn(
            "a torch.compile'd model is trained through its original module (per-sample "
            "gradients need each layer's own hooks and outputs); compile the trained model "
            "again for inference",
            UserWarning,
            stacklevel=3,
        )
    return model, notes


def _out_of_place(model: nn.Module) -> list[str]:
    """Set ``inplace=False`` on every module that has ``inplace=True``; their names."""
    changed = []
    for name, m in model.named_modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
            changed.append(name)
    return changed


def output_width(model: nn.Module, x: Any) -> int:
    """The width of the model's output on a small batch ``x`` (eval mode, no grad)."""
    with torch.no_grad():
        was_training = model.training
        model.eval()
        out = model(x)
        model.train(was_training)
    return int(out.shape[-1]) if out.ndim > 1 else 1


def infer_task(loss: Any, y: Any, n_outputs: int) -> str:
    """``"binary"``, ``"multiclass"`` or ``"regression"`` from the loss and the target.

    A named loss decides; else float targets that are not whole numbers (or float
    targets with a one-output model and a loss module) are a regression, and integer
    labels a classification (binary for one output).
    """
    if y is None:
        raise InputError("training data has no target")
    if isinstance(loss, str):
        return _TASK_OF_LOSS[loss]
    is_float = torch.is_floating_point(y)
    if is_float and not bool(torch.all(y == torch.round(y))):
        return "regression"
    if is_float and n_outputs == 1 and loss is not None:
        return "regression"
    return "binary" if n_outputs == 1 else "multiclass"


def make_loss(loss: Any, task: str | None) -> nn.Module:
    """The loss module (``reduction="mean"``): the one given, or the task's."""
    if isinstance(loss, nn.Module):
        if not hasattr(loss, "reduction"):
            raise UsageError("a loss module needs a 'reduction' attribute (e.g. nn.*Loss)")
        loss.reduction = "mean"  # type: ignore[assignment]
        return loss
    if task == "regression":
        return nn.MSELoss(reduction="mean")
    if task == "binary":
        return nn.BCEWithLogitsLoss(reduction="mean")
    return nn.CrossEntropyLoss(reduction="mean")


def shape_for_loss(task: str | None, out: Any, y: Any) -> tuple[Any, Any]:
    """Model output and target shaped and typed as the task's loss wants them."""
    if task == "binary":
        return out.reshape(-1), y.to(out.dtype).reshape(-1)
    if task == "regression":
        if out.ndim == 2 and out.shape[1] == 1 and y.ndim == 1:
            out = out.reshape(-1)
        return out, y.to(out.dtype)
    return out, y.long()
