"""AuditLog: the append-only, authenticated JSON Lines log every privdl operation writes.

Each line is one entry (see :mod:`privdl.audit.chain` for the format). Writers in
several processes are serialized with an exclusive ``fcntl.flock`` on the log file.

**Ratchet state and forward security.** The MAC key changes with every entry
(K_{i+1} = HKDF-Expand(K_i)). The writer keeps only the key of the *next* entry, in a
state file beside the log (``<log>.state``, mode 0600) together with the log id, the
entry count, the byte size and the head hash, so appends from later processes continue
the chain. Someone who steals the state file (or a writer's memory) later can forge
entries after that point but cannot re-authenticate any earlier entry.

The trade-off: verification needs K_1, which is derived from the master audit key, and
that key re-authenticates everything. Forward security therefore holds against
whoever can read the writer's state, not against whoever holds the master key. Keep
the master key with the verifier (DPO, auditor) where you can: once a log exists, a
writer can run with ``AuditLog(path)`` and no key, from the state file alone. A
writer given the master key uses it only to create the log or to rebuild a lost state
file (by verifying the whole log), then forgets it.

**Crashes.** An entry is written with one ``write`` and ``fsync`` before the state
file is replaced, so a crash leaves either (a) whole entries the state does not know
yet: the next writer checks them under the state's key and catches up, or (b) a last
line cut short: the verifier reports it as an incomplete tail and verifies everything
before it; the next writer removes those bytes and records that it did (event
``audit.tail_discarded`` with their length and SHA-256).

**Refusals at write time.** A writer refuses to append (TamperDetectedError) when
the log is shorter than its state says, when the last entry is not the one the state
recorded, or when entries after it do not authenticate; SecurityError when the log is
under another audit key; InputError, naming the log, when the log or its folder
cannot be written. :meth:`AuditLog.check_appendable` runs all of these checks without
appending, so an operation can refuse before it does any work (evidence first).

**Started entries.** An operation that commits resources before it ends (a training
run reserves budget) writes an entry with outcome ``started`` first; its final entry
names it (``"started": <seq>``). A run killed in between leaves the ``started``
entry, which the verifier reports as an operation that never finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import getpass
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from privdl.audit.canonical import canonical_json, jsonable
from privdl.audit.chain import initial_key, seal, subjects_key
from privdl.audit.subjects import make_filter
from privdl.audit.verify import DEFAULT_KEY_ENV, _Scan, _scan
from privdl.config import ACTOR_ENV, audit_defaults, load_config
from privdl.errors import (
    InputError,
    KeyMissingError,
    PrivdlError,
    SecurityError,
    TamperDetectedError,
    UsageError,
)
from privdl.fingerprint import fingerprint
from privdl.io import disk_full_error, is_disk_full, write_bytes
from privdl.keys import Secret

try:  # POSIX only; elsewhere writers must not run concurrently
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["OUTCOMES", "AuditLog"]

OUTCOMES = ("ok", "refused", "failed", "started")
_EVENT = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
_ERROR = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")
_FLUSH_ENTRIES = 4096
_FLUSH_BYTES = 8 << 20


@dataclasses.dataclass
class _State:
    log_id: str
    kid: str
    n: int
    size: int
    head: str
    key: bytes = dataclasses.field(repr=False)
    subjects_key: bytes = dataclasses.field(repr=False)

    def to_bytes(self) -> bytes:
        return (
            canonical_json(
                {
                    "v": 1,
                    "log": self.log_id,
                    "kid": self.kid,
                    "n": self.n,
                    "size": self.size,
                    "head": self.head,
                    "next_key": self.key.hex(),
                    "subjects_key": self.subjects_key.hex(),
                }
            )
            + b"\n"
        )

    @classmethod
    def from_bytes(cls, data: bytes, where: Path) -> _State:
        try:
            raw = json.loads(data)
            return cls(
                log_id=str(raw["log"]),
                kid=str(raw["kid"]),
                n=int(raw["n"]),
                size=int(raw["size"]),
                head=str(raw["head"]),
                key=bytes.fromhex(raw["next_key"]),
                subjects_key=bytes.fromhex(raw["subjects_key"]),
            )
        except (ValueError, KeyError, TypeError):
            raise TamperDetectedError(
                f"audit state file {where} is not readable: restore it, or delete it and"
                " append with the audit key to rebuild it from the log",
                kind="state",
            ) from None


class _Writer:
    """An open, locked log with its state; lines are buffered and written on flush."""

    def __init__(self, log: AuditLog, fd: int, state: _State, dirty: bool) -> None:
        self.log = log
        self.fd = fd
        self.state = state
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.dirty = dirty
        self.failed: BaseException | None = None  # a failed flush: the batch writes no more

    def add(self, fields: Mapping[str, Any], subjects: Iterable[Any] | None) -> dict[str, Any]:
        if self.failed is not None:
            raise InputError(f"audit log {self.log.path}: an earlier write of this batch failed")
        st = self.state
        entry = dict(fields)
        entry["v"] = 1
        entry["seq"] = st.n + 1
        entry["time"] = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        entry["log"] = st.log_id
        entry["kid"] = st.kid
        entry["prev"] = st.head
        if subjects is not None:
            entry["subjects"] = make_filter(st.subjects_key, subjects)
        line, st.key = seal(st.key, canonical_json(entry))
        st.n += 1
        st.head = hashlib.sha256(line).hexdigest()
        st.size += len(line) + 1
        self.pending.append(line + b"\n")
        self.pending_bytes += len(line) + 1
        self.dirty = True
        if len(self.pending) >= _FLUSH_ENTRIES or self.pending_bytes >= _FLUSH_BYTES:
            self.flush()
        return entry

    def flush(self) -> None:
        if self.failed is not None:
            return
        if self.pending:
            data = memoryview(b"".join(self.pending))
            self.pending.clear()
            self.pending_bytes = 0
            start = os.fstat(self.fd).st_size
            try:
                while data:
                    written = os.write(self.fd, data)
                    data = data[written:]
                os.fsync(self.fd)
                if self.dirty:
                    self.log._write_state(self.state)
                    self.dirty = False
            except BaseException as exc:
                # leave the log as its state file records it: drop a partial line
                self.failed, self.dirty = exc, False
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, start)
                    os.fsync(self.fd)
                if is_disk_full(exc):
                    raise disk_full_error(self.log.path) from None
                raise
        if self.dirty:
            self.log._write_state(self.state)
            self.dirty = False


class AuditLog:
    """An append-only, hash-chained, HMAC-authenticated audit log (JSON Lines).

    Args:
        path: the log file (created on the first append).
        key: the master audit key (a :class:`~privdl.keys.Secret`, 32+ bytes). Needed to
            create the log or rebuild its state file; without it the writer continues
            from ``<log>.state``, or reads ``$PRIVDL_AUDIT_KEY`` when there is none.
        signing_key: Ed25519 private key (object or PEM path) for :meth:`checkpoint`.
        actor: who runs the operations; default ``$PRIVDL_ACTOR``, then
            ``[audit] actor`` in ``privdl.toml``, then the OS user name.
        purpose, legal_basis: the processing purpose and its Art. 6 ground recorded in
            every entry; default from ``[audit]`` in ``privdl.toml``.
        config: path of ``privdl.toml`` (default: ``$PRIVDL_CONFIG`` or ``./privdl.toml``).

    Example:
        >>> log = AuditLog("audit.jsonl", key=Secret.from_env("PRIVDL_AUDIT_KEY"))  # doctest: +SKIP
        >>> log.append("risk", params={"k": 5}, inputs=["raw.csv"])  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: Secret | bytes | None = None,
        signing_key: Any = None,
        actor: str | None = None,
        purpose: str | None = None,
        legal_basis: str | None = None,
        config: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.state_path = self.path.with_name(self.path.name + ".state")
        if isinstance(key, bytes | bytearray):
            key = Secret(bytes(key), source="argument")
        if key is None and not self.state_path.exists():
            key = Secret.from_env(DEFAULT_KEY_ENV)
        self._master: Secret | None = key
        self._signing_key = None
        if signing_key is not None:
            from privdl.audit.checkpoint import load_signing_key

            self._signing_key = load_signing_key(signing_key)
        defaults = audit_defaults(load_config(config))
        self.actor = actor or os.environ.get(ACTOR_ENV) or defaults.get("actor") or _os_user()
        self.purpose = purpose or defaults.get("purpose")
        self.legal_basis = legal_basis or defaults.get("legal_basis")
        self._writer: _Writer | None = None

    def __sklearn_clone__(self) -> AuditLog:
        """``sklearn.base.clone`` of an estimator holding this log shares it: every clone
        appends to the same chain (a copy would not be one)."""
        return self

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    # -- writing ---------------------------------------------------------------------
    def append(
        self,
        event: str,
        *,
        outcome: str = "ok",
        params: Mapping[str, Any] | None = None,
        inputs: Iterable[Any] | None = None,
        outputs: Iterable[Any] | None = None,
        error: str | BaseException | type[BaseException] | None = None,
        subjects: Iterable[Any] | None = None,
        started: int | None = None,
    ) -> dict[str, Any]:
        """Append one entry and return it (as written, without its MAC).

        Args:
            event: what happened, e.g. ``"anonymize"``, ``"train"``, ``"budget.set"``.
            outcome: ``"ok"``, ``"refused"`` (a check said no) or ``"failed"``.
            params: parameters of the operation (``get_params()``, epsilon, k, key_ids);
                :class:`~privdl.keys.Secret` values are replaced by their key_id.
            inputs, outputs: paths (fingerprinted), ``{"path": ..., "rows": ...,
                "columns": ...}`` dicts, already made fingerprints, or in-memory tables.
            error: the error class name (or the exception; only its class is kept).
            subjects: pseudonyms of the data subjects in the data, stored only as a
                keyed Bloom filter, for erasure requests.
            started: the ``seq`` of this operation's ``started`` entry, if it wrote one.

        Raises:
            InputError: the log or its state file cannot be written (names the log).
            SecurityError: the log is written under another audit key.
            TamperDetectedError: the log is not in the state its writer left it.
        """
        fields = self._fields(event, outcome, params, inputs, outputs, error)
        if started is not None:
            if isinstance(started, bool) or not isinstance(started, int) or started < 1:
                raise UsageError("started must be the seq (a positive int) of a started entry")
            fields["started"] = started
        with self.batch():
            assert self._writer is not None
            return self._writer.add(fields, subjects)

    def append_many(self, entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Append several entries (each a dict of :meth:`append` arguments) with one fsync."""
        with self.batch():
            return [self.append(**dict(e)) for e in entries]

    @contextlib.contextmanager
    def batch(self) -> Iterator[AuditLog]:
        """Hold the lock and write appends in batches (one fsync per batch).

        Example:
            >>> with log.batch():  # doctest: +SKIP
            ...     for step in steps:
            ...         log.append("score", params=step)
        """
        if self._writer is not None:
            yield self
            return
        with self._io_errors():
            fd = self._open_locked()
        try:
            with self._io_errors():
                state, dirty = self._sync(fd)
            self._writer = _Writer(self, fd, state, dirty)
            try:
                yield self
            finally:
                writer, self._writer = self._writer, None
                with self._io_errors():
                    writer.flush()
        finally:
            os.close(fd)  # closing releases the lock

    def check_appendable(self) -> None:
        """Check that an entry can be appended now, without appending one.

        Everything an append checks is checked: the log and its state file can be
        opened for writing, the state's key matches the given key, the last entry is
        the one the state recorded and any entries after it authenticate. A tail left
        by a crash is repaired (and the repair recorded) as on any append. Call it
        before the work an entry will record, so a log that cannot take the entry
        stops the operation before it produces anything.

        Raises:
            InputError: the log or its folder cannot be written (read-only file or
                folder, a folder in the log's place...).
            SecurityError: the log is written under another audit key.
            KeyMissingError: no state file and no audit key to rebuild it.
            TamperDetectedError: the log was altered, truncated or has garbage at its end.
        """
        with self.batch(), self._io_errors():
            self._probe_folder()

    @contextlib.contextmanager
    def _io_errors(self) -> Iterator[None]:
        """An OS error of the log's own I/O becomes an InputError naming the log."""
        try:
            yield
        except PrivdlError:
            raise
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(exc.filename or self.path) from None
            reason = exc.strerror or type(exc).__name__
            raise InputError(f"audit log {self.path} cannot be appended: {reason}") from None

    def _probe_folder(self) -> None:
        """Create and remove a file beside the state file: its replacement needs that."""
        probe = self.state_path.with_name(f".{self.state_path.name}.{secrets.token_hex(4)}.probe")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()

    def checkpoint(self, path: str | os.PathLike[str] | None = None) -> Any:
        """Sign a checkpoint of the log as it is now; write it to ``path`` if given.

        Store the checkpoint apart from the log: it is what makes truncation visible.

        Returns:
            The :class:`~privdl.audit.checkpoint.Checkpoint`.

        Raises:
            KeyMissingError: the log has no ``signing_key``.
        """
        from privdl.audit.checkpoint import origin_for, sign_checkpoint

        if self._signing_key is None:
            raise KeyMissingError("no signing key: create the AuditLog with signing_key=...")
        with self.batch():
            assert self._writer is not None
            self._writer.flush()
            st = self._writer.state
            cp = sign_checkpoint(
                origin=origin_for(st.log_id),
                size=st.n,
                root_hash=bytes.fromhex(st.head),
                signing_key=self._signing_key,
            )
        if path is not None:
            cp.save(path)
        return cp

    def __len__(self) -> int:
        with self.batch():
            assert self._writer is not None
            return self._writer.state.n

    # -- internals -------------------------------------------------------------------
    def _fields(
        self,
        event: str,
        outcome: str,
        params: Mapping[str, Any] | None,
        inputs: Iterable[Any] | None,
        outputs: Iterable[Any] | None,
        error: str | BaseException | type[BaseException] | None,
    ) -> dict[str, Any]:
        from privdl._version import __version__

        if not isinstance(event, str) or not _EVENT.match(event):
            raise UsageError("audit event must be a short lowercase name like 'anonymize' or 'budget.set'")
        if outcome not in OUTCOMES:
            raise UsageError(f"audit outcome must be one of {', '.join(OUTCOMES)}")
        fields: dict[str, Any] = {
            "event": event,
            "outcome": outcome,
            "actor": self.actor,
            "privdl": __version__,
        }
        if self.purpose:
            fields["purpose"] = str(self.purpose)
        if self.legal_basis:
            fields["legal_basis"] = str(self.legal_basis)
        if params:
            fields["params"] = jsonable(dict(params))
        if inputs:
            fields["inputs"] = [entry_fingerprint(i) for i in inputs]
        if outputs:
            fields["outputs"] = [entry_fingerprint(o) for o in outputs]
        if error is not None:
            if isinstance(error, BaseException):
                error = type(error).__name__
            elif isinstance(error, type):
                error = error.__name__
            if not isinstance(error, str) or not _ERROR.match(error):
                # a message may quote data: only class names are recorded
                raise UsageError("audit error must be an exception class name, not a message")
            fields["error"] = error
        return fields

    def _open_locked(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _read_state(self) -> _State | None:
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        return _State.from_bytes(data, self.state_path)

    def _write_state(self, state: _State) -> None:
        # it holds the ratchet's current key: readable by its owner only
        write_bytes(self.state_path, state.to_bytes(), private=True)

    def _sync(self, fd: int) -> tuple[_State, bool]:
        """Load the state under the lock and reconcile it with the file. Returns
        (state, whether it must be written)."""
        size = os.fstat(fd).st_size
        state = self._read_state()
        master = self._master
        dirty = False
        if state is None:
            if master is None:
                raise KeyMissingError(
                    f"audit log {self.path}: its state file {self.state_path.name} is missing"
                    " and no audit key was given to rebuild it"
                )
            scan = _Scan()
            if size:
                with open(self.path, "rb") as fh:
                    try:
                        scan = _scan(fh, master)
                    except TamperDetectedError as exc:
                        if exc.kind == "wrong_key":
                            raise SecurityError(
                                f"audit log {self.path}: its first entry does not authenticate"
                                f" under the given audit key {master.key_id}: another key (or"
                                " an altered entry; `privdl audit verify` tells)"
                            ) from None
                        raise TamperDetectedError(
                            f"audit log {self.path}: {exc}", entry=exc.entry, kind=exc.kind
                        ) from None
            log_id = scan.log_id or secrets.token_hex(8)  # no whole entry yet: a new log
            state = _State(
                log_id=log_id,
                kid=master.key_id,
                n=scan.entries,
                size=scan.size,
                head=scan.head,
                key=scan.next_key or initial_key(master, log_id),
                subjects_key=subjects_key(master, log_id),
            )
            dirty = True
            tail = scan.tail
        else:
            if master is not None and state.kid != master.key_id:
                raise SecurityError(
                    f"audit log {self.path} is written under audit key {state.kid}, not the"
                    f" given key {master.key_id}"
                )
            tail = b""
            if size < state.size:
                raise TamperDetectedError(
                    f"audit log {self.path} is shorter ({size} bytes) than its state records"
                    f" ({state.size}): truncated. If you started a new log on purpose, delete"
                    f" {self.state_path.name} as well",
                    entry=state.n,
                    kind="truncated",
                )
            if state.n and hashlib.sha256(_line_ending_at(fd, state.size)).hexdigest() != state.head:
                raise TamperDetectedError(
                    f"audit log {self.path}: entry {state.n} is not the one last written",
                    entry=state.n,
                    kind="modified",
                )
            if size > state.size:
                with open(self.path, "rb") as fh:
                    fh.seek(state.size)
                    start = _Scan(
                        entries=state.n,
                        head=state.head,
                        log_id=state.log_id,
                        kid=state.kid,
                        size=state.size,
                        next_key=state.key,
                    )
                    try:
                        scan = _scan(fh, None, start=start, start_lineno=state.n)
                    except TamperDetectedError as exc:
                        raise TamperDetectedError(
                            f"audit log {self.path}: {exc}", entry=exc.entry, kind=exc.kind
                        ) from None
                if scan.entries != state.n:
                    state.n, state.size, state.head = scan.entries, scan.size, scan.head
                    assert scan.next_key is not None
                    state.key = scan.next_key
                    dirty = True
                tail = scan.tail
        # the master key is needed no longer: forget it (forward security in memory)
        self._master = None
        if tail:
            os.ftruncate(fd, state.size)
            os.fsync(fd)
            writer = _Writer(self, fd, state, dirty)
            writer.add(
                {
                    "event": "audit.tail_discarded",
                    "outcome": "ok",
                    "actor": self.actor,
                    "params": {"bytes": len(tail), "sha256": hashlib.sha256(tail).hexdigest()},
                },
                None,
            )
            writer.flush()
            dirty = False
        return state, dirty


def entry_fingerprint(item: Any) -> dict[str, Any]:
    """An input or output as an entry records it: :func:`privdl.fingerprint.fingerprint`,
    its extra keys made plain JSON (a key becomes its key_id, raw bytes are not kept)."""
    return jsonable(fingerprint(item))


def _line_ending_at(fd: int, end: int) -> bytes:
    """The line that ends (with its newline) at byte offset ``end``, without the newline."""
    chunks: list[bytes] = []
    pos = end - 1  # skip the newline
    while pos > 0:
        start = max(0, pos - (1 << 16))
        chunk = os.pread(fd, pos - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            chunks.append(chunk[cut + 1 :])
            break
        chunks.append(chunk)
        pos = start
    return b"".join(reversed(chunks))


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in containers without passwd entries
        return "unknown"
