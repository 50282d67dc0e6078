"""One DP training run over several processes (``torchrun``): the process group as the
trainer sees it.

A script that calls ``PrivateTrainer(...).fit(data)`` runs unchanged under
``torchrun --nproc_per_node N`` (one machine) or ``torchrun --nnodes M ...`` (several).
Every rank passes the same data; the run is still *one* DP-SGD run:

* **process group**: the one the script initialized, else one initialized here from
  the torchrun environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``;
  gloo on CPU, NCCL on CUDA, each rank on the GPU ``LOCAL_RANK``) - :func:`join`;
* **one plan**: rank 0 fits the encoder (a DP domain estimate is drawn and charged
  once), calibrates sigma and makes the ledger reservation; the others receive the
  plan (:meth:`Group.from_writer`), so the ledger holds one run, reserved once and
  settled once, and the audit log one entry; a refusal on rank 0 is raised on every rank;
* **same start**: rank 0's initial weights are broadcast (:meth:`Group.broadcast_module`);
* **same data**: the ranks compare their record counts and a sample digest
  (:meth:`Group.check_same_data`): a script that hands each rank its own part is refused;
* **sharding**: rank ``r`` trains on the contiguous block ``[r n / W, (r + 1) n / W)`` of
  the ``n`` records (:meth:`Group.shard`) and draws a Poisson sample of it with the
  *global* rate ``q``, from a generator of its own: every record is in exactly one
  shard and is included independently with probability ``q``, so the union of the
  shards' samples is exactly a Poisson sample of the whole data set with rate ``q``;
* **user level** (``privacy_unit="user"``): users are sharded, not records. The ranks
  also compare their user counts and a SHA-256 of the grouping of records into users
  (:meth:`Group.check_same_users`: a rank given other ``users=`` refuses with an
  ``InputError`` naming counts, never a user id); rank 0 draws every user's kept
  records (seeded, or ChaCha20 in ``secure_mode``) and hands the draw to every rank
  (:class:`~privdl.train.user_level.UserDraw`, what a checkpoint keeps); rank ``r``
  trains on the contiguous block ``[r U / W, (r + 1) U / W)`` of the ``U`` users with
  all their kept records (:meth:`Group.shard_users`; a rank holds only those records)
  and Poisson-samples its users with the run's ``q_user``, from its own generator. Each
  user is in one block and included with probability ``q_user`` independently, so the
  union is a Poisson sample of all users; each rank clips each of its sampled users as
  one unit, and the sums are reduced exactly as below and divided by ``U q_user``. The
  accountant's ``(sigma, q_user, steps)`` are those of the one-process run;
* **one noise draw per step**: each rank clips its records' gradients and sums them;
  rank 0 alone adds the Gaussian noise ``N(0, sigma^2 C^2)`` to its sum, and the sums
  are all-reduced (SUM), then divided by the global expected batch size ``n q``. Every
  rank then holds ``(sum of all clipped gradients + one noise draw) / (n q)``, exactly
  the single-process mechanism, so the accountant's ``(sigma, q, steps)`` are those of
  the global run. This is Opacus' DPDDP choice (``DistributedDPOptimizer`` adds noise on
  rank 0 only). Each rank adding ``N(0, sigma^2 C^2 / W)`` would give the same total
  variance, but W draws per step instead of one (W times the CSPRNG work in
  ``secure_mode``), a total that depends on a rounded ``1 / sqrt(W)``, and noise that
  each rank partly knows (a rank that kept its own share could remove it from the
  released gradient); one draw on one rank has none of these;
* **same weights**: the reduced gradient is the same bytes on every rank and the
  optimizer update is deterministic, so the ranks stay bit-identical; :func:`check_in_sync`
  compares their digests after ``fit`` and raises if they ever differ;
* **one output**: rank 0 writes the model folder (``save``), checkpoints and the audit
  entry; the others wait for it (and see its error, if any).

A search (``privdl.tune``) runs on several processes too, as *one* search
(:mod:`privdl.train.tune_ranks`): rank 0 draws the split, the number of candidates and
their hyperparameters, reserves and settles the one ledger run; each candidate is the
distributed fit above; its held-out score is summed over the ranks' blocks and noised
once, by rank 0 (:meth:`Group.together` lets ranks refuse their arguments together).

A ledger on a SQLite path is refused before any step when the torchrun environment
shows several machines (``WORLD_SIZE > LOCAL_WORLD_SIZE``, ``GROUP_WORLD_SIZE > 1`` or
``NNODES > 1``): rank 0 lands on any machine the rendezvous picks, and a budget kept in
one machine's file is not composed with the runs charged from the others. Use a
``postgresql://`` ledger there.

Your own loop (:func:`privdl.make_private`, :mod:`privdl.train.private_loop`) runs under
torchrun by the same rules and with the same pieces: :func:`join`, the same-data (and
same-users) checks, rank 0's initial weights, rank 0's plan, reservation and kept-record
draw (:func:`on_writer`), each rank's ``run.data_loader`` over its shard
(:meth:`Group.record_block`, :meth:`Group.user_block`) at the global rate, the engines'
all-reduce with rank 0's single noise draw, :func:`check_in_sync` when the block ends,
and rank 0 alone settling the ledger run and writing the audit entry.

Not supported: a model wrapped in ``DistributedDataParallel`` (its hooks average
unclipped gradients: refused with a message, by the trainer and by ``make_private``),
a process group made by other means without the torchrun environment on several
machines (the SQLite check cannot see it).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from privdl._optional import require
from privdl.errors import InputError, UsageError
from privdl.train.data import IndexedData, TensorData

torch: Any = require("torch", "train")

__all__ = [
    "Group",
    "TorchrunEnv",
    "check_in_sync",
    "generator",
    "join",
    "on_writer",
    "refuse_sqlite_across_machines",
    "refuse_wrapped",
    "sample_digest",
    "stream_seed",
    "together",
    "writes",
]

T = TypeVar("T")


@dataclass(frozen=True)
class TorchrunEnv:
    """What the torchrun environment says about this process (``None`` fields: unset).

    Attributes:
        world_size: ``WORLD_SIZE``, the processes of the run.
        rank: ``RANK``.
        local_rank: ``LOCAL_RANK``, this process on its machine (its GPU).
        local_world_size: ``LOCAL_WORLD_SIZE``, processes on this machine.
        nodes: ``GROUP_WORLD_SIZE`` (torchrun's agents, one per machine) or ``NNODES``.
        missing: the variables ``init_process_group("env://")`` needs that are unset.
    """

    world_size: int
    rank: int | None
    local_rank: int | None
    local_world_size: int | None
    nodes: int | None
    missing: tuple[str, ...]

    @classmethod
    def read(cls, environ: Any = None) -> TorchrunEnv:
        env = os.environ if environ is None else environ

        def number(name: str) -> int | None:
            text = str(env.get(name, "")).strip()
            if not text:
                return None
            try:
                return int(text)
            except ValueError:
                raise UsageError(f"environment variable {name} is not an integer") from None

        nodes = [v for v in (number("GROUP_WORLD_SIZE"), number("NNODES")) if v is not None]
        return cls(
            world_size=number("WORLD_SIZE") or 1,
            rank=number("RANK"),
            local_rank=number("LOCAL_RANK"),
            local_world_size=number("LOCAL_WORLD_SIZE"),
            nodes=max(nodes) if nodes else None,
            missing=tuple(n for n in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(n)),
        )

    @property
    def several_machines(self) -> bool:
        """True when the run spans more than one machine, as far as the variables show."""
        if self.nodes is not None and self.nodes > 1:
            return True
        return self.local_world_size is not None and self.world_size > self.local_world_size


@dataclass(frozen=True)
class Group:
    """This process's place in the run's (default) process group.

    Attributes:
        rank: this process, 0 to ``world_size - 1``; rank 0 plans, charges and writes.
        world_size: processes in the run.
        created: the group was initialized by privdl (and is destroyed at exit).
    """

    rank: int
    world_size: int
    created: bool = False

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def adds_noise(self) -> bool:
        """Whether this rank draws the step's noise (rank 0 only, see the module docstring)."""
        return self.rank == 0

    # -- collectives ---------------------------------------------------------------------
    def sum_(self, tensors: Sequence[Any]) -> None:
        """All-reduce (SUM) ``tensors`` in place, as one flat buffer per dtype and device."""
        if self.world_size == 1 or not tensors:
            return
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        buckets: dict[tuple[Any, Any], list[Any]] = {}
        for t in tensors:
            buckets.setdefault((t.device, t.dtype), []).append(t)
        for members in buckets.values():
            flat = _flatten_dense_tensors(members)
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            for t, reduced in zip(members, _unflatten_dense_tensors(flat, members), strict=True):
                t.copy_(reduced)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (a small picklable object), in rank order."""
        if self.world_size == 1:
            return [value]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, value)
        return out

    def from_writer(self, make: Callable[[], T], obj: Any = None, attrs: Sequence[str] = ()) -> T:
        """Run ``make`` on rank 0 only and hand its result (and ``obj``'s ``attrs`` as
        rank 0 set them) to every rank; an exception on rank 0 is raised on every rank.

        The others wait here for rank 0 (a barrier with a result)."""
        payload: list[Any] = [None]
        error: BaseException | None = None
        if self.is_writer:
            try:
                result = make()
                payload[0] = ("ok", result, {a: getattr(obj, a) for a in attrs})
            except BaseException as exc:  # every rank must leave this collective
                error = exc
                payload[0] = ("error", _portable(exc), {})
        if self.world_size > 1:
            torch.distributed.broadcast_object_list(payload, src=0)
        if error is not None:
            raise error
        kind, value, state = payload[0]
        if kind == "error":
            raise value
        for name, attr in state.items():
            setattr(obj, name, attr)
        return value

    def together(self, make: Callable[[], T]) -> T:
        """Run ``make`` on every rank and leave together: when it raises on some rank,
        every rank raises (its own error, else the lowest failing rank's), so that no rank
        waits in a later collective for one that has already left.

        For checks that each rank makes on its own arguments before the first collective
        that depends on them (``privdl.tune``'s)."""
        error: Exception | None = None
        result: Any = None
        try:
            result = make()
        except Exception as exc:  # every rank must reach the gather below
            error = exc
        seen = self.all_gather(None if error is None else _portable(error))
        if error is not None:
            raise error
        for other in seen:
            if other is not None:
                raise other
        return result

    def broadcast_module(self, module: Any) -> None:
        """Give every rank rank 0's parameters and buffers (the run's one initial state)."""
        if self.world_size == 1:
            return
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        tensors = [t.data for t in (*module.parameters(), *module.buffers())]
        buckets: dict[tuple[Any, Any], list[Any]] = {}
        for t in tensors:
            buckets.setdefault((t.device, t.dtype), []).append(t)
        with torch.no_grad():
            for members in buckets.values():
                flat = _flatten_dense_tensors(members)
                torch.distributed.broadcast(flat, src=0)
                for t, value in zip(members, _unflatten_dense_tensors(flat, members), strict=True):
                    t.copy_(value)

    # -- data ----------------------------------------------------------------------------
    def check_same_data(self, data: TensorData | IndexedData, what: str = "training data") -> None:
        """Every rank must pass the same records (each takes its shard of them): the
        ranks compare their record counts and, for in-memory data, a digest of
        (at most) 1,024 evenly spaced records (:func:`sample_digest`).

        Raises:
            InputError: the ranks hold different numbers of records, or different records.
        """
        self._agree(
            len(data),
            sample_digest(data),
            lambda sizes: f"{what} has {sizes} records on ranks 0-{self.world_size - 1}: "
            "under torchrun every rank passes the same data (each trains on its shard)",
            f"{what} differs between the ranks (same size, other records): under torchrun "
            "every rank passes the same data, not its own part (each trains on its shard)",
        )

    def check_same_users(self, n_users: int, grouping_sha256: str) -> None:
        """Every rank of a user-level run must group the records into the same users:
        the ranks compare their user counts and a SHA-256 of the grouping (the records'
        user codes, :class:`~privdl.train.user_level.UserDraw`'s ``grouping_sha256``).

        Raises:
            InputError: the ranks were given other users (the message gives counts,
                never a user id).
        """
        self._agree(
            int(n_users),
            str(grouping_sha256),
            lambda counts: f"the users given have {counts} users on ranks 0-{self.world_size - 1}: "
            "under torchrun every rank passes the same users= (or user_column=) for the same data",
            "the users given group the records differently on the ranks (same number of users): "
            "under torchrun every rank passes the same users= (or user_column=) for the same data",
        )

    def _agree(self, count: int, digest: str | None, counts_differ: Any, digests_differ: str) -> None:
        """Every rank's ``(count, digest)`` compared on every rank.

        Raises:
            InputError: ``counts_differ(the counts, comma-separated)`` when the counts
                differ, else ``digests_differ`` when the digests do.
        """
        seen = self.all_gather((count, digest))
        counts = [c for c, _ in seen]
        if len(set(counts)) > 1:
            raise InputError(counts_differ(", ".join(map(str, counts))))
        if len({d for _, d in seen}) > 1:
            raise InputError(digests_differ)

    def shard_users(self, data: TensorData | IndexedData, users: Any) -> tuple[TensorData | IndexedData, Any]:
        """This rank's contiguous block of the users of ``users`` (a
        :class:`~privdl.train.user_level.UserIndex` over ``data``), with all their kept
        records: ``(the block's kept records, an index of the block over them)``. In-memory
        data is copied to those rows only; a dataset read record by record becomes a
        ``Subset`` of them, so a rank reads only its own users' records.

        Raises:
            InputError: fewer users than processes.
        """
        if self.world_size == 1:
            return data, users
        index, records = self.user_block(users)
        if isinstance(data, TensorData):
            rows = records.to(data.X.device)
            return TensorData(data.X[rows], None if data.y is None else data.y[rows.to(data.y.device)]), index
        from torch.utils.data import Subset

        return IndexedData(Subset(data.dataset, records.tolist()), data.collate_fn), index

    def user_block(self, users: Any) -> tuple[Any, Any]:
        """This rank's contiguous block of the users of ``users`` (a
        :class:`~privdl.train.user_level.UserIndex`): ``(an index of the block over its
        kept records, those records' indices in the whole data)``, see
        :meth:`~privdl.train.user_level.UserIndex.block`.

        Raises:
            InputError: fewer users than processes.
        """
        u = int(users.n_users)
        if u < self.world_size:
            raise InputError(f"training data has {u} users, fewer than the {self.world_size} processes")
        return users.block(*self.shard_range(u))

    def record_block(self, n: int) -> tuple[int, int]:
        """This rank's contiguous block ``[start, stop)`` of ``n`` records.

        Raises:
            InputError: fewer records than processes.
        """
        if n < self.world_size:
            raise InputError(f"training data has {n} records, fewer than the {self.world_size} processes")
        return self.shard_range(n)

    def shard_range(self, n: int) -> tuple[int, int]:
        """This rank's contiguous block of the ``n`` records."""
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size

    def shard(self, data: TensorData | IndexedData) -> TensorData | IndexedData:
        """This rank's shard of ``data`` (a view of in-memory tensors; a ``Subset`` of a
        dataset read record by record, so a rank reads only its own records).

        Raises:
            InputError: fewer records than processes.
        """
        if self.world_size == 1:
            return data
        start, stop = self.record_block(len(data))
        if isinstance(data, TensorData):
            return TensorData(data.X[start:stop], None if data.y is None else data.y[start:stop])
        from torch.utils.data import Subset

        return IndexedData(Subset(data.dataset, range(start, stop)), data.collate_fn)


def sample_digest(data: Any, rows: int = 1024) -> str | None:
    """SHA-256 of the shapes, dtypes and bytes of (at most) ``rows`` evenly spaced
    records of in-memory data: :class:`~privdl.train.data.TensorData`, or a torch
    ``TensorDataset`` (``make_private``'s loader); ``None`` for a dataset read record by
    record: reading it here would cost a pass over storage."""
    from torch.utils.data import TensorDataset

    if isinstance(data, TensorData):
        parts: tuple[Any, ...] = (data.X, data.y)
    elif type(data) is TensorDataset:
        parts = tuple(data.tensors)
    else:
        return None
    n = len(data)
    idx = torch.linspace(0, n - 1, steps=min(rows, n)).round().long()
    digest = hashlib.sha256()
    for part in parts:
        if part is None:
            digest.update(b"none")
            continue
        digest.update(f"{tuple(part.shape)} {part.dtype}".encode())
        picked = part[idx.to(part.device)].detach().cpu().contiguous()
        if picked.dtype == torch.bool:
            picked = picked.to(torch.uint8)
        digest.update(picked.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (privdl's errors do), else a UsageError naming it."""
    try:
        # our own object, round-tripped here (torch's object collectives pickle too:
        # the ranks of a run trust each other, as any torch.distributed job does)
        pickle.loads(pickle.dumps(exc))  # noqa: S301
        return exc
    except Exception:
        return UsageError(f"rank 0 failed: {type(exc).__name__}")


def writes(group: Group | None) -> bool:
    """Whether this process plans, charges the ledger and writes outputs (rank 0, or
    the only process)."""
    return group is None or group.is_writer


def on_writer(group: Group | None, make: Callable[[], T], obj: Any = None, attrs: Sequence[str] = ()) -> T:
    """``make()`` on one process; in a distributed run on rank 0 only, its result (and
    ``obj``'s ``attrs``) handed to every rank (:meth:`Group.from_writer`)."""
    if group is None:
        return make()
    return group.from_writer(make, obj, attrs)


def together(group: Group | None, make: Callable[[], T]) -> T:
    """``make()`` on one process; in a distributed run on every rank, and when it raises
    on one rank every rank raises (:meth:`Group.together`)."""
    if group is None:
        return make()
    return group.together(make)


def refuse_wrapped(*models: Any, who: str = "PrivateTrainer") -> None:
    """Refuse a model wrapped in ``DistributedDataParallel`` (or Opacus' DPDDP).

    Raises:
        UsageError: such a wrapper is in ``models``.
    """
    from torch import nn

    from privdl.train.opacus_step import distributed_types

    wrappers = distributed_types()
    if any(isinstance(sub, wrappers) for m in models if isinstance(m, nn.Module) for sub in m.modules()):
        raise UsageError(
            f"{who} does not train a DistributedDataParallel model (its hooks average "
            "unclipped gradients): pass the plain module; under torchrun privdl shards the "
            "data and all-reduces the clipped, noised gradients itself"
        )


def _ledger_location(ledger: Any) -> str | None:
    if ledger is None:
        return None
    if isinstance(ledger, str) or hasattr(ledger, "__fspath__"):
        return os.fspath(ledger)
    return str(getattr(ledger, "location", "") or "")


def refuse_sqlite_across_machines(ledger: Any, env: TorchrunEnv | None = None) -> None:
    """Refuse a SQLite ledger for a run that spans several machines.

    Raises:
        UsageError: the torchrun environment shows several machines and ``ledger`` is
            not a ``postgresql://`` ledger.
    """
    env = env if env is not None else TorchrunEnv.read()
    location = _ledger_location(ledger)
    if location is None or not env.several_machines:
        return
    if location.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return
    raise UsageError(
        f"the ledger is a SQLite file but this torchrun run spans several machines "
        f"(WORLD_SIZE={env.world_size}, LOCAL_WORLD_SIZE={env.local_world_size}, "
        f"nodes={env.nodes}): rank 0 may run on any of them, so the budget would not be "
        "shared; pass a postgresql:// ledger URL"
    )


def join(
    device: str,
    *,
    ledger: Any = None,
    models: Sequence[Any] = (),
    privacy_unit: str = "record",
    who: str = "PrivateTrainer",
) -> Group | None:
    """This process's :class:`Group`, or ``None`` outside ``torch.distributed``.

    Uses the initialized default process group, else initializes one from the
    torchrun environment when ``WORLD_SIZE > 1``: NCCL when ``device`` (the trainer's
    ``device=``) resolves to CUDA, after selecting the GPU ``LOCAL_RANK``; gloo
    otherwise. Runs before anything is charged or trained.

    ``privacy_unit`` is accepted for compatibility: both units run on several
    processes (a user-level run shards users, see :meth:`Group.shard_users`). ``who``
    names the caller in the refusal of a wrapped model (``"make_private"``).

    Raises:
        UsageError: a DistributedDataParallel model; a SQLite ledger on several
            machines; ``WORLD_SIZE > 1`` without the rest of the torchrun environment.
    """
    del privacy_unit
    refuse_wrapped(*models, who=who)
    dist = torch.distributed
    available = dist.is_available()
    if available and dist.is_initialized():
        env = TorchrunEnv.read()
        refuse_sqlite_across_machines(ledger, env)
        return Group(rank=dist.get_rank(), world_size=dist.get_world_size())
    env = TorchrunEnv.read()
    if env.world_size <= 1:
        return None
    refuse_sqlite_across_machines(ledger, env)
    if not available:
        raise UsageError(f"WORLD_SIZE={env.world_size} but this torch build has no torch.distributed")
    if env.missing:
        raise UsageError(
            f"WORLD_SIZE={env.world_size} but {', '.join(env.missing)} "
            f"{'is' if len(env.missing) == 1 else 'are'} not set: launch the script with "
            "torchrun (or initialize torch.distributed before fit)"
        )
    from privdl.train.data import resolve_device

    cuda = resolve_device(device).type == "cuda"
    if cuda and env.local_rank is not None:
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    atexit.register(_destroy)
    return Group(rank=dist.get_rank(), world_size=dist.get_world_size(), created=True)


def _destroy() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def local_device(device: Any, group: Group | None) -> Any:
    """``device`` for this rank: a bare ``cuda`` becomes the GPU ``LOCAL_RANK``."""
    if group is None or device.type != "cuda" or device.index is not None:
        return device
    local = TorchrunEnv.read().local_rank
    chosen = torch.device("cuda", local if local is not None else torch.cuda.current_device())
    torch.cuda.set_device(chosen)  # NCCL's object collectives use the current device
    return chosen


def generator(group: Group | None, seed: int | None, device: Any, offset: int) -> Any:
    """The torch generator for the sampler (``offset`` 0) or the noise (1), or ``None``
    (torch's default) on one process without a seed.

    Each rank gets its own stream: with a seed, shifted by the rank (rank 0's is the
    one-process stream); without one, seeded from ``os.urandom`` (a script that seeds
    torch the same way on every rank would otherwise give every shard the same draws,
    and the shards' samples would not be independent)."""
    if seed is None and group is None:
        return None
    g = torch.Generator(device=device)
    if seed is None:
        g.manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
    else:
        g.manual_seed(stream_seed(group, seed, offset))
    return g


def stream_seed(group: Group | None, seed: int, offset: int, epoch: int = 0) -> int:
    """The seed of a seeded stream (``offset``: 0 the sampler, 1 the noise) in ``epoch``.

    A trainer that writes checkpoints reseeds its streams at the start of every epoch
    after the first, so that a run resumed from an epoch's checkpoint with the same
    ``seed`` draws what the uninterrupted run would (a checkpoint holds no generator
    state: a seeded generator's state would give away the noise already added). Epoch 0
    keeps the plain seed; later epochs hash ``(seed, offset, rank, epoch)``, so no two
    streams of a run repeat: the rank shifts the offset by 3 per rank (the offsets are
    0 the sampler, 1 the noise, 2 the draw of kept records at user level), so rank 1's
    sampler is never rank 0's kept-record stream. Rank 0 keeps the one-process streams."""
    shift = 0 if group is None else 3 * group.rank
    if epoch == 0:
        return int(seed) * 1000 + 17 + offset + shift
    text = f"privdl-stream:{int(seed)}:{int(offset) + shift}:{int(epoch)}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def check_in_sync(group: Group | None, module: Any) -> None:
    """Check that every rank holds the same parameters and buffers (bit for bit).

    Raises:
        RuntimeError: they differ (the ranks trained different models).
    """
    if group is None or group.world_size == 1:
        return
    digest = hashlib.sha256()
    for name, t in (*module.named_parameters(), *module.named_buffers()):
        digest.update(name.encode())
        data = t.detach().cpu().contiguous()
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    digests = group.all_gather(digest.hexdigest())
    if len(set(digests)) > 1:
        raise RuntimeError(
            "the ranks' weights differ after training: the distributed run is out of sync "
            "(report this as a privdl bug)"
        )
