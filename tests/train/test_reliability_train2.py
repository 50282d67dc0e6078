"""Issue 12 item 4 (training): recurrent models save and checkpoint; a fit that fails
after its ledger reservation settles it with the steps actually taken."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")
from torch import nn  # noqa: E402

from privdl import PrivateTrainer  # noqa: E402
from privdl.budget.accounting import epsilon_of  # noqa: E402


class Recurrent(nn.Module):
    def __init__(self, kind=nn.LSTM):
        super().__init__()
        self.rnn = kind(4, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        out, _ = self.rnn(x.view(x.shape[0], 3, 4))
        return self.head(out[:, -1])


class FailsAt(nn.Module):
    """A model whose forward raises on its k-th training-mode call."""

    def __init__(self, k):
        super().__init__()
        self.lin = nn.Linear(12, 2)
        self.calls, self.k = 0, k

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.k:
                raise RuntimeError("boom")
        return self.lin(x)


def data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g), torch.randint(0, 2, (n,), generator=g)


def trainer(model, **kw):
    kw = {"epsilon": 2.0, "epochs": 2, "batch_size": 16, "seed": 0, "progress": False, **kw}
    return PrivateTrainer(model, **kw)


@pytest.fixture
def ledger(tmp_path):
    from privdl.budget.ledger import BudgetLedger

    led = BudgetLedger(tmp_path / "budget.db")
    led.set_budget("ds", epsilon=5.0, delta=1e-5)
    yield led
    led.close()


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
def test_recurrent_model_saves_loads_and_predicts_the_same(tmp_path, kind):
    X, y = data()
    tr = trainer(Recurrent(kind)).fit((X, y))
    assert any("DP" in note for note in tr.replaced_modules_)
    tr.save(tmp_path / "m")
    back = PrivateTrainer.load(tmp_path / "m", model=Recurrent(kind))
    np.testing.assert_allclose(back.predict_proba(X), tr.predict_proba(X), atol=1e-5)


def test_recurrent_run_with_checkpoint_dir_completes_and_resumes(tmp_path, ledger):
    X, y = data()
    ckpt = tmp_path / "ckpt"
    tr = trainer(Recurrent(), checkpoint_dir=ckpt, ledger=ledger, dataset_id="ds").fit((X, y))
    assert tr.steps_ == tr.planned_steps_
    assert (ckpt / "model.safetensors").is_file()
    (run,) = ledger.runs("ds")
    assert run.status == "settled"
    # the checkpoint loads back into the plain module
    again = PrivateTrainer.resume(ckpt, model=Recurrent(), ledger=ledger)
    assert again.steps_ == tr.steps_


@pytest.mark.parametrize("k", [1, 5])
def test_a_fit_that_raises_mid_run_settles_the_steps_taken(ledger, k):
    """Settled for the steps completed plus the one that raised (it may have applied its
    noisy update before failing: charging it is the safe side)."""
    X, y = data()
    tr = trainer(FailsAt(k), ledger=ledger, dataset_id="ds", grad_sample_mode="hooks")
    with pytest.raises(RuntimeError, match="boom"):
        tr.fit((X, y))
    taken = tr.steps_ + 1
    assert taken < tr.planned_steps_
    (run,) = ledger.runs("ds")
    assert run.status == "settled"
    want = epsilon_of([(tr.noise_multiplier_, tr.sample_rate_, taken)], delta=tr.delta_) if taken else 0.0
    assert ledger.spent("ds") == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert tr.epsilon == pytest.approx(want, rel=1e-6, abs=1e-9)


class Encoder(nn.Module):
    """A transformer block called with a float padding mask."""

    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, batch_first=True, dropout=0.0)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = x.view(x.shape[0], 3, 4)
        return self.head(self.enc(x, src_key_padding_mask=torch.zeros(x.shape[0], 3))[:, 0])


class Attention(nn.Module):
    def __init__(self, mask_dtype):
        super().__init__()
        self.att = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 2)
        self.mask_dtype = mask_dtype

    def forward(self, x):
        x = x.view(x.shape[0], 3, 4)
        mask = torch.zeros(x.shape[0], 3, dtype=self.mask_dtype)
        mask[:, 2] = 1
        return self.head(self.att(x, x, x, key_padding_mask=mask)[0][:, 0])


class Positional(nn.Module):
    """A learned positional parameter with a dropout in the same module."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(3, 4))
        self.drop = nn.Dropout(0.1)
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(self.drop(x.view(x.shape[0], 3, 4) + self.pos).mean(1))


@pytest.mark.parametrize(
    ("model", "names"),
    [
        (Encoder, ["'enc.self_attn'", "TransformerEncoderLayer", "nn.MultiheadAttention", "boolean"]),
        (lambda: Attention(torch.float32), ["'att'", "boolean mask"]),
        (Positional, ["'pos'", "'drop'", "nn.Embedding"]),
    ],
)
def test_unsupported_layers_are_named_before_any_reservation(ledger, model, names):
    from privdl.errors import UsageError

    X, y = data()
    with pytest.raises(UsageError) as info:
        trainer(model(), ledger=ledger, dataset_id="ds").fit((X, y))
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message
    assert list(ledger.runs("ds")) == []


def test_the_named_alternative_for_a_padding_mask_trains():
    X, y = data()
    tr = trainer(Attention(torch.bool), epochs=1).fit((X, y))
    assert tr.steps_ > 0
