"""Worker processes for encryption, scoring and decryption.

TenSEAL holds the GIL, so threads do not scale: work is spread over processes that
receive and return serialized ciphertexts (bytes). Public material (the scorer's
context and model) may travel to workers any way; secret material reaches workers only
through ``fork`` (inherited memory, never a pipe or a pickle), and callers fall back to
one process where ``fork`` is unavailable.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from privdl.encrypted.ciphertext import init_context_worker

__all__ = ["map_forked", "map_ordered"]


def _mp_context(secret: bool, preload: Sequence[str]) -> Any:
    methods = multiprocessing.get_all_start_methods()
    if secret:
        return multiprocessing.get_context("fork")
    # public work (scoring) starts from a clean interpreter, so a scoring worker never
    # inherits the memory of a process that holds a secret key
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # workers fork from a server that has already imported these: pools start fast
    ctx.set_forkserver_preload(list(preload))
    return ctx


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> bool:
    """Ask the kernel to SIGTERM this worker when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _init_worker(parent: int, initializer: Callable[..., None], *initargs: Any) -> None:
    """Worker start: exit when the process that made the pool dies, then run the
    caller's initializer."""
    if not _die_with_parent() or os.getppid() != parent:
        # no prctl; or a forkserver worker, whose parent is the server (it outlives a
        # killed main process while its workers hold its pipe); or the parent already
        # died before prctl: watch the main process itself
        threading.Thread(target=_watch_process, args=(parent,), daemon=True).start()
    initializer(*initargs)


def _watch_process(pid: int, interval: float = 0.5) -> None:
    """Exit this worker once process ``pid`` has ended."""
    try:
        fd = os.pidfd_open(pid)  # type: ignore[attr-defined,unused-ignore]
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])  # a pidfd turns readable when its process ends
        os._exit(1)
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except OSError:
            pass  # EPERM: it still exists
        time.sleep(interval)


def map_ordered(
    task: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...] = (),
    workers: int,
    window: int | None = None,
    secret: bool = False,
    preload: Sequence[str] = ("tenseal",),
) -> Iterator[Any]:
    """``map(task, items)`` over ``workers`` processes, in order, with bounded memory.

    Args:
        task: a module-level function (workers find it by name).
        items: the inputs, consumed lazily.
        initializer, initargs: run once in each worker before its first task (the
            owner of ``task`` keeps the worker's state: the scorer, or the context of
            :mod:`~privdl.encrypted.ciphertext`). Each worker is first made to exit
            when its parent dies (``PR_SET_PDEATHSIG`` on Linux, else, and for
            forkserver workers, a watch of the pool's process), so a killed
            ``privdl`` leaves no workers behind.
        workers: processes.
        window: at most this many items in flight (default ``2 * workers``), so a
            stream of any length is processed in flat memory.
        secret: the initargs hold secret material: workers are forked (inherited
            memory) instead of started from a clean interpreter.
        preload: modules a forkserver imports once for all workers.
    """
    limit = window or 2 * workers
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_mp_context(secret, preload),
        initializer=_init_worker,
        initargs=(os.getpid(), initializer, *initargs),
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
    """Like :func:`map_ordered` for a secret context: it reaches workers by ``fork`` only.

    ``task`` is :func:`~privdl.encrypted.ciphertext.encrypt_task` or
    :func:`~privdl.encrypted.ciphertext.decrypt_task`, run under the context ``blob``.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        raise RuntimeError("secret contexts are only shared with forked workers")
    # fork: initargs are inherited by the child, never pickled
    yield from map_ordered(
        task,
        items,
        initializer=init_context_worker,
        initargs=(blob, scale_bits),
        workers=workers,
        secret=True,
    )
