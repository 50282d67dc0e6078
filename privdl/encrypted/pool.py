"""Worker processes for encryption, scoring and decryption.

TenSEAL holds the GIL, so threads do not scale: work is spread over processes that
receive and return serialized ciphertexts (bytes). Public material (the scorer's
context and model) may travel to workers any way; secret material reaches workers only
through ``fork`` (inherited memory, never a pipe or a pickle), and callers fall back to
one process where ``fork`` is unavailable.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

__all__ = ["decrypt_task", "encrypt_task", "map_forked", "map_ordered", "score_task"]

_STATE: dict[str, Any] = {}


def _init(kind: str, payload: Any) -> None:
    if kind == "score":
        from privdl.encrypted.scorer import EncryptedScorer

        _STATE["scorer"], _STATE["plan"] = EncryptedScorer.from_recipe(payload)
    elif kind == "context":
        tenseal: Any = __import__("tenseal")
        blob, scale_bits = payload
        ctx = tenseal.context_from(blob, n_threads=1)
        ctx.global_scale = float(2**scale_bits)
        _STATE["ctx"] = ctx


def score_task(item: tuple[Any, Any]) -> Any:
    chunk, partial = item
    return _STATE["scorer"].score_chunk(chunk, _STATE["plan"], partial)


def encrypt_task(block: Any) -> Any:
    from privdl.encrypted.keys import encrypt_block

    return encrypt_block(_STATE["ctx"], block)


def decrypt_task(chunk: Any) -> Any:
    from privdl.encrypted.keys import decrypt_block

    return decrypt_block(_STATE["ctx"], chunk)


def _mp_context(secret: bool) -> Any:
    methods = multiprocessing.get_all_start_methods()
    if secret:
        return multiprocessing.get_context("fork")
    # public work (scoring) starts from a clean interpreter, so a scoring worker never
    # inherits the memory of a process that holds a secret key
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # workers fork from a server that has already imported TenSEAL: pools start fast
    ctx.set_forkserver_preload(["tenseal", "privdl.encrypted.scorer"])
    return ctx


def map_ordered(
    task: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    init: tuple[str, Any],
    workers: int,
    window: int | None = None,
    secret: bool = False,
) -> Iterator[Any]:
    """``map(task, items)`` over ``workers`` processes, in order, with bounded memory.

    At most ``window`` (default ``2 * workers``) items are in flight, so a stream of any
    length is processed in flat memory.
    """
    limit = window or 2 * workers
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=_mp_context(secret), initializer=_init, initargs=init
    ) as executor:
        pending: deque[Future[Any]] = deque()
        for item in items:
            pending.append(executor.submit(task, item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def map_forked(
    task: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    blob: bytes,
    scale_bits: int,
    workers: int,
) -> Iterator[Any]:
    """Like :func:`map_ordered` for a secret context: it reaches workers by ``fork`` only."""
    if "fork" not in multiprocessing.get_all_start_methods():
        raise RuntimeError("secret contexts are only shared with forked workers")
    # fork: initargs are inherited by the child, never pickled
    yield from map_ordered(task, items, init=("context", (blob, scale_bits)), workers=workers, secret=True)
