"""The one-backward linear engine computes exactly Opacus' clipped gradient sum."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from opacus import GradSampleModule  # noqa: E402
from torch import nn  # noqa: E402

from privdl.train.engine import LinearDPEngine, linear_engine_supports  # noqa: E402


def opacus_clipped_sum(model, x, y, criterion, clip):
    """Per-sample gradients from Opacus' hooks, clipped and summed as DPOptimizer does."""
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    loss = criterion(gsm(x), y)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook")
        loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    norms = torch.stack([p.grad_sample.reshape(len(x), -1).norm(dim=1) for p in params], 1)
    factor = (clip / (norms.norm(dim=1) + 1e-6)).clamp(max=1.0)
    out = [torch.einsum("i,i...", factor, p.grad_sample) for p in params]
    gsm._close()
    return out, factor


def engine_clipped_sum(model, x, y, criterion, clip):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    engine = LinearDPEngine(
        model, opt, criterion, noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=1
    )
    engine.zero_grad()
    engine.accumulate(engine.per_sample_loss(engine(x), y))
    engine.step()  # sigma = 0 and expected batch 1: p.grad is the clipped sum
    engine.to_standard_module()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def twin(factory):
    torch.manual_seed(0)
    a = factory()
    b = factory()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("clip", [0.05, 1.0, 100.0])  # all clipped / some / none
@pytest.mark.parametrize(
    "factory",
    [
        lambda: nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3)),
        lambda: nn.Sequential(nn.Linear(7, 5, bias=False), nn.ReLU(), nn.Linear(5, 3)),
        lambda: nn.Linear(7, 3),
    ],
)
def test_matches_opacus_on_two_dimensional_inputs(factory, clip):
    a, b = twin(factory)
    torch.manual_seed(1)
    x, y = torch.randn(11, 7), torch.randint(0, 3, (11,))
    theirs, factor = opacus_clipped_sum(a, x, y, nn.CrossEntropyLoss(), clip)
    ours = engine_clipped_sum(b, x, y, nn.CrossEntropyLoss(), clip)
    for t, o in zip(theirs, ours, strict=True):
        assert torch.allclose(t, o, atol=1e-5, rtol=1e-4)
    if clip == 0.05:
        assert bool((factor < 1).all())


def test_matches_opacus_with_a_sequence_dimension_and_frozen_layer():
    def factory():
        return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))

    a, b = twin(factory)
    for m in (a, b):
        m[0].weight.requires_grad_(False)
    torch.manual_seed(2)
    x, y = torch.randn(9, 5, 4), torch.randn(9, 5, 2)
    theirs, _ = opacus_clipped_sum(a, x, y, nn.MSELoss(), 0.5)
    ours = engine_clipped_sum(b, x, y, nn.MSELoss(), 0.5)
    assert len(ours) == 3  # first bias, second weight and bias
    for t, o in zip(theirs, ours, strict=True):
        assert torch.allclose(t, o, atol=1e-5, rtol=1e-4)


def test_noise_has_the_calibrated_scale():
    torch.manual_seed(0)
    model = nn.Linear(50, 40)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    engine = LinearDPEngine(
        model,
        opt,
        nn.CrossEntropyLoss(),
        noise_multiplier=2.0,
        max_grad_norm=0.5,
        expected_batch_size=4,
        generator=torch.Generator().manual_seed(0),
    )
    engine.zero_grad()
    engine.step()  # empty batch: noise only
    noise = model.weight.grad * 4
    assert abs(float(noise.std()) - 1.0) < 0.05  # sigma * C = 1.0
    assert abs(float(noise.mean())) < 0.05


def test_supports_only_linear_layers_used_once():
    x = torch.randn(2, 4)
    assert linear_engine_supports(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), x)
    assert not linear_engine_supports(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), x)
    frozen_norm = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    frozen_norm[1].requires_grad_(False)
    assert linear_engine_supports(frozen_norm, x)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return self.a(self.a(x))

    assert not linear_engine_supports(Twice(), x)
