"""Poisson sampling and data adaptation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from privdl.errors import InputError, UsageError  # noqa: E402
from privdl.train.data import (  # noqa: E402
    ChaChaRandom,
    IndexedData,
    PoissonSampler,
    TensorData,
    as_data,
    steps_per_epoch,
)


def draw(sampler, times):
    return [sampler.sample() for _ in range(times)]


@pytest.mark.parametrize("secure", [False, True])
def test_poisson_batches_have_binomial_sizes_and_uniform_inclusion(secure):
    n, q, reps = 400, 0.05, 4000
    gen = None if secure else torch.Generator().manual_seed(3)
    sampler = PoissonSampler(n, q, generator=gen, secure=secure)
    sizes = np.empty(reps)
    counts = np.zeros(n)
    for r, idx in enumerate(draw(sampler, reps)):
        sizes[r] = len(idx)
        counts[idx.numpy()] += 1
    mean, var = n * q, n * q * (1 - q)
    # 5 standard errors: a correct sampler fails this about once in 3 million runs
    assert abs(sizes.mean() - mean) < 5 * math.sqrt(var / reps)
    assert abs(sizes.var() - var) < 0.15 * var
    freq = counts / reps
    assert abs(freq.mean() - q) < 0.002
    # every record has the same inclusion probability (no position bias)
    first, last = freq[: n // 2].mean(), freq[n // 2 :].mean()
    assert abs(first - last) < 0.005


def test_empty_batches_happen_at_the_poisson_rate():
    n, q, reps = 6, 0.1, 5000
    sampler = PoissonSampler(n, q, generator=torch.Generator().manual_seed(0))
    empty = sum(len(i) == 0 for i in draw(sampler, reps)) / reps
    assert abs(empty - (1 - q) ** n) < 0.03


def test_full_rate_takes_every_record():
    assert PoissonSampler(7, 1.0).sample().tolist() == list(range(7))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3000), q=st.floats(0.0005, 0.999), seed=st.integers(0, 10**6))
def test_indices_are_distinct_sorted_and_in_range(n, q, seed):
    idx = PoissonSampler(n, q, generator=torch.Generator().manual_seed(seed)).sample()
    assert idx.dtype == torch.int64
    if len(idx):
        assert int(idx.min()) >= 0 and int(idx.max()) < n
        assert bool((idx[1:] > idx[:-1]).all())


def test_sampler_argument_checks():
    with pytest.raises(InputError):
        PoissonSampler(0, 0.1)
    with pytest.raises(InputError):
        PoissonSampler(10, 0.0)


def test_chacha_uniform_and_normal_moments():
    rng = ChaChaRandom()
    u = rng.uniform(200_000)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005
    z = rng.normal(200_001)
    assert len(z) == 200_001
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    # two generators are independent streams
    assert not np.array_equal(ChaChaRandom().uniform(8), ChaChaRandom().uniform(8))


def test_as_data_accepts_arrays_tensors_and_frames():
    X = np.arange(12, dtype=np.float64).reshape(6, 2)
    y = np.array([0, 1, 0, 1, 1, 0])
    for data in [(X, y), (torch.tensor(X), torch.tensor(y)), (pd.DataFrame(X), pd.Series(y))]:
        out = as_data(data)
        assert isinstance(out, TensorData)
        assert out.X.dtype in (torch.float32, torch.float64) and len(out) == 6
        _, yb = out.batch(torch.tensor([1, 3]))
        assert yb.tolist() == [1, 1]


def test_as_data_datasets_and_loaders():
    X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    ds = torch.utils.data.TensorDataset(X, y)
    assert isinstance(as_data(ds), TensorData)
    assert isinstance(as_data(torch.utils.data.DataLoader(ds, batch_size=4)), TensorData)

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return X[i], y[i]

    out = as_data(torch.utils.data.DataLoader(Plain(), batch_size=4))
    assert isinstance(out, IndexedData) and len(out) == 10
    xb, yb = out.batch(torch.tensor([2, 5]))
    assert torch.equal(xb, X[[2, 5]]) and torch.equal(yb, y[[2, 5]])


def test_as_data_refusals():
    with pytest.raises(InputError):
        as_data((np.zeros((3, 2)), np.zeros(4)))
    with pytest.raises(InputError):
        as_data((np.array([["a"], ["b"]], dtype=object), np.zeros(2)))
    with pytest.raises(UsageError):
        as_data(np.zeros((3, 2)))

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from ()

    with pytest.raises(InputError):
        as_data(Stream())
    with pytest.raises(InputError):
        as_data("not data")


def test_steps_per_epoch_follows_opacus():
    assert steps_per_epoch(1000, 256) == 4
    assert steps_per_epoch(10, 256) == 1
