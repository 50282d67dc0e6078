"""Feeding data to DP-SGD: exact Poisson sampling by vectorized indexing.

DP-SGD's accountant assumes *Poisson sampling*: at every step each record joins the
batch independently with probability ``q``, so batch sizes vary and a batch may be
empty. :class:`PoissonSampler` draws exactly that, as one vectorized comparison of ``n``
uniforms with ``q``. In-memory data (arrays, tensors, DataFrames, ``TensorDataset``)
becomes two tensors once and each batch is ``X[idx]``: no per-record collation, which is
the largest cost of a small model's step on CPU. Other datasets are read record by
record for the sampled indices only and collated with the loader's ``collate_fn``.

``secure_mode`` draws the uniforms (and the trainer's Gaussian noise) from ChaCha20
keyed by the operating system's CSPRNG (``os.urandom``) through ``cryptography``,
because torch's generators are not cryptographically secure and torchcsprng does not
install with current torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from privdl._optional import require
from privdl.errors import InputError, UsageError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ChaChaRandom",
    "IndexedData",
    "PoissonSampler",
    "TensorData",
    "as_data",
    "audit_inputs",
    "check_finite",
    "resolve_device",
    "shared_frame_rows",
    "shared_rows",
    "steps_per_epoch",
    "to_device",
    "to_tensor",
    "val_overlap",
]


class ChaChaRandom:
    """Uniform and Gaussian samples from ChaCha20 keyed by ``os.urandom``.

    A cryptographically secure source for Poisson sampling and DP noise. Gaussians come
    from the Box-Muller transform in float64; the trainer then applies Opacus' defence
    against floating-point attacks (a sum of four draws, scaled).
    """

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        key = os.urandom(32)
        nonce = os.urandom(16)
        self._enc = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()

    def _u64(self, count: int) -> np.ndarray:
        raw = self._enc.update(bytes(8 * count))
        return np.frombuffer(raw, dtype=np.uint64)

    def uniform(self, count: int) -> np.ndarray:
        """``count`` floats uniform in [0, 1) with 53 random bits each."""
        return (self._u64(count) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def normal(self, count: int) -> np.ndarray:
        """``count`` standard normal float64 draws (Box-Muller)."""
        half = (count + 1) // 2
        u1 = 1.0 - self.uniform(half)  # (0, 1]: log is finite
        u2 = self.uniform(half)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
        return z[:count]


class PoissonSampler:
    """Exact Poisson sampling of record indices.

    Each call of :meth:`sample` includes every index in ``range(n)`` independently with
    probability ``sample_rate``; the batch size is random and may be zero.

    Indices are drawn on the host and sent to ``device`` asynchronously (from pinned
    memory): the batch size is known on the host, so a GPU step never waits for a
    device-to-host copy (a sampler on the GPU would need two per step).

    Args:
        n: number of records.
        sample_rate: inclusion probability ``q`` in (0, 1].
        generator: a CPU ``torch.Generator`` for reproducible sampling.
        device: where the indices go (the data's device).
        secure: draw from :class:`ChaChaRandom` instead of torch's generator.
    """

    def __init__(
        self,
        n: int,
        sample_rate: float,
        *,
        generator: torch.Generator | None = None,
        device: Any = "cpu",
        secure: bool = False,
    ) -> None:
        if n < 1:
            raise InputError("cannot sample from an empty dataset")
        if not 0.0 < sample_rate <= 1.0:
            raise InputError("sample_rate must be in (0, 1]")
        self.n = int(n)
        self.sample_rate = float(sample_rate)
        self.generator = generator
        self.device = device
        self._secure = ChaChaRandom() if secure else None

    def sample(self) -> torch.Tensor:
        """One Poisson batch: a 1-D int64 tensor of distinct indices in increasing order.

        The gaps between consecutive included indices of a Poisson sample are i.i.d.
        Geometric(q), so drawing about ``n q`` geometric gaps and keeping their running
        sums below ``n`` gives exactly the same distribution as ``n`` coin flips, at a
        fraction of the cost for small ``q``.
        """
        import torch

        n, q = self.n, self.sample_rate
        if q >= 1.0:
            return torch.arange(n, device=self.device)
        idx = self._sample_on_host(n, q)
        kind = torch.device(self.device).type
        if kind == "cpu":
            return idx
        if kind == "cuda":  # page-locked, so the copy does not wait for the GPU
            return idx.pin_memory().to(self.device, non_blocking=True)
        return idx.to(self.device)

    def _sample_on_host(self, n: int, q: float) -> torch.Tensor:
        import torch

        mean = n * q
        m = int(mean + 6.0 * math.sqrt(mean) + 16)
        parts: list[torch.Tensor] = []
        offset = -1  # index before the first record
        while True:
            gaps = self._geometric(m)
            pos = torch.cumsum(gaps, 0) + offset
            parts.append(pos[pos < n])
            if int(pos[-1]) >= n:  # the sample ended inside this draw
                break
            offset = int(pos[-1])
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _geometric(self, m: int) -> torch.Tensor:
        """``m`` Geometric(q) draws on {1, 2, ...} as int64."""
        import torch

        if self._secure is not None:
            u = 1.0 - self._secure.uniform(m)  # (0, 1]
            g = np.floor(np.log(u) / math.log1p(-self.sample_rate)) + 1
            return torch.from_numpy(g.astype(np.int64))
        out = torch.empty(m, dtype=torch.float64)
        out.geometric_(self.sample_rate, generator=self.generator)
        return out.to(torch.int64)


@dataclass
class TensorData:
    """In-memory features and (optional) targets as tensors."""

    X: Any
    y: Any

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[Any, Any]:
        return self.X[idx], (None if self.y is None else self.y[idx])


@dataclass
class IndexedData:
    """A map-style dataset read record by record, for the sampled indices only."""

    dataset: Any
    collate_fn: Callable[[list[Any]], Any]

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, idx: torch.Tensor) -> tuple[Any, Any]:
        items = [self.dataset[int(i)] for i in idx.tolist()]
        out = self.collate_fn(items)
        if isinstance(out, Sequence) and not isinstance(out, str) and len(out) == 2:
            return out[0], out[1]
        return out, None


def to_tensor(value: Any, *, what: str) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value
    try:
        import pandas as pd

        if isinstance(value, pd.DataFrame | pd.Series):
            value = value.to_numpy()
    except ImportError:  # pragma: no cover - pandas is a core dependency
        pass
    arr = np.asarray(value)
    if arr.dtype == object:
        raise InputError(f"{what} must be numeric; encode text columns first (TableEncoder)")
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # pandas copy-on-write hands out read-only views
        arr = arr.copy()
    return torch.from_numpy(arr)


def as_data(data: Any, *, what: str = "data") -> TensorData | IndexedData:
    """Turn training data into :class:`TensorData` (in memory) or :class:`IndexedData`.

    Accepts ``(X, y)`` (numpy, torch, pandas), a ``TensorDataset``, a ``DataLoader``
    (its dataset and ``collate_fn`` are used; its own sampler is replaced by Poisson
    sampling), or any map-style torch ``Dataset``. DataFrames with a target column are
    handled by the trainer (it owns the TableEncoder).

    Raises:
        InputError: unsupported type, mismatched lengths, non-numeric arrays.
    """
    torch: Any = require("torch", "train")
    from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

    if isinstance(data, tuple | list) and len(data) == 2:
        X = to_tensor(data[0], what=f"{what} features")
        y = None if data[1] is None else to_tensor(data[1], what=f"{what} target")
        if X.ndim == 0 or len(X) == 0:
            raise InputError(f"{what} has no rows")
        if y is not None and len(y) != len(X):
            raise InputError(f"{what}: {len(X)} feature rows but {len(y)} targets")
        check_finite(X, y, what=what, columns=getattr(data[0], "columns", None))
        return TensorData(X, y)
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            raise InputError("Poisson sampling needs a map-style dataset, not an IterableDataset")
        inner = as_data(data.dataset, what=what)
        if isinstance(inner, IndexedData) and data.collate_fn is not None:
            return IndexedData(inner.dataset, data.collate_fn)
        return inner
    if isinstance(data, TensorDataset):
        tensors = data.tensors
        if len(tensors) not in (1, 2):
            raise InputError(f"{what}: a TensorDataset needs (features,) or (features, target)")
        check_finite(tensors[0], tensors[1] if len(tensors) == 2 else None, what=what)
        return TensorData(tensors[0], tensors[1] if len(tensors) == 2 else None)
    if isinstance(data, IterableDataset):
        raise InputError("Poisson sampling needs a map-style dataset, not an IterableDataset")
    if isinstance(data, Dataset):
        from torch.utils.data import default_collate

        return IndexedData(data, default_collate)
    if isinstance(data, torch.Tensor | np.ndarray):
        raise UsageError(f"{what}: pass (X, y) or a Dataset, not a bare array")
    raise InputError(f"{what}: unsupported type {type(data).__name__}")


def check_finite(X: Any, y: Any, *, what: str, columns: Any = None) -> None:
    """Refuse NaN or infinite features or targets (one such value would turn every
    weight into NaN); the message names the column (``columns``: a DataFrame's) or
    the feature index, and counts the rows, never a value.

    Raises:
        InputError: a non-finite feature or target.
    """
    import torch

    if torch.is_tensor(X) and torch.is_floating_point(X) and X.ndim >= 1:
        bad = ~torch.isfinite(X.reshape(len(X), -1))
        if bool(bad.any()):
            per_feature = bad.any(dim=0)
            index = int(per_feature.nonzero()[0, 0])
            rows = int(bad.any(dim=1).sum())
            if columns is not None and X.ndim == 2 and len(columns) == X.shape[1]:
                where = f"column {str(columns[index])!r}"
            else:
                where = f"feature {index}"
            others = int(per_feature.sum()) - 1
            more = f" (and {others} other feature(s))" if others else ""
            raise InputError(
                f"{what}: {where}{more} has non-finite values (NaN or inf) in {rows} row(s); "
                "drop or impute them before training"
            )
    if torch.is_tensor(y) and torch.is_floating_point(y):
        rows = int((~torch.isfinite(y.reshape(len(y), -1))).any(dim=1).sum()) if y.ndim else 0
        if rows:
            raise InputError(
                f"{what}: the target has non-finite values (NaN or inf) in {rows} row(s); "
                "drop them before training"
            )


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Opacus' convention: ``ceil(n / batch_size)`` steps, sample rate ``1 / steps``."""
    return max(1, math.ceil(n / batch_size))


def to_device(x: Any, device: Any) -> Any:
    """``x`` (a tensor, or a dict / list / tuple of them) moved to ``device``."""
    import torch

    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(to_device(v, device) for v in x)
    return x


# --------------------------------------------------------------------------------------
# validation data that overlaps the training data
# --------------------------------------------------------------------------------------
def _row_digests(data: TensorData) -> list[bytes]:
    """A 128-bit digest of each row (features and target bytes), in order."""
    import hashlib

    import torch

    def as_bytes(t: Any, n: int) -> Any:
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        return t.reshape(n, -1).view(torch.uint8).numpy() if t.numel() else np.zeros((n, 0), np.uint8)

    n = len(data)
    parts = [data.X] + ([] if data.y is None else [data.y])
    out: list[bytes] = []
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        rows = np.hstack([as_bytes(t[start:stop], stop - start) for t in parts])
        out.extend(hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows)
    return out


def shared_frame_rows(data: Any, val: Any, target: str | None) -> int | None:
    """For two DataFrames: how many ``val`` rows equal a training row on every column
    both hold (the raw rows, pseudonyms included when given, not the encoded features:
    distinct people who look alike after generalization are not the same record).
    ``None`` when they are not both DataFrames."""
    import pandas as pd

    if val is None or not (isinstance(data, pd.DataFrame) and isinstance(val, pd.DataFrame)):
        return None
    common = [c for c in data.columns if c in val.columns]
    if not common or (target is not None and target not in common):
        return 0
    try:
        seen = set(pd.util.hash_pandas_object(data[common], index=False).to_numpy().tolist())
        hashed = pd.util.hash_pandas_object(val[common], index=False).to_numpy()
    except TypeError:  # unhashable cells (lists): fall back to the encoded rows
        return None
    return int(sum(1 for h in hashed.tolist() if h in seen))


def shared_rows(train: Any, val: Any) -> int | None:
    """How many ``val`` rows equal a training row exactly (features and target).

    ``None`` when it cannot be checked cheaply (a Dataset read record by record that is
    neither the training dataset nor a Subset of the same one).
    """
    if val is None:
        return None
    if isinstance(train, TensorData) and isinstance(val, TensorData):
        if val.X.shape[1:] != train.X.shape[1:] or (val.y is None) != (train.y is None):
            return 0
        # the same dtype as the training tensors, so equal values have equal bytes
        val = TensorData(val.X.to(train.X.dtype), None if val.y is None else val.y.to(train.y.dtype))
        seen = set(_row_digests(train))
        return sum(d in seen for d in _row_digests(val))
    if isinstance(train, IndexedData) and isinstance(val, IndexedData):
        from torch.utils.data import Subset

        a, b = train.dataset, val.dataset
        if a is b:
            return len(b)
        if isinstance(a, Subset) and isinstance(b, Subset) and a.dataset is b.dataset:
            return len(set(map(int, a.indices)) & set(map(int, b.indices)))
    return None


def resolve_device(device: str) -> Any:
    """The torch device ``device`` names (``"auto"``: CUDA when present, else CPU).

    Raises:
        UsageError: an unknown device, or one (CUDA, MPS, ...) asked for where there
            is none.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device='cuda' but no CUDA device is available")
    if dev.type != "cpu":
        try:  # e.g. "mps" on a machine without it, or a device index out of range
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError, AttributeError):
            raise UsageError(f"device {device!r} is not available") from None
    return dev


def audit_inputs(data: Any) -> list[Any]:
    """What an audit entry records of training data: the in-memory parts, which the
    log fingerprints (hashes, shapes, never values), or the data's kind."""
    if isinstance(data, tuple | list) and len(data) == 2:
        return [part for part in data if part is not None]
    if hasattr(data, "columns") or hasattr(data, "shape"):
        return [data]
    return [{"kind": type(data).__name__, "sha256": None}]


def val_overlap(
    data: Any, val: Any, target: str | None, train: Any, valid: Any, *, stacklevel: int = 3
) -> int | None:
    """How many ``val`` rows are training rows (raw DataFrame rows when both are frames,
    else the prepared ``train`` / ``valid``); warns when there are some. The count is
    for the trainer's own screen only, never for a report (it is not DP)."""
    import warnings

    shared = shared_frame_rows(data, val, target)
    if shared is None:
        shared = shared_rows(train, valid)
    if shared:
        warnings.warn(
            f"val shares {shared} row(s) with the training data: its metric is then "
            "computed partly on training records, without DP",
            UserWarning,
            stacklevel=stacklevel,
        )
    return shared
