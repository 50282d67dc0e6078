"""The DPStep interface: one DP-SGD step on a Poisson batch, and the choice of one.

A :class:`DPStep` takes the records of one Poisson-sampled batch (split into physical
chunks), computes every record's gradient, clips it to ``max_grad_norm``, adds Gaussian
noise ``N(0, sigma^2 C^2)`` to the sum, divides by the expected batch size and updates
the model. An empty batch is a step too (noise only), and it is accounted. Two
implementations:

* :class:`~privdl.train.bookkeeping.BookKeepingStep` (``grad_sample_mode="bk"``):
  privdl's one-backward book-keeping for Linear, Conv, LayerNorm, GroupNorm and
  Embedding layers;
* :class:`~privdl.train.opacus_step.OpacusStep` (``"ghost"``, ``"hooks"``,
  ``"functorch"``, ``"ew"``): Opacus' per-sample gradient modules and DP optimizers.

:func:`choose_mode` picks one for a model (``"auto"``); :func:`make_dp_step` builds it.
The trainer sees only this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from privdl.errors import UsageError
from privdl.train.bookkeeping import BookKeepingStep, bk_supports, forward_probe
from privdl.train.opacus_step import OpacusStep, opacus_mode

__all__ = ["GRAD_SAMPLE_MODES", "DPStep", "StepSettings", "choose_mode", "make_dp_step"]

GRAD_SAMPLE_MODES = ("auto", "bk", "ghost", "hooks", "functorch", "ew")


@dataclass(frozen=True)
class StepSettings:
    """What every DP step needs besides the model: the mechanism and the loss.

    Attributes:
        noise_multiplier: sigma.
        max_grad_norm: per-sample clipping norm C.
        expected_batch_size: ``n q``; the noisy sum is divided by it.
        criterion: the loss module (``reduction="mean"``).
        shape_for_loss: ``(output, target) -> (output, target)`` as the loss wants them.
        make_optimizer: builds the torch optimizer over a list of parameters.
        device: where the model and the batches are.
        generator: torch generator for the noise (``None``: torch's default).
        secure: draw the noise from ChaCha20 (``os.urandom`` key).
        collective: in a distributed run, the
            :class:`~privdl.train.distributed.Group` (``adds_noise``, ``sum_``): the
            clipped sums are all-reduced and only one rank adds the noise.
    """

    noise_multiplier: float
    max_grad_norm: float
    expected_batch_size: int
    criterion: Any
    shape_for_loss: Callable[[Any, Any], tuple[Any, Any]]
    make_optimizer: Callable[[list[Any]], Any]
    device: Any = "cpu"
    generator: Any = None
    secure: bool = False
    collective: Any = None


@runtime_checkable
class DPStep(Protocol):
    """One DP-SGD step on a Poisson batch: per-sample gradients, clipping, noise.

    Attributes:
        mode: the ``grad_sample_mode`` computing the per-sample gradients now (an
            Opacus ghost-clipping step moves to ``"hooks"`` when a layer turns out to
            be reused in training).
        optimizer: the torch optimizer that applies the noisy update (its state goes
            into training checkpoints).
    """

    mode: str

    @property
    def optimizer(self) -> Any: ...

    def train(self) -> None:
        """Put the model in training mode."""

    def step(self, chunks: Sequence[Any], load: Callable[[Any], tuple[Any, Any]]) -> Any:
        """One step on the batch whose physical chunks of record indices are ``chunks``
        (``[]``: an empty batch, a noise-only step); ``load(chunk)`` returns the chunk's
        ``(inputs, targets)`` on the device. Returns the batch's summed loss (a tensor)."""

    def release(self) -> Any:
        """Remove every hook and return the trained plain module."""


def choose_mode(requested: str, model: Any, example: Any = None, probe: Any = None) -> str:
    """The ``grad_sample_mode`` to train ``model`` with.

    ``"auto"``: ``"bk"`` when every trainable layer is supported by book-keeping and the
    eval-mode probe on ``example`` sees no layer run twice; else Opacus' ghost clipping
    when every trainable layer supports it; else Opacus' hooks. A named mode is checked
    against the model.

    Raises:
        UsageError: ``"bk"`` for an unsupported model, or an Opacus mode for a forward
            pass that modifies a layer output in place.
    """
    if probe is None and example is not None:
        probe = forward_probe(model, example)
    if requested == "bk":
        if example is not None and not bk_supports(model, example, probe):
            raise UsageError(
                'grad_sample_mode="bk" needs every trainable layer to be a Linear, Conv1d, '
                "Conv2d, LayerNorm, GroupNorm or Embedding that owns its parameters"
            )
        return "bk"
    if requested != "auto":
        mode = str(requested)
    elif (
        probe is not None and bk_supports(model, example, probe) and all(c <= 1 for c in probe.calls.values())
    ):
        # a reuse the probe sees goes to Opacus' hooks (the reference for tied
        # weights); one that only training shows is clipped correctly by bk too
        return "bk"
    else:
        mode = opacus_mode(model, probe)
    if probe is not None and probe.modified and mode != "ew":
        # Opacus' per-sample hooks refuse a hooked output that is modified in place
        # (in-place modules are switched off by model preparation: this is an op in a forward)
        raise UsageError(
            f"the output of layer {sorted(probe.modified)[0]!r} is modified in place in "
            f"the forward pass, which Opacus' {mode!r} mode cannot train through: use an "
            "out-of-place operation there"
        )
    return mode


def make_dp_step(
    mode: str,
    model: Any,
    settings: StepSettings,
    *,
    copy_outputs: bool = False,
    on_switch: Callable[[str], None] | None = None,
) -> DPStep:
    """The DP step for ``mode`` (as :func:`choose_mode` returns it) over ``model``.

    Args:
        copy_outputs: ``"bk"`` only: hand a copy of each layer output on (a forward that
            modifies one in place).
        on_switch: called with a note when an Opacus ghost-clipping step moves to hooks.
    """
    if mode == "bk":
        return BookKeepingStep(model, settings, copy_outputs=copy_outputs)
    return OpacusStep(mode, model, settings, on_switch=on_switch)
