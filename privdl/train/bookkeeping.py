"""The book-keeping DP step: one backward pass (ghost norms) for common layer types.

Profiling the DP step of a small MLP (100-64-2, batch 256, CPU) with Opacus' fastest
mode, ghost clipping, showed two full backward passes (one for the per-sample norms,
one for the clipped gradient) plus per-parameter bookkeeping: about 4x a plain step.
For the layers below both halves come out of *one* backward pass that computes only the
gradients with respect to the layer outputs ``G`` (never the weight gradients), given
the layer inputs ``A`` kept by a forward hook:

* per-sample gradient norm: ``||G_i^T A_i||^2`` either as a ghost norm (Li et al. 2022,
  ``<A_i A_i^T, G_i G_i^T>``, cheap for short sequences) or from the per-sample gradient
  itself, whichever needs less memory (the "mixed" rule of Bu et al. 2023); a
  convolution's per-sample gradients come from one grouped convolution (one group per
  sample, Rochette et al. 2019) rather than from the unfolded input;
* clipped sum (book-keeping, Bu et al. 2023): ``sum_i c_i G_i^T A_i``, one matrix
  product per layer.

Layers: ``nn.Linear`` (any leading dimensions), ``nn.Conv1d`` / ``nn.Conv2d`` (``groups=1``,
zero padding; ``A`` is the unfolded input), ``nn.LayerNorm``, ``nn.GroupNorm`` (per-sample
gradients from the recomputed normalized input) and ``nn.Embedding`` (no ``max_norm``,
not sparse, no ``scale_grad_by_freq``, which scales by counts in the whole batch).
Each must own its parameters; it may run several times per forward pass.

Weight reuse (a layer applied twice, in training mode only, or only when the data asks
for it) is found in every step, not from a probe: the capture hook keeps each call, and
the calls of one layer are combined before any norm is taken, because a record's
gradient for that layer is the *sum* of its calls' contributions
(``sum_c G_c^T A_c``), whose norm is not the root of the summed squared norms of the
calls (adding those under-clips: a record's clipped contribution then exceeds C by up
to ``sqrt(calls)``). For Linear, Conv (ghost branch) and Embedding the calls join along
the position axis (the sum is one product over all positions, so the ghost norm gains
the cross terms ``<A_c A_c'^T, G_c G_c'^T>``); for the others the per-sample gradients
of the calls are added. ``BookKeeping.calls_`` records the reused layers. A call
on part of the batch (``layer(x[mask])``) cannot be attributed to records and is refused.

The result is the same clipped sum Opacus computes (the tests compare the two on the
same batch for every layer type), to which Gaussian noise ``N(0, sigma^2 C^2)`` is added
before dividing by the expected batch size: the same mechanism and the same accountant
assumptions. The trainer uses it (``grad_sample_mode="bk"``) when every layer that owns
trainable parameters is one of these, and Opacus' own modes otherwise.
tests/train/test_no_underclip.py trains models with reuse and checks that no record's
contribution exceeds C.

A layer output that the next operation modifies in place (``ReLU(inplace=True)``,
``x.relu_()``) would make the gradient with respect to it wrong; :func:`forward_probe`
detects it and :class:`BookKeeping` then hands the next operation a copy.

:class:`BookKeepingStep` is the :class:`~privdl.train.dp_step.DPStep` the trainer drives
(``grad_sample_mode="bk"``); Opacus' modes are the other implementation
(:mod:`privdl.train.opacus_step`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

from privdl._optional import require
from privdl.errors import UsageError
from privdl.train.data import ChaChaRandom

torch: Any = require("torch", "train")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

__all__ = [
    "BookKeeping",
    "BookKeepingStep",
    "ForwardProbe",
    "bk_supports",
    "forward_probe",
    "supported_layer",
]

# (parameter, per-sample squared norm (B,), clipped sum given the clip factors (B,))
_Part = tuple[Any, Any, Callable[[Any], Any]]


def supported_layer(module: nn.Module) -> bool:
    """True when book-keeping computes exact per-sample gradients for this layer type."""
    kind = type(module)
    layer: Any = module
    if kind is nn.Conv1d or kind is nn.Conv2d:
        return layer.groups == 1 and layer.padding_mode == "zeros"
    if kind is nn.Embedding:
        return layer.max_norm is None and not layer.sparse and not layer.scale_grad_by_freq
    return kind in _PARTS


def _trainable_layers(model: nn.Module) -> list[nn.Module] | None:
    """The layers owning trainable parameters, or None if one is not supported or shared."""
    layers: list[nn.Module] = []
    seen: set[int] = set()
    for module in model.modules():
        direct = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not direct:
            continue
        if not supported_layer(module):
            return None
        for p in direct:
            if id(p) in seen:
                return None
            seen.add(id(p))
        layers.append(module)
    return layers or None


@dataclass
class ForwardProbe:
    """What one forward pass shows about the modules that own trainable parameters.

    Attributes:
        calls: how often each such module ran (by qualified name).
        modified: the names of those whose output was then modified in place.
    """

    calls: dict[str, int] = field(default_factory=dict)
    modified: set[str] = field(default_factory=set)


def forward_probe(model: nn.Module, example: Any) -> ForwardProbe:
    """Run ``example`` (a small batch) through ``model`` in eval mode, without gradients,
    counting the calls of every module that owns trainable parameters and noting the
    outputs that later operations modified in place.

    The counts are what eval mode shows on ``example``: a layer reused in training mode
    only, or for some batches only, is not counted here. The DP steps count calls in
    every training step instead (see the module docstring); the probe only guides the
    choice of ``grad_sample_mode``."""
    owners = {
        name: m
        for name, m in model.named_modules()
        if any(p.requires_grad for p in m.parameters(recurse=False))
    }
    probe = ForwardProbe(calls=dict.fromkeys(owners, 0))
    outputs: list[tuple[str, Any, int]] = []

    def recorder(name: str) -> Any:
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            probe.calls[name] += 1
            if isinstance(output, torch.Tensor):
                outputs.append((name, output, output._version))

        return record

    handles = [m.register_forward_hook(recorder(name)) for name, m in owners.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    probe.modified = {name for name, out, version in outputs if out._version != version}
    return probe


def bk_supports(model: nn.Module, example: Any = None, probe: ForwardProbe | None = None) -> bool:
    """True when every trainable layer is a supported type that owns its parameters.

    A layer may run any number of times per forward pass, in training mode only or for
    some batches only: book-keeping counts the calls of every layer in every step and
    clips the sum of a record's calls as one gradient. ``example`` and ``probe`` are
    accepted for compatibility; one eval-mode forward cannot show how often a layer
    runs in training, so they no longer decide anything.
    """
    del example, probe
    return _trainable_layers(model) is not None


def _trainable(p: Any) -> bool:
    return p is not None and bool(p.requires_grad)


def _product_parts(weight: Any, bias: Any, a: Any, g: Any) -> list[_Part]:
    """Per-sample gradients ``G_i^T A_i`` (weight) and ``G_i^T 1`` (bias).

    ``a`` is (B, Din) and ``g`` (B, Dout), or (B, T, Din) and (B, T, Dout).
    """
    parts: list[_Part] = []
    if g.ndim == 2:  # one position per sample: the per-sample gradient has rank one
        gg = (g * g).sum(dim=1)
        if _trainable(weight):
            parts.append(
                (weight, gg * (a * a).sum(dim=1), lambda c: ((g * c[:, None]).T @ a).reshape(weight.shape))
            )
        if _trainable(bias):
            parts.append((bias, gg, lambda c: c @ g))
        return parts
    batch, positions, d_in = a.shape
    d_out = g.shape[-1]
    if _trainable(weight):
        if 2 * positions * positions < d_in * d_out:  # ghost norm: Gram matrices are smaller
            gram = torch.bmm(g, g.transpose(1, 2)) * torch.bmm(a, a.transpose(1, 2))
            parts.append(
                (
                    weight,
                    gram.sum(dim=(1, 2)),
                    lambda c: ((g * c[:, None, None]).reshape(-1, d_out).T @ a.reshape(-1, d_in)).reshape(
                        weight.shape
                    ),
                )
            )
        else:  # the per-sample gradients themselves are smaller
            per_sample = torch.bmm(g.transpose(1, 2), a).reshape(batch, -1)
            parts.append(
                (
                    weight,
                    (per_sample * per_sample).sum(dim=1),
                    lambda c: (c @ per_sample).reshape(weight.shape),
                )
            )
    if _trainable(bias):
        gb = g.sum(dim=1)
        parts.append((bias, (gb * gb).sum(dim=1), lambda c: c @ gb))
    return parts


def _instantiated_parts(param: Any, per_sample: Any) -> list[_Part]:
    """``per_sample`` (B, *param.shape) flattened to (B, numel)."""
    if not _trainable(param):
        return []
    flat = per_sample.reshape(per_sample.shape[0], -1)
    return [(param, (flat * flat).sum(dim=1), lambda c: (c @ flat).reshape(param.shape))]


def _linear_parts(layer: Any, calls: list[tuple[Any, Any]]) -> list[_Part]:
    if len(calls) == 1:
        x, g = calls[0]
        a = x.to(g.dtype)
        if g.ndim > 2:
            a = a.reshape(a.shape[0], -1, a.shape[-1])
            g = g.reshape(g.shape[0], -1, g.shape[-1])
        return _product_parts(layer.weight, layer.bias, a, g)
    # a layer run several times: its per-sample gradient sum_c G_c^T A_c is one product
    # over the positions of all calls, so the calls join along the position axis
    a = torch.cat([x.to(g.dtype).reshape(g.shape[0], -1, x.shape[-1]) for x, g in calls], dim=1)
    g = torch.cat([g.reshape(g.shape[0], -1, g.shape[-1]) for _, g in calls], dim=1)
    return _product_parts(layer.weight, layer.bias, a, g)


def _join(tensors: list[Any], dim: int) -> Any:
    """``torch.cat`` that does not copy a single tensor (the common, one-call case)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


def _summed_parts(param: Any, per_call: list[Any]) -> list[_Part]:
    """The per-sample gradients of each call (B, ...), summed over the calls."""
    if not _trainable(param):
        return []
    total = per_call[0]
    for more in per_call[1:]:
        total = total + more
    return _instantiated_parts(param, total)


def _conv_parts(layer: Any, calls: list[tuple[Any, Any]]) -> list[_Part]:
    convs = [_as_conv2d(layer, x, g) for x, g in calls]
    _, _, kernel, stride, dilation, padding = convs[0]
    batch, c_in, c_out = convs[0][0].shape[0], convs[0][0].shape[1], convs[0][1].shape[1]
    positions = sum(g.shape[2] * g.shape[3] for _, g, *_ in convs)
    parts: list[_Part] = []
    if _trainable(layer.weight):
        if 2 * positions * positions < c_in * kernel[0] * kernel[1] * c_out:
            # few output positions: ghost norm on the unfolded input (of every call)
            a = _join(
                [
                    F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride).transpose(1, 2)
                    for x, *_ in convs
                ],
                dim=1,
            )
            gm = _join([g.reshape(batch, c_out, -1).transpose(1, 2) for _, g, *_ in convs], dim=1)
            parts += _product_parts(layer.weight, None, a, gm)
        else:
            # per-sample weight gradients as one grouped convolution (a group per
            # sample): no unfolded copy of the input, 3-5x faster than im2col on CPU
            per_call = [
                torch.nn.grad.conv2d_weight(
                    x.reshape(1, batch * c_in, *x.shape[2:]),
                    (batch * c_out, c_in, *kernel),
                    g.reshape(1, batch * c_out, *g.shape[2:]),
                    stride=stride,
                    padding=padding,
                    dilation=dilation,
                    groups=batch,
                ).reshape(batch, -1)
                for x, g, *_ in convs
            ]
            parts += _summed_parts(layer.weight, per_call)
    parts += _summed_parts(layer.bias, [g.reshape(batch, c_out, -1).sum(dim=2) for _, g, *_ in convs])
    return parts


def _as_conv2d(layer: Any, x: Any, g: Any) -> tuple[Any, Any, Any, Any, Any, Any]:
    """One call as a 2-D convolution without padding modes: (x, g, kernel, stride,
    dilation, padding)."""
    x = x.to(g.dtype)
    kernel, stride, dilation = layer.kernel_size, layer.stride, layer.dilation
    padding = layer.padding
    if type(layer) is nn.Conv1d:  # as a 2-D convolution of height 1
        x, g = x.unsqueeze(2), g.unsqueeze(2)
        kernel, stride, dilation = (1, kernel[0]), (1, stride[0]), (1, dilation[0])
        padding = padding if isinstance(padding, str) else (0, padding[0])
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":  # torch pads d (k - 1) in all, the extra one on the right
        pads: list[int] = []
        for k, d in zip(reversed(kernel), reversed(dilation), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        x = F.pad(x, pads)
        padding = (0, 0)
    return x, g, kernel, stride, dilation, padding


def _layer_norm_parts(layer: Any, calls: list[tuple[Any, Any]]) -> list[_Part]:
    shape = tuple(layer.normalized_shape)
    size = 1
    for s in shape:
        size *= s
    weights, biases = [], []
    for x, g in calls:
        xhat = F.layer_norm(x.to(g.dtype), shape, None, None, layer.eps)
        weights.append((g * xhat).reshape(g.shape[0], -1, size).sum(dim=1))
        biases.append(g.reshape(g.shape[0], -1, size).sum(dim=1))
    return _summed_parts(layer.weight, weights) + _summed_parts(layer.bias, biases)


def _group_norm_parts(layer: Any, calls: list[tuple[Any, Any]]) -> list[_Part]:
    weights, biases = [], []
    for x, g in calls:
        xhat = F.group_norm(x.to(g.dtype), layer.num_groups, None, None, layer.eps)
        batch, channels = g.shape[0], g.shape[1]
        weights.append((g * xhat).reshape(batch, channels, -1).sum(dim=2))
        biases.append(g.reshape(batch, channels, -1).sum(dim=2))
    return _summed_parts(layer.weight, weights) + _summed_parts(layer.bias, biases)


def _embedding_parts(layer: Any, calls: list[tuple[Any, Any]]) -> list[_Part]:
    weight = layer.weight
    if not _trainable(weight):
        return []
    # several calls: their positions join, as for a longer sequence
    batch, dim = calls[0][1].shape[0], calls[0][1].shape[-1]
    idx = _join([x.reshape(batch, -1) for x, _ in calls], dim=1)
    gm = _join([g.reshape(batch, -1, dim) for _, g in calls], dim=1)
    if layer.padding_idx is not None:  # torch gives the padding row no gradient
        gm = gm * (idx != layer.padding_idx).unsqueeze(-1).to(gm.dtype)
    # a row's per-sample gradient sums the output gradients of the positions holding it
    same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(gm.dtype)
    norm2 = (torch.bmm(gm, gm.transpose(1, 2)) * same).sum(dim=(1, 2))

    def clipped_sum(c: Any) -> Any:
        rows = (gm * c[:, None, None]).reshape(-1, dim)
        return torch.zeros_like(weight).index_add_(0, idx.reshape(-1), rows)

    return [(weight, norm2, clipped_sum)]


# layer type -> its parts from every (input, output gradient) call of one step
_PARTS: dict[type, Callable[[Any, list[tuple[Any, Any]]], list[_Part]]] = {
    nn.Linear: _linear_parts,
    nn.Conv1d: _conv_parts,
    nn.Conv2d: _conv_parts,
    nn.LayerNorm: _layer_norm_parts,
    nn.GroupNorm: _group_norm_parts,
    nn.Embedding: _embedding_parts,
}


class BookKeeping:
    """DP-SGD with per-sample clipping and Gaussian noise, from one backward pass.

    Used by :class:`~privdl.PrivateTrainer` (``grad_sample_mode="bk"``); it plays the
    part of Opacus' GradSampleModule (``__call__``, ``train``, ``to_standard_module``)
    and DPOptimizer (``original_optimizer``, ``zero_grad``, ``step``). Every layer that
    owns trainable parameters must be supported (see :func:`supported_layer`).

    Args:
        model: the module to train.
        optimizer: a torch optimizer over the trainable parameters.
        criterion: the loss module (its reduction is switched to per-sample).
        noise_multiplier: sigma.
        max_grad_norm: clipping norm C.
        expected_batch_size: ``n q``; the noisy sum is divided by it (Opacus' "mean").
        generator: torch generator for the noise (None: torch's default).
        secure: draw the noise from ChaCha20 (``os.urandom`` key), four draws summed
            and halved as in Opacus' secure mode.
        copy_outputs: hand the next operation a copy of each layer's output, for models
            that modify a layer output in place (see :func:`forward_probe`).
        collective: in a distributed run, the
            :class:`~privdl.train.distributed.Group`: the clipped sums of all ranks are
            summed (all-reduce) and only the rank that ``adds_noise`` adds noise, once.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Any,
        criterion: nn.Module,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        generator: Any = None,
        secure: bool = False,
        copy_outputs: bool = False,
        collective: Any = None,
    ) -> None:
        layers = _trainable_layers(model)
        if layers is None:
            raise UsageError(
                "book-keeping DP-SGD needs every trainable layer to be one of "
                "Linear, Conv1d, Conv2d, LayerNorm, GroupNorm or Embedding, owning its parameters"
            )
        self.module = model
        self.original_optimizer = optimizer
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.expected_batch_size = int(expected_batch_size)
        self.generator = generator
        self.copy_outputs = bool(copy_outputs)
        self.collective = collective
        self._rng = ChaChaRandom() if secure else None
        self._layers = layers
        self._names = {id(m): name for name, m in model.named_modules()}
        #: the most calls of each reused layer in one forward pass, by qualified name
        #: (counted in every training step; a reused layer's per-sample gradient is the
        #: sum over its calls, clipped as one)
        self.calls_: dict[str, int] = {}
        self.params = [p for layer in layers for p in layer.parameters() if p.requires_grad]
        self._criterion = None if criterion is None else copy.copy(criterion)
        if self._criterion is not None:
            self._criterion.reduction = "none"  # type: ignore[assignment]
        self._captured: list[tuple[nn.Module, Any, Any, int]] = []
        # output gradients from the caller's own backward pass (accumulate_backward)
        self.from_backward = False
        self._output_grads: list[Any] = []
        self._sums: dict[int, Any] = {}
        self._handles = [layer.register_forward_hook(self._capture) for layer in layers]

    # -- module side ----------------------------------------------------------------
    def _capture(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        if not (module.training and torch.is_grad_enabled()):
            return None
        self._captured.append((module, inputs[0].detach(), output, output._version))
        if self.from_backward:
            slot = len(self._output_grads)
            self._output_grads.append(None)
            if output.requires_grad:
                output.register_hook(partial(self._keep_grad, slot))
        return output.clone() if self.copy_outputs else None

    def _keep_grad(self, slot: int, grad: Any) -> None:
        self._output_grads[slot] = grad.detach()

    def __call__(self, x: Any) -> Any:
        return self.module(x)

    def train(self, mode: bool = True) -> BookKeeping:
        self.module.train(mode)
        return self

    def to_standard_module(self) -> nn.Module:
        """Remove the hooks and return the trained module."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._captured = []
        self._output_grads = []
        return self.module

    # -- optimizer side ---------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        self._sums = {}
        self._captured = []
        self._output_grads = []
        self.original_optimizer.zero_grad(set_to_none=True)

    def per_sample_loss(self, output: Any, target: Any) -> Any:
        losses = self._criterion(output, target)
        if losses.ndim > 1:
            losses = losses.reshape(losses.shape[0], -1).mean(dim=1)
        return losses

    def accumulate(self, losses: Any) -> None:
        """Clip this (physical) batch's per-sample gradients and add them to the sum."""
        captured, self._captured = self._captured, []
        if not captured:
            return
        self._check_versions(captured)
        outputs = [out for _, _, out, _ in captured]
        grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
        self._clip_and_add(captured, list(grads), losses.shape[0], losses.dtype, losses.device)

    def accumulate_backward(self, scale: str = "mean") -> None:
        """Clip the per-sample gradients of the caller's own ``loss.backward()`` (with
        :attr:`from_backward` set, the forward hooks keep each layer output's gradient)
        and add them to the sum. ``scale="mean"``: the loss was the mean over the batch's
        records, so a record's own gradient is the batch size times its row of the
        output gradient (Opacus' ``loss_reduction="mean"``); ``"sum"``: the row itself."""
        captured, self._captured = self._captured, []
        grads, self._output_grads = self._output_grads, []
        if not captured:
            return
        self._check_versions(captured)
        batch = int(captured[0][1].shape[0]) if captured[0][1].ndim else 0
        factor = float(batch) if scale == "mean" else 1.0
        grads = [None if g is None else g * factor for g in grads]
        dtype = next((g.dtype for g in grads if g is not None), captured[0][2].dtype)
        self._clip_and_add(captured, grads, batch, dtype, captured[0][2].device)

    @staticmethod
    def _check_versions(captured: list[tuple[nn.Module, Any, Any, int]]) -> None:
        if any(out._version != version for _, _, out, version in captured):
            raise UsageError(
                "a layer's output was modified in place after book-keeping was set up; "
                "use out-of-place operations (e.g. ReLU(inplace=False))"
            )

    def _clip_and_add(
        self,
        captured: list[tuple[nn.Module, Any, Any, int]],
        grads: list[Any],
        batch: int,
        dtype: Any,
        device: Any,
    ) -> None:
        """Clip each record's gradient, from the layer inputs and output gradients of
        every call, and add the clipped sum."""
        for layer, x, out, _ in captured:
            if x.shape[:1] != (batch,) or out.shape[:1] != (batch,):
                # a call on some of the records (x[mask]): its rows are not the batch's
                # rows, so no per-sample gradient can be attributed to a record
                raise UsageError(
                    f"layer {self._names.get(id(layer), '?')!r} ran on {x.shape[0] if x.ndim else 0} "
                    f"rows of a batch of {batch}: per-sample clipping needs every trainable "
                    "layer to run on the whole batch (mask its output instead of its input)"
                )
        # every call of a layer in this forward pass: a layer run twice contributes the
        # sum of its calls to each per-sample gradient, whose norm is not the sum of the
        # calls' norms (adding squared norms per call under-clips by up to sqrt(calls))
        calls: dict[int, tuple[nn.Module, list[tuple[Any, Any]]]] = {}
        for (layer, x, _, _), g in zip(captured, grads, strict=True):
            entry = calls.setdefault(id(layer), (layer, []))
            if g is not None:  # an output not used by the loss contributes zero
                entry[1].append((x, g))
        self._clip_units(calls, captured, batch, dtype, device)

    def _clip_units(
        self,
        calls: dict[int, tuple[nn.Module, list[tuple[Any, Any]]]],
        captured: list[tuple[nn.Module, Any, Any, int]],
        units: int,
        dtype: Any,
        device: Any,
    ) -> Any:
        """Sum every layer's squared per-unit norms (a unit: a record, or a user's records),
        clip each unit to ``max_grad_norm`` and add the clipped sums; the squared norms."""
        norm2 = torch.zeros(units, dtype=dtype, device=device)
        sums: list[tuple[Any, Callable[[Any], Any]]] = []
        for layer, pairs in calls.values():
            if len(captured) > len(calls):
                self._count(layer, captured)
            if not pairs:
                continue
            for p, n2, clipped_sum in _PARTS[type(layer)](layer, pairs):
                norm2 = norm2 + n2.to(norm2.dtype)
                sums.append((p, clipped_sum))
        clip = (self.max_grad_norm / (norm2.sqrt() + 1e-6)).clamp(max=1.0)
        for p, clipped_sum in sums:
            self._add(p, clipped_sum(clip.to(p.dtype)))
        return norm2

    def _count(self, layer: nn.Module, captured: list[tuple[nn.Module, Any, Any, int]]) -> None:
        count = sum(1 for m, *_ in captured if m is layer)
        if count > 1:
            name = self._names.get(id(layer), "?")
            self.calls_[name] = max(count, self.calls_.get(name, 0))

    def _add(self, p: Any, value: Any) -> None:
        key = id(p)
        if key in self._sums:
            self._sums[key] += value
        else:
            self._sums[key] = value

    def _noise(self, count: int, like: Any) -> Any:
        """``count`` draws of N(0, sigma^2 C^2), flat, on ``like``'s device and dtype."""
        std = self.noise_multiplier * self.max_grad_norm
        if self._rng is None:
            return torch.normal(
                0.0, std, size=(count,), device=like.device, dtype=like.dtype, generator=self.generator
            )
        z = sum(self._rng.normal(count) for _ in range(4)) / 2.0
        return torch.from_numpy(std * z).to(like.device, like.dtype)

    def step(self) -> None:
        """Add noise to the clipped sum, divide by the expected batch size, update.

        The noise for all parameters is one draw split into views, and the additions
        and divisions are two multi-tensor (``foreach``) operations: a few kernels per
        step on a GPU instead of three per parameter. In a distributed run the ranks'
        noised sums (one rank's noise) are summed before the division.
        """
        params = self.params
        grads = [self._sums.get(id(p)) for p in params]
        # empty batch or unused layer: noise only
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        groups: dict[tuple[Any, Any], list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault((p.device, p.dtype), []).append(i)
        reduce = getattr(self, "collective", None)  # (user-level subclasses may not set it)
        for members in groups.values():
            mine = [grads[i] for i in members]
            if reduce is None or reduce.adds_noise:
                sizes = [params[i].numel() for i in members]
                flat = self._noise(sum(sizes), params[members[0]])
                noise = [n.view_as(params[i]) for n, i in zip(flat.split(sizes), members, strict=True)]
                torch._foreach_add_(mine, noise)
            if reduce is not None:
                reduce.sum_(mine)
            torch._foreach_div_(mine, float(self.expected_batch_size))
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self._sums = {}
        self.original_optimizer.step()


class BookKeepingStep:
    """The :class:`~privdl.train.dp_step.DPStep` of ``grad_sample_mode="bk"``.

    Args:
        model: the module to train (every trainable layer supported, see
            :func:`supported_layer`).
        settings: the mechanism and the loss (:class:`~privdl.train.dp_step.StepSettings`).
        copy_outputs: hand the next operation a copy of each layer output (a forward
            that modifies one in place, see :func:`forward_probe`).
    """

    mode = "bk"
    #: the engine that clips (the user-level step clips users: ``UserBookKeeping``)
    engine_type: ClassVar[type[BookKeeping]] = BookKeeping

    def __init__(self, model: nn.Module, settings: Any, *, copy_outputs: bool = False) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        self.settings = settings
        self.engine = self.engine_type(
            model,
            settings.make_optimizer(params),
            settings.criterion,
            noise_multiplier=settings.noise_multiplier,
            max_grad_norm=settings.max_grad_norm,
            expected_batch_size=settings.expected_batch_size,
            generator=settings.generator,
            secure=settings.secure,
            copy_outputs=copy_outputs,
            collective=settings.collective,
        )

    @property
    def optimizer(self) -> Any:
        return self.engine.original_optimizer

    @property
    def copy_outputs(self) -> bool:
        return self.engine.copy_outputs

    def train(self) -> None:
        self.engine.train()

    def step(self, chunks: Sequence[Any], load: Callable[[Any], tuple[Any, Any]]) -> Any:
        engine, shape = self.engine, self.settings.shape_for_loss
        engine.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.settings.device)
        for part in chunks:
            if self._empty(part):
                continue
            xb, yb = load(part)
            out, yb = shape(engine(xb), yb)
            losses = engine.per_sample_loss(out, yb)
            self._accumulate(losses, part)
            total = total + losses.detach().sum()
        engine.step()  # an empty batch is a noise-only step, and it is accounted
        return total

    def _empty(self, part: Any) -> bool:
        """Whether ``part`` holds no records (skipped: it adds nothing to the sum)."""
        return False

    def _accumulate(self, losses: Any, part: Any) -> None:
        """Clip ``part``'s units from their ``losses`` and add them to the sum."""
        self.engine.accumulate(losses)

    def release(self) -> nn.Module:
        return self.engine.to_standard_module()
