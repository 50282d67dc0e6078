"""Opacus' DP-SGD as a :class:`~privdl.train.dp_step.DPStep`: every Opacus import is here.

Opacus computes per-sample gradients with hooks (``"hooks"``), functorch
(``"functorch"``), expanded weights (``"ew"``) or ghost clipping (``"ghost"``, per-sample
norms without per-sample gradients), and adds the noise in its DP optimizers. This
adapter builds them for a model, runs one step on a Poisson batch (physical chunks
included, an empty batch as a noise-only step), and patches three things:

* ghost clipping stops on a layer that turns out to run twice in a training step
  ("Parameter tying is not supported"); nothing of that step was applied, so the run
  moves to hooks (which sum a reused layer's per-sample gradients over its calls before
  clipping) and computes the same batch again; the switch is reported to the trainer;
* Opacus' hooks add a call on part of the batch (``layer(x[mask])``) to the *first*
  rows of its per-sample gradients, so a record's gradient would be split over two rows
  each clipped to C: such a call is refused (:func:`_guard_rows`);
* ``secure_mode`` noise comes from ChaCha20 (:func:`_secure_noise`), and the ghost
  optimizer's ``accumulate`` clones instead of deep-copying (:func:`_ghost_optimizer`);
* in a distributed run (:mod:`privdl.train.distributed`) one rank adds the noise and
  the ranks' sums are all-reduced before the update (:func:`_distributed`).

Model validation (Opacus' ``ModuleValidator``) and the distributed wrapper types are
here too, so that no other module imports Opacus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from privdl._optional import require
from privdl.errors import InputError, UsageError
from privdl.train.data import ChaChaRandom

torch: Any = require("torch", "train")
require("opacus", "train")

__all__ = [
    "OpacusStep",
    "distributed_types",
    "fix_for_opacus",
    "forget_forward",
    "grad_sample_module",
    "opacus_mode",
    "opacus_version",
]


def opacus_version() -> str:
    """The installed Opacus version (recorded in model folders)."""
    import opacus

    return str(opacus.__version__)


def distributed_types() -> tuple[type, ...]:
    """The module wrappers of a distributed run (torch's DDP and Opacus' DPDDP)."""
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
    from torch.nn.parallel import DistributedDataParallel as DDP

    return (DDP, DPDDP)


def fix_for_opacus(model: Any) -> tuple[Any, list[str]]:
    """Replace the layers Opacus cannot train privately (BatchNorm -> GroupNorm, ...).

    Returns:
        ``(model, replaced)``: the fixed model and ``"name: Before -> After"`` notes.

    Raises:
        InputError: a layer is left that no replacement fixes.
    """
    from opacus.validators import ModuleValidator

    _refuse_plain_rnn(model)
    if not ModuleValidator.validate(model, strict=False):
        return model, []
    before = {name: type(m).__name__ for name, m in model.named_modules()}
    model = ModuleValidator.fix(model)
    after = {name: type(m).__name__ for name, m in model.named_modules()}
    replaced = [
        f"{name}: {before[name]} -> {after[name]}"
        for name in before
        if name in after and before[name] != after[name]
    ]
    left = ModuleValidator.validate(model, strict=False)
    if left:
        kinds = sorted({type(e).__name__ for e in left})
        raise InputError(f"model has layers Opacus cannot train privately ({', '.join(kinds)})")
    return model, replaced


# torch's recurrent layers that Opacus' validator does not replace, and what to use
_RNN_ALTERNATIVES = {"RNN": "opacus.layers.DPRNN", "RNNCell": "opacus.layers.DPRNNCell"}


def _refuse_plain_rnn(model: Any) -> None:
    """Refuse a plain ``nn.RNN`` (which Opacus' ModuleValidator lets through, and whose
    per-sample gradients then fail with a raw torch error), naming the layer and its
    drop-in replacement."""
    from torch import nn

    for name, module in model.named_modules():
        kind = type(module).__name__
        if type(module) in (nn.RNN, nn.RNNCell):
            raise InputError(
                f"layer {name or '(model)'!r} is a plain torch.nn.{kind}, which Opacus cannot "
                f"train privately: use {_RNN_ALTERNATIVES[kind]} (a drop-in replacement)"
            )


def opacus_mode(model: Any, probe: Any) -> str:
    """``"ghost"`` when Opacus' ghost clipping can train ``model``, else ``"hooks"``."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping as Ghost

    # A layer run twice per forward pass (weight reuse) needs Opacus' hooks, which
    # accumulate per-sample gradients over calls; ghost clipping refuses it. Reuse in
    # training mode only, or for some batches only, is not in this eval-mode probe:
    # OpacusStep.step then moves a ghost run to hooks.
    if probe is not None and any(c > 1 for c in probe.calls.values()):
        return "hooks"
    # Ghost clipping needs a norm sampler for every layer that owns trainable
    # parameters and no parameter shared between layers.
    owners: dict[int, int] = {}
    for m in model.modules():
        direct = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if direct and type(m) not in Ghost.NORM_SAMPLERS:
            return "hooks"
        for p in direct:
            owners[id(p)] = owners.get(id(p), 0) + 1
    if any(c > 1 for c in owners.values()):
        return "hooks"
    return "ghost"


class OpacusStep:
    """The :class:`~privdl.train.dp_step.DPStep` of Opacus' modes.

    Args:
        mode: ``"ghost"``, ``"hooks"``, ``"functorch"`` or ``"ew"``.
        model: the module to train.
        settings: a :class:`~privdl.train.dp_step.StepSettings`.
        on_switch: called with a note when ghost clipping moves to hooks.

    Attributes:
        dp_optimizer: Opacus' DP optimizer (noise, clipping, accumulation).
    """

    def __init__(
        self,
        mode: str,
        model: Any,
        settings: Any,
        *,
        on_switch: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_switch = on_switch
        self.mode = mode
        self._build(model, settings.make_optimizer([p for p in model.parameters() if p.requires_grad]))

    def _build(self, model: Any, base: Any) -> None:
        from opacus import GradSampleModule
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        s = self.settings
        self.dp_loss = None
        if self.mode == "ghost":
            gsm: Any = GradSampleModuleFastGradientClipping(
                model,
                batch_first=True,
                loss_reduction="mean",
                max_grad_norm=s.max_grad_norm,
                use_ghost_clipping=True,
            )
            opt_cls: type = _ghost_optimizer(DPOptimizerFastGradientClipping)
        else:
            if self.mode == "ew":
                from opacus.grad_sample import GradSampleModuleExpandedWeights

                gsm = GradSampleModuleExpandedWeights(model, batch_first=True, loss_reduction="mean")
            else:
                gsm = GradSampleModule(
                    model,
                    batch_first=True,
                    loss_reduction="mean",
                    force_functorch=self.mode == "functorch",
                )
            opt_cls = DPOptimizer
        if self.mode != "ew":  # ExpandedWeights checks batch sizes itself
            _guard_rows(gsm)
        if s.secure:
            opt_cls = _secure_noise(opt_cls)
        if s.collective is not None:
            opt_cls = _distributed(opt_cls, s.collective)
        self.module = gsm
        self.dp_optimizer = opt_cls(
            base,
            noise_multiplier=s.noise_multiplier,
            max_grad_norm=s.max_grad_norm,
            expected_batch_size=s.expected_batch_size,
            loss_reduction="mean",
            generator=s.generator,
        )
        if self.mode == "ghost":
            self.dp_loss = DPLossFastGradientClipping(
                gsm, self.dp_optimizer, s.criterion, loss_reduction="mean"
            )

    @property
    def optimizer(self) -> Any:
        return self.dp_optimizer.original_optimizer

    def train(self) -> None:
        self.module.train()

    def step(self, chunks: Sequence[Any], load: Callable[[Any], tuple[Any, Any]]) -> Any:
        opt, gsm, s = self.dp_optimizer, self.module, self.settings
        ghost = self.mode == "ghost"
        total = torch.zeros((), device=s.device)
        opt.zero_grad(set_to_none=True)
        if not chunks:
            # An empty Poisson batch is still a step: noise only, and it is accounted.
            for p in opt.params:
                if ghost:
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            opt.step()
            return total
        try:
            for k, part in enumerate(chunks):
                xb, yb = load(part)
                out, yb = s.shape_for_loss(gsm(xb), yb)
                if ghost:
                    loss = self.dp_loss(out, yb)
                    loss.backward()
                    total = total + loss.loss_per_sample.detach().sum()
                else:
                    loss = s.criterion(out, yb)
                    loss.backward()
                    total = total + loss.detach() * len(part)
                if k < len(chunks) - 1:
                    opt.signal_skip_step(do_skip=True)
                    opt.step()
                    if not ghost:
                        opt.zero_grad(set_to_none=True)
        except NotImplementedError as exc:
            # Opacus' ghost clipping stops in the forward pass when a layer runs twice
            # ("Parameter tying is not supported"): nothing of this step was applied, so
            # the run goes on with hooks and the same batch is computed again.
            if not ghost or "tying" not in str(exc):
                raise
            self._ghost_to_hooks()
            return self.step(chunks, load)
        opt.step()
        return total

    def _ghost_to_hooks(self) -> None:
        """Move from ghost clipping to Opacus' hooks, which sum a reused layer's
        per-sample gradients over its calls before clipping; report the switch."""
        old_gsm, old_opt = self.module, self.dp_optimizer
        reused = sorted(
            name
            for name, m in old_gsm._module.named_modules()
            if any(getattr(p, "_forward_counter", 0) > 1 for p in m.parameters(recurse=False))
        )
        model = old_gsm.to_standard_module()
        for m in model.modules():  # the interrupted forward pass left its activations
            for attr in ("activations", "max_batch_len"):
                if hasattr(m, attr):
                    delattr(m, attr)
        self.mode = "hooks"
        self._build(model, self.settings.make_optimizer([p for p in model.parameters() if p.requires_grad]))
        self.optimizer.load_state_dict(old_opt.original_optimizer.state_dict())
        # the same noise stream goes on: a fresh seeded generator would repeat its draws
        self.dp_optimizer.generator = old_opt.generator
        where = f"layer {reused[0]!r}" if reused else "a layer"
        note = (
            f"grad_sample_mode: ghost -> hooks ({where} ran more than once in a training "
            "step; ghost clipping cannot clip a reused layer)"
        )
        if self.on_switch is not None:
            self.on_switch(note)

    def forget_forward(self) -> None:
        """Drop what a forward pass without its backward left in Opacus' hooks (see
        :func:`forget_forward`)."""
        forget_forward(self.module)

    def release(self) -> Any:
        return self.module.to_standard_module()


def forget_forward(gsm: Any) -> None:
    """Drop what a forward pass without its backward left in the hooks of Opacus'
    ``GradSampleModule`` ``gsm`` (the activations and call counters), so the next batch
    starts clean: a loop may run the model on an empty batch and step on noise only."""
    for m in gsm._module.modules():
        for attr in ("activations", "max_batch_len"):
            if hasattr(m, attr):
                delattr(m, attr)
        for p in m.parameters(recurse=False):
            if hasattr(p, "_current_grad_sample"):
                del p._current_grad_sample
            if getattr(p, "_forward_counter", 0):
                p._forward_counter = 0


def grad_sample_module(model: Any, *, functorch: bool = False) -> Any:
    """Opacus' ``GradSampleModule`` (hooks, or functorch) over ``model`` computing
    per-record gradients of a summed loss, with the partial-batch guard; for a DP step
    that clips its own units (user-level DP-SGD, :mod:`privdl.train.user_level`)."""
    from opacus import GradSampleModule

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", force_functorch=functorch)
    _guard_rows(gsm)
    return gsm


def _guard_rows(gsm: Any) -> None:
    """Refuse a trainable layer that runs on part of the batch (``layer(x[mask])``).

    Opacus' hooks add such a call's per-sample gradients to the *first* rows of the
    batch's (``grad_sample[:k] += ...``), so a record's gradient is split over two rows,
    each clipped to C: its contribution can exceed C. The hooks are Opacus' own list,
    removed with its hooks when the run ends.
    """
    from torch.utils._pytree import tree_leaves

    rows: list[int | None] = [None]

    def batch_rows(_module: Any, args: Any) -> None:
        first = next((t for t in tree_leaves(args) if isinstance(t, torch.Tensor)), None)
        rows[0] = int(first.shape[0]) if first is not None and first.ndim else None

    def check(name: str) -> Any:
        def hook(module: Any, inputs: Any, _output: Any) -> None:
            if rows[0] is None or not (module.training and torch.is_grad_enabled()):
                return
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if x is not None and (x.ndim == 0 or x.shape[0] != rows[0]):
                raise UsageError(
                    f"layer {name!r} ran on {x.shape[0] if x.ndim else 0} rows of a batch of "
                    f"{rows[0]}: per-sample clipping needs every trainable layer to run on the "
                    "whole batch (mask its output instead of its input)"
                )

        return hook

    module = gsm._module
    handles = gsm.autograd_grad_sample_hooks
    handles.append(module.register_forward_pre_hook(batch_rows))
    for name, m in module.named_modules():
        if any(p.requires_grad for p in m.parameters(recurse=False)):
            handles.append(m.register_forward_hook(check(name)))


def _ghost_optimizer(base: type) -> type:
    """Opacus' ghost-clipping optimizer without a ``deepcopy`` per parameter per step.

    ``accumulate`` in Opacus 1.6 deep-copies each gradient; a detached clone is the same
    value at a fraction of the cost (it was 8 % of a small model's DP step).
    """

    class GhostOptimizer(base):
        def accumulate(self) -> None:
            for p in self.params:
                if p.summed_grad is not None:
                    p.summed_grad.add_(p.grad)
                else:
                    p.summed_grad = p.grad.detach().clone()

    return GhostOptimizer


def _distributed(base: type, collective: Any) -> type:
    """``base`` DP optimizer for one rank of a distributed run (Opacus' DPDDP idea):
    only the rank that ``adds_noise`` adds noise to its clipped sum, and the ranks' sums
    are all-reduced (SUM, one flat buffer) before the update; ``expected_batch_size`` is
    the global one, so every rank applies ``(all clipped gradients + one noise draw) / (n q)``.
    """
    from opacus.optimizers.optimizer import _mark_as_processed

    class DistributedNoise(base):
        def add_noise(self) -> None:
            if collective.adds_noise:
                super().add_noise()
                return
            for p in self.params:
                p.grad = p.summed_grad.view_as(p)
                _mark_as_processed(p.summed_grad)

        def pre_step(self, closure: Any = None) -> Any:
            ready = super().pre_step(closure)
            if ready:  # not a skipped (physical chunk) step: the whole batch is summed
                for p in self.params:  # every rank reduces the same buffers
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                collective.sum_([p.grad for p in self.params])
            return ready

    DistributedNoise.__name__ = f"Distributed{base.__name__}"
    return DistributedNoise


_SECURE_CLASSES: dict[type, type] = {}


def _secure_noise(base: type) -> type:
    """``base`` DP optimizer whose Gaussian noise comes from ChaCha20 (os.urandom key).

    Like Opacus' secure mode, each coordinate is the sum of four Gaussian draws divided
    by two (same variance), which defeats the known floating-point attacks on sampled
    Gaussians; unlike it, the draws come from a CSPRNG instead of torchcsprng.
    """
    if base in _SECURE_CLASSES:
        return _SECURE_CLASSES[base]
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class SecureNoise(base):
        def add_noise(self) -> None:
            rng = self.__dict__.setdefault("_privdl_rng", ChaChaRandom())
            std = self.noise_multiplier * self.max_grad_norm
            for p in self.params:
                _check_processed_flag(p.summed_grad)
                count = p.summed_grad.numel()
                z = sum(rng.normal(count) for _ in range(4)) / 2.0
                noise = torch.from_numpy(std * z).to(p.summed_grad.device, p.summed_grad.dtype)
                p.grad = (p.summed_grad + noise.view_as(p.summed_grad)).view_as(p)
                _mark_as_processed(p.summed_grad)

    SecureNoise.__name__ = f"Secure{base.__name__}"
    _SECURE_CLASSES[base] = SecureNoise
    return SecureNoise
