"""CKKS operations on one block of rows: what the keys, the scorer and the workers share.

A block is at most N/2 rows; feature-major packing puts each column of a block in one
ciphertext (:func:`encrypt_block`), per-row packing one row in one ciphertext
(:func:`encrypt_row`). :func:`decrypt_block` turns a chunk of scores back into an
array. These functions take a TenSEAL context and nothing else, so both the data
owner's :class:`~privdl.encrypted.keys.HEKeys` and the worker processes of
:mod:`~privdl.encrypted.pool` call them without importing each other.

The worker side of the secret context lives here too (:func:`init_context_worker`,
:func:`encrypt_task`, :func:`decrypt_task`): a worker receives the serialized context
by ``fork`` only, never through a pipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from privdl._optional import require
from privdl.encrypted.wire import Chunk
from privdl.errors import InputError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "decrypt_block",
    "decrypt_task",
    "encrypt_block",
    "encrypt_row",
    "encrypt_task",
    "init_context_worker",
    "tenseal",
]

_WORKER: dict[str, Any] = {}


def tenseal() -> Any:
    """The ``tenseal`` module (``privdl[he]``), imported on first use."""
    return require("tenseal", "he")


def encrypt_block(ctx: Any, block: np.ndarray) -> Chunk:
    """Encrypt ``block`` (rows x columns, rows <= N/2): one ciphertext per column."""
    ts = tenseal()
    cols = block.T
    return Chunk(
        rows=int(block.shape[0]),
        blobs=tuple(ts.ckks_vector(ctx, col.tolist()).serialize() for col in cols),
    )


def encrypt_row(ctx: Any, row: np.ndarray) -> Chunk:
    """Per-row packing: one ciphertext holding one row's features (in column order)."""
    ts = tenseal()
    return Chunk(rows=1, blobs=(ts.ckks_vector(ctx, row.tolist()).serialize(),))


def decrypt_block(ctx: Any, chunk: Chunk) -> np.ndarray:
    """Decrypt one chunk of scores to an array of shape (rows, outputs).

    Raises:
        InputError: a ciphertext made under other keys, or a chunk whose values do not
            match its row count.
    """
    import numpy as np

    ts = tenseal()
    out = np.empty((chunk.rows, len(chunk.blobs)))
    for j, blob in enumerate(chunk.blobs):
        try:
            vec = ts.ckks_vector_from(ctx, blob)
        except Exception:
            raise InputError("a score ciphertext cannot be read with these keys") from None
        values = vec.decrypt()
        if len(values) != chunk.rows:
            raise InputError(f"a score chunk holds {len(values)} values for {chunk.rows} rows")
        out[:, j] = values
    return out


# -- worker processes (secret context, reached by fork only) ----------------------------
def init_context_worker(blob: bytes, scale_bits: int) -> None:
    """Worker initializer: rebuild the context from ``blob`` (inherited by ``fork``)."""
    ctx = tenseal().context_from(blob, n_threads=1)
    ctx.global_scale = float(2**scale_bits)
    _WORKER["ctx"] = ctx


def encrypt_task(block: np.ndarray) -> Chunk:
    """Worker task: :func:`encrypt_block` under the worker's context."""
    return encrypt_block(_WORKER["ctx"], block)


def decrypt_task(chunk: Chunk) -> np.ndarray:
    """Worker task: :func:`decrypt_block` under the worker's context."""
    return decrypt_block(_WORKER["ctx"], chunk)
