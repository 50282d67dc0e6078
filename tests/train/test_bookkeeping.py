"""The one-backward book-keeping DP step computes exactly Opacus' clipped gradient sum."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from opacus import GradSampleModule  # noqa: E402
from torch import nn  # noqa: E402

from privdl.errors import UsageError  # noqa: E402
from privdl.train.bookkeeping import BookKeeping, bk_supports, forward_probe  # noqa: E402


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


def engine_clipped_sum(model, x, y, criterion, clip, copy_outputs=False):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    engine = BookKeeping(
        model,
        opt,
        criterion,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=1,
        copy_outputs=copy_outputs,
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
    engine = BookKeeping(
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


def test_supports_known_layers_used_once():
    x = torch.randn(2, 4)
    assert bk_supports(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), x)
    assert bk_supports(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), x)
    assert not bk_supports(nn.Sequential(nn.Linear(4, 4), nn.PReLU()), x)
    frozen = nn.Sequential(nn.Linear(4, 4), nn.PReLU())
    frozen[1].requires_grad_(False)
    assert bk_supports(frozen, x)
    image = torch.randn(2, 4, 5, 5)
    assert bk_supports(nn.Conv2d(4, 4, 3), image)
    assert not bk_supports(nn.Conv2d(4, 4, 3, groups=2), image)
    assert not bk_supports(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), image)
    assert not bk_supports(nn.Conv3d(4, 4, 1), image.unsqueeze(2))
    tokens = torch.zeros(2, 3, dtype=torch.long)
    assert bk_supports(nn.Embedding(5, 3, padding_idx=0), tokens)
    assert not bk_supports(nn.Embedding(5, 3, max_norm=1.0), tokens)
    assert not bk_supports(nn.Embedding(5, 3, scale_grad_by_freq=True), tokens)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return self.a(self.a(x))

    # a layer run twice is supported: the engine clips the sum of its calls per record
    # (test_reused_layers_match_per_record_gradients)
    assert bk_supports(Twice(), x)


class Channels(nn.Module):
    """Conv features flattened into a linear head, for any Conv1d/Conv2d stack."""

    def __init__(self, body, width):
        super().__init__()
        self.body = body
        self.head = nn.LazyLinear(3) if width is None else nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


CONV_CASES = [
    # (factory, input shape)
    (
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2), nn.Flatten()),
        (2, 9, 9),
    ),
    (lambda: nn.Sequential(nn.Conv2d(2, 5, (3, 2), padding=(1, 2), dilation=(2, 1), bias=False)), (2, 7, 6)),
    (
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 4, padding="same"), nn.Tanh(), nn.Conv2d(4, 2, 3, padding="valid")
        ),
        (2, 8, 8),
    ),
    (
        lambda: nn.Sequential(
            nn.Conv1d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv1d(4, 2, 2, dilation=2)
        ),
        (3, 12),
    ),
    (lambda: nn.Sequential(nn.Conv1d(3, 4, 4, padding="same"), nn.GroupNorm(2, 4)), (3, 10)),
    (lambda: nn.Sequential(nn.Conv2d(2, 6, 3), nn.GroupNorm(3, 6), nn.ReLU(), nn.Conv2d(6, 2, 1)), (2, 6, 6)),
    # few output positions, many channels: the ghost-norm branch on the unfolded input
    (lambda: nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding="valid"), nn.Flatten()), (6, 5, 5)),
    (lambda: nn.Sequential(nn.Conv2d(6, 8, 2, padding="same", dilation=2), nn.Flatten()), (6, 2, 2)),
    (lambda: nn.Sequential(nn.Conv1d(8, 8, 3), nn.ReLU(), nn.Conv1d(8, 4, 2)), (8, 4)),
]


@pytest.mark.parametrize("clip", [0.05, 1.0, 100.0])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_matches_opacus_on_convolutions_and_group_norm(case, clip):
    # both branches of the mixed rule, 2 L^2 < Cin k Cout or not, are among the cases
    factory, shape = CONV_CASES[case]
    a, b = twin(factory)
    torch.manual_seed(3)
    x = torch.randn(6, *shape)
    with torch.no_grad():
        out_shape = a(x).shape
    y = torch.randn(out_shape)
    theirs, factor = opacus_clipped_sum(a, x, y, nn.MSELoss(), clip)
    ours = engine_clipped_sum(b, x, y, nn.MSELoss(), clip)
    assert len(theirs) == len(ours)
    for t, o in zip(theirs, ours, strict=True):
        assert t.shape == o.shape
        assert torch.allclose(t, o, atol=1e-5, rtol=1e-4)
    if clip == 0.05:
        assert bool((factor < 1).all())


def looped_clipped_sum(model, x, y, criterion, clip):
    """The clipped sum from one autograd call per record: torch's own gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        grads = torch.autograd.grad(criterion(model(x[i : i + 1]), y[i : i + 1]), params)
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += factor * g
    return total


def test_layer_norm_and_embeddings_match_per_record_gradients():
    # Opacus' embedding sampler gives the padding row a gradient that torch does not
    # (it ignores padding_idx), so the reference is one torch backward per record
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 4, padding_idx=0)
            self.norm = nn.LayerNorm(4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.norm(self.emb(x))).mean(dim=1)

    a, b = twin(Tokens)
    torch.manual_seed(4)
    x = torch.randint(0, 7, (8, 5))  # repeated tokens and padding in most rows
    y = torch.randint(0, 2, (8,))
    assert int((x == 0).sum()) > 0
    for clip in (0.05, 1.0, 100.0):
        theirs = looped_clipped_sum(a, x, y, nn.CrossEntropyLoss(), clip)
        ours = engine_clipped_sum(b, x, y, nn.CrossEntropyLoss(), clip)
        assert len(ours) == 5
        assert bool((ours[0][0] == 0).all())  # the padding row gets no gradient
        for t, o in zip(theirs, ours, strict=True):
            assert torch.allclose(t, o, atol=1e-6, rtol=1e-4)
    # without padding the engine also agrees with Opacus
    a, b = twin(Tokens)
    for m in (a, b):
        m.emb.padding_idx = None
    theirs, _ = opacus_clipped_sum(a, x, y, nn.CrossEntropyLoss(), 0.5)
    ours = engine_clipped_sum(b, x, y, nn.CrossEntropyLoss(), 0.5)
    for t, o in zip(theirs, ours, strict=True):
        assert torch.allclose(t, o, atol=1e-5, rtol=1e-4)


def test_long_sequences_use_per_sample_gradients_and_agree():
    # 40 positions x 3 features: the per-sample gradient (3 x 2) is smaller than the Gram
    # matrix (40 x 40), so the other branch of the mixed rule runs
    a, b = twin(lambda: nn.Linear(3, 2))
    torch.manual_seed(5)
    x, y = torch.randn(4, 40, 3), torch.randn(4, 40, 2)
    theirs, _ = opacus_clipped_sum(a, x, y, nn.MSELoss(), 0.1)
    ours = engine_clipped_sum(b, x, y, nn.MSELoss(), 0.1)
    for t, o in zip(theirs, ours, strict=True):
        assert torch.allclose(t, o, atol=1e-5, rtol=1e-4)


def test_an_output_modified_in_place_is_copied_first():
    def factory(inplace):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(27, 2))

    plain, inplace = factory(False), factory(True)
    torch.manual_seed(6)
    x, y = torch.randn(5, 1, 5, 5), torch.randint(0, 2, (5,))
    assert forward_probe(inplace, x).modified == {"0"}
    assert forward_probe(plain, x).modified == set()
    expected = engine_clipped_sum(plain, x, y, nn.CrossEntropyLoss(), 0.5)
    got = engine_clipped_sum(inplace, x, y, nn.CrossEntropyLoss(), 0.5, copy_outputs=True)
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(e, g, atol=1e-6)
    # without the copy the engine refuses rather than return a wrong gradient
    with pytest.raises(UsageError, match="in place"):
        engine_clipped_sum(factory(True), x, y, nn.CrossEntropyLoss(), 0.5)


class Attention(nn.Module):
    """Embedding, self-attention and LayerNorm: a transformer block's trainable layers."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.att = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        h = self.emb(x)
        a, _ = self.att(h, h, h)
        return self.out(self.norm(h + a).mean(1))


def test_an_attention_block_after_opacus_fix_matches_per_record_gradients():
    from opacus.validators import ModuleValidator

    a, b = twin(lambda: ModuleValidator.fix(Attention()))  # DPMultiheadAttention: Linears
    torch.manual_seed(7)
    x, y = torch.randint(0, 20, (6, 7)), torch.randint(0, 2, (6,))
    assert bk_supports(b, x)
    theirs = looped_clipped_sum(a, x, y, nn.CrossEntropyLoss(), 0.3)
    ours = engine_clipped_sum(b, x, y, nn.CrossEntropyLoss(), 0.3)
    assert len(ours) == 13
    for t, o in zip(theirs, ours, strict=True):
        assert torch.allclose(t, o, atol=1e-6, rtol=1e-4)


class Reuse(nn.Module):
    """``body`` run ``again`` more times: in training only, or (``masked``) kept only for
    the records whose first feature is positive; the calls may differ in shape."""

    def __init__(self, stem, body, head, *, again=1, train_only=False, masked=False):
        super().__init__()
        self.stem, self.body, self.head = stem, body, head
        self.again, self.train_only, self.masked = again, train_only, masked

    def forward(self, x):
        h = self.body(self.stem(x))
        if self.training or not self.train_only:
            for _ in range(self.again):
                more = self.body(h)
                if self.masked:
                    keep = (x.reshape(len(x), -1)[:, 0] > 0).reshape(-1, *[1] * (h.ndim - 1))
                    more = torch.where(keep, more, h)
                h = more
        return self.head(h)


class Pooled(nn.Module):
    """One Linear on a sequence and again on its mean: calls with 5 and 1 positions."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        return self.out(torch.cat([h.mean(1), self.fc(h.mean(1))], dim=1))


class TwoTokenFields(nn.Module):
    """One Embedding for two token columns (shared vocabulary)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 3, padding_idx=0)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        return self.out(self.emb(x[:, :4]).mean(1) * self.emb(x[:, 4:]).sum(1))


REUSE_CASES = [
    # (factory, input shape or "tokens"): Linear on rank-one and on sequence inputs
    (lambda: Reuse(nn.Linear(5, 4), nn.Linear(4, 4), nn.Linear(4, 2), again=2), (5,)),
    (lambda: Reuse(nn.Linear(5, 4), nn.Linear(4, 4), nn.Linear(4, 2), train_only=True), (5,)),
    (lambda: Reuse(nn.Linear(5, 4), nn.Linear(4, 4), nn.Linear(4, 2), masked=True), (5,)),
    (lambda: Reuse(nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 2)), (2, 3)),  # ghost branch
    (lambda: Reuse(nn.Linear(3, 2), nn.Linear(2, 2), nn.Linear(2, 2)), (30, 3)),  # per-sample
    (Pooled, (5, 4)),
    # convolutions: the grouped-convolution branch and the ghost branch
    (
        lambda: Reuse(
            nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1), Channels(nn.Identity(), 75)
        ),
        (2, 5, 5),
    ),
    (
        lambda: Reuse(nn.Conv2d(6, 8, 1), nn.Conv2d(8, 8, 2, padding="same"), Channels(nn.Identity(), 32)),
        (6, 2, 2),
    ),
    (
        lambda: Reuse(nn.Conv1d(2, 3, 3), nn.Conv1d(3, 3, 3, padding="same"), Channels(nn.Identity(), 18)),
        (2, 8),
    ),
    (lambda: Reuse(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 2), masked=True), (5,)),
    (lambda: Reuse(nn.Conv1d(2, 4, 1), nn.GroupNorm(2, 4), Channels(nn.Identity(), 24)), (2, 6)),
    (TwoTokenFields, "tokens"),
]


@pytest.mark.parametrize("case", range(len(REUSE_CASES)))
def test_reused_layers_match_per_record_gradients(case):
    # a layer run several times in one forward pass: each record's gradient is the sum
    # of its calls', clipped as one; adding the calls' squared norms instead (the
    # engine before issue 10) under-clips and fails this comparison
    factory, shape = REUSE_CASES[case]
    a, b = twin(factory)
    torch.manual_seed(8)
    x = torch.randint(0, 6, (7, 8)) if shape == "tokens" else torch.randn(7, *shape)
    with torch.no_grad():
        y = torch.randn(a(x).shape) * 3
    for clip in (0.05, 0.5, 100.0):
        theirs = looped_clipped_sum(a, x, y, nn.MSELoss(), clip)
        ours = engine_clipped_sum(b, x, y, nn.MSELoss(), clip)
        assert len(theirs) == len(ours)
        for t, o in zip(theirs, ours, strict=True):
            assert torch.allclose(t, o, atol=1e-6, rtol=1e-4)


def test_the_engine_counts_the_calls_of_every_step():
    torch.manual_seed(9)
    model = Reuse(nn.Linear(5, 4), nn.Linear(4, 4), nn.Linear(4, 2), again=2, train_only=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    engine = BookKeeping(
        model, opt, nn.MSELoss(), noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=4
    )
    assert forward_probe(model, torch.randn(2, 5)).calls["body"] == 1  # eval mode: one call
    engine.zero_grad()
    engine.accumulate(engine.per_sample_loss(engine(torch.randn(4, 5)), torch.randn(4, 2)))
    assert engine.calls_ == {"body": 3}


def test_a_layer_run_on_part_of_the_batch_is_refused():
    class Subset(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            h = self.fc(x)
            extra = torch.zeros_like(h)
            keep = x[:, 0] > 0
            extra[keep] = self.fc(h[keep])  # rows of a sub-batch: not the records' rows
            return h + extra

    torch.manual_seed(10)
    x = torch.randn(8, 3)
    x[:2, 0], x[2:, 0] = 1.0, -1.0
    with pytest.raises(UsageError, match="'fc' ran on 2 rows of a batch of 8"):
        engine_clipped_sum(Subset(), x, torch.randn(8, 3), nn.MSELoss(), 1.0)
