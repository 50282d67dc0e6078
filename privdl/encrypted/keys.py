"""CKKS key sets: the data owner's :class:`HEKeys` and the server's :class:`PublicKeys`.

The data owner generates keys, encrypts the sensitive columns and decrypts the scores;
the scoring service only ever receives :meth:`HEKeys.public`: the parameters and the
evaluation keys the model needs (none for a linear score, relinearization keys for a
polynomial activation, never Galois keys: feature-major packing needs no rotations).
With the default symmetric encryption the public context is about 100 bytes; with
``encryption="public-key"`` it also carries the public key so a third party can
encrypt.

Files (``HEKeys.save(DIR)``)::

    DIR/secret.he   secret context, mode 0600 (TenSEAL protobuf; never pickled)
    DIR/public.he   public context: no secret key, safe to hand to the scoring service

Keys are cheap (tens of milliseconds): rotate them per session.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from privdl import progress
from privdl.audit.operation import operation
from privdl.encrypted.ciphertext import (
    decrypt_block,
    decrypt_task,
    encrypt_block,
    encrypt_row,
    encrypt_task,
    tenseal,
)
from privdl.encrypted.params import ParameterSet, choose_parameters
from privdl.encrypted.wire import BatchHeader, Chunk, EncryptedBatch
from privdl.errors import InputError, KeyMissingError, SecurityError, UsageError
from privdl.io import write_bytes
from privdl.keys import key_folder_lock

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["PUBLIC_FILE", "SECRET_FILE", "HEKeys", "PublicKeys"]

SECRET_FILE = "secret.he"  # noqa: S105 (a file name, not a password)
PUBLIC_FILE = "public.he"
#: per-row packing is for single queries; beyond this many rows feature-major wins
MAX_ROW_PACKED = 64


def _new_context(params: ParameterSet) -> Any:
    ts = tenseal()
    enc = ts.ENCRYPTION_TYPE.SYMMETRIC if params.encryption == "symmetric" else ts.ENCRYPTION_TYPE.ASYMMETRIC
    try:
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            encryption_type=enc,
            n_threads=1,
        )
    except ValueError:
        # SEAL itself refuses parameters over its 128-bit bound, whatever privdl allows.
        raise SecurityError(
            f"SEAL refuses CKKS parameters N={params.poly_modulus_degree} with "
            f"{params.total_bits} coefficient bits"
        ) from None
    ctx.global_scale = float(2**params.scale_bits)
    if params.galois_keys:
        ctx.generate_galois_keys()
    return ctx


def _load_context(blob: bytes, source: str) -> Any:
    ts = tenseal()
    try:
        return ts.context_from(blob, n_threads=1)
    except Exception:
        raise InputError(f"{source}: the CKKS context cannot be read") from None


def _features_header(
    params: ParameterSet, key_id: str, names: Sequence[str], rows: int, *, packing: str = "feature-major"
) -> BatchHeader:
    """The header of a batch of encrypted features."""
    return BatchHeader(
        kind="features", params=params, key_id=key_id, columns=tuple(names), rows=rows, packing=packing
    )


def _serialize(ctx: Any, params: ParameterSet, *, secret: bool) -> bytes:
    """The context as ``params`` asks for it: relinearization and Galois keys only when
    needed, the public key only for public-key encryption, the secret key only if asked."""
    return bytes(
        ctx.serialize(
            save_public_key=params.encryption == "public-key",
            save_secret_key=secret,
            save_galois_keys=params.galois_keys,
            save_relin_keys=params.relin_keys,
        )
    )


def _container_blob(batch: EncryptedBatch, source: str) -> bytes:
    if len(batch.chunks) != 1 or len(batch.chunks[0].blobs) != 1:
        raise InputError(f"{source}: a key file holds exactly one context")
    return batch.chunks[0].blobs[0]


class PublicKeys:
    """The material the scoring service holds: parameters and evaluation keys only.

    Never holds a secret key: construction refuses a private context, and
    :meth:`load` refuses a file that contains one.

    Attributes:
        params: the CKKS parameter set.
        key_id: public identifier of the key set.
    """

    __slots__ = ("_blob", "_ctx", "key_id", "params")

    def __init__(self, context: Any, *, params: ParameterSet, key_id: str, blob: bytes) -> None:
        if context.is_private():
            raise SecurityError("a public key set cannot hold a secret key")
        self._ctx = context
        self._blob = blob
        self.params = params
        self.key_id = key_id

    def context(self) -> Any:
        """The TenSEAL context (``is_private()`` is False: decryption fails on it)."""
        return self._ctx

    def is_private(self) -> bool:
        return bool(self._ctx.is_private())

    def to_bytes(self) -> bytes:
        """The serialized public context (what worker processes receive)."""
        return self._blob

    @classmethod
    def from_bytes(cls, blob: bytes, *, params: ParameterSet, key_id: str) -> PublicKeys:
        ctx = _load_context(blob, "public context")
        if ctx.is_private():
            raise SecurityError("refusing a public context that holds a secret key")
        ctx.global_scale = float(2**params.scale_bits)
        return cls(ctx, params=params, key_id=key_id, blob=blob)

    def header(self) -> BatchHeader:
        return BatchHeader(kind="public-context", params=self.params, key_id=self.key_id)

    def encrypt(
        self, data: pd.DataFrame | np.ndarray | Any, *, columns: Sequence[str] | None = None
    ) -> EncryptedBatch:
        """Encrypt with the public key (key sets made with ``encryption="public-key"``).

        Raises:
            UsageError: a symmetric key set: only the secret-key holder can encrypt.
        """
        from privdl.encrypted.packing import as_matrix, chunk_bounds

        if self.params.encryption != "public-key":
            raise UsageError(
                "this key set uses symmetric encryption: only the data owner can encrypt; "
                "generate keys with encryption='public-key' to let others encrypt"
            )
        matrix, names = as_matrix(data, columns)
        header = _features_header(self.params, self.key_id, names, int(matrix.shape[0]))
        bounds = chunk_bounds(matrix.shape[0], self.params.slots)
        return EncryptedBatch(header, tuple(encrypt_block(self._ctx, matrix[a:b]) for a, b in bounds))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the public context file (atomic; safe to share)."""
        batch = EncryptedBatch(self.header(), (Chunk(rows=0, blobs=(self._blob,)),))
        return batch.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKeys:
        """Read a public context file, or ``DIR/public.he`` when given a folder.

        Raises:
            SecurityError: the file holds a secret key (a scoring service must never
                receive one).
            InputError, FormatError: missing or malformed file.
        """
        p = Path(path)
        if p.is_dir():
            p = p / PUBLIC_FILE
        batch = EncryptedBatch.load(p)
        if batch.header.kind != "public-context":
            raise SecurityError(
                f"{p.name} is a {batch.header.kind} file, not a public context; "
                "the scoring service must only receive public.he"
            )
        return cls.from_bytes(_container_blob(batch, p.name), params=batch.header.params, key_id=batch.key_id)

    def __repr__(self) -> str:
        return (
            f"PublicKeys(key_id={self.key_id!r}, N={self.params.poly_modulus_degree}, "
            f"security={self.params.security!r})"
        )


class HEKeys:
    """A CKKS key set held by the data owner: encrypts features, decrypts scores.

    Example:
        >>> keys = HEKeys.generate()                       # doctest: +SKIP
        >>> batch = keys.encrypt(frame, columns=["age", "sex=Female"])   # doctest: +SKIP
        >>> scorer = EncryptedScorer.from_model(model, keys.public())    # doctest: +SKIP
        >>> probabilities = keys.decrypt(scorer.score(batch))            # doctest: +SKIP

    The secret key never leaves this object except into ``DIR/secret.he`` (mode 0600);
    ``repr`` shows the key id only and the object cannot be pickled.
    """

    __slots__ = ("_ctx", "key_id", "params")

    def __init__(self, context: Any, *, params: ParameterSet, key_id: str) -> None:
        if not context.is_private():
            raise KeyMissingError("HEKeys needs a context with its secret key")
        self._ctx = context
        self.params = params
        self.key_id = key_id

    # -- construction -----------------------------------------------------------------
    @classmethod
    def generate(
        cls,
        *,
        depth: int = 1,
        security: int | str = 128,
        scale_bits: int = 40,
        poly_modulus_degree: int | None = None,
        coeff_mod_bit_sizes: Sequence[int] | None = None,
        encryption: str = "symmetric",
        relin_keys: bool | None = None,
        galois_keys: bool = False,
    ) -> HEKeys:
        """Generate a fresh key set for a model of multiplicative ``depth``.

        Args:
            depth: 1 for a linear score (``N=8192``, ``[60, 40, 60]``); a polynomial
                activation adds levels (see :meth:`EncryptedScorer.depth`).
            security: 128 (default), 192 or 256 bits. Lower levels are refused unless
                asked for by name, ``"insecure-100"``, which warns and is recorded.
            scale_bits: log2 of the CKKS scale (>= 30; 40 keeps scores within 1e-6).
            poly_modulus_degree: force ``N``.
            coeff_mod_bit_sizes: force the coefficient primes (checked).
            encryption: ``"symmetric"`` (default: only the secret-key holder encrypts,
                about twice as fast) or ``"public-key"``.
            relin_keys: include relinearization keys in the public context (default:
                when ``depth > 1``).
            galois_keys: include rotation keys (~17 MB) so single, latency-bound queries
                can use per-row packing (``encrypt(..., packing="row")``).

        Raises:
            SecurityError: a request below 128-bit security.
        """
        params = choose_parameters(
            depth=depth,
            security=security,
            scale_bits=scale_bits,
            poly_modulus_degree=poly_modulus_degree,
            coeff_mod_bit_sizes=None if coeff_mod_bit_sizes is None else tuple(coeff_mod_bit_sizes),
            encryption=encryption,
            relin_keys=relin_keys,
            galois_keys=galois_keys,
        )
        return cls(_new_context(params), params=params, key_id="he_" + secrets.token_hex(8))

    @classmethod
    def for_model(cls, model: Any, **options: Any) -> HEKeys:
        """Keys with the depth (and relinearization keys) that ``model`` needs."""
        from privdl.encrypted.models import as_model

        spec = as_model(model, columns=options.pop("columns", None))
        output = options.pop("output", "logit")
        depth = spec.depth(output=output)
        return cls.generate(depth=depth, **options)

    @classmethod
    def generate_into(
        cls,
        directory: str | os.PathLike[str],
        *,
        model: Any = None,
        depth: int | None = None,
        output: str = "logit",
        audit_log: Any = None,
        **options: Any,
    ) -> HEKeys:
        """Generate a key set and write it to ``DIR/secret.he`` and ``DIR/public.he``.

        What ``privdl he keygen`` does: one ``he.keygen`` audit entry records the new
        key set by its key id and parameters (a key rotation for the data owner); the
        key files appear only once that entry is written, and are not fingerprinted.

        Args:
            directory: the folder for the key files (created; must not hold a key set).
            model: choose the depth (and relinearization keys) this model needs, as
                :meth:`for_model` does; else ``depth`` (default 1).
            depth: multiplicative depth, as for :meth:`generate`.
            output: ``"logit"`` or ``"probability"``: the output the keys must reach
                (with ``model`` only).
            audit_log: an AuditLog, a path, or None; one ``he.keygen`` entry.
            **options: the other options of :meth:`generate` (``security=``,
                ``encryption=``, ``galois_keys=``...).

        Raises:
            UsageError: both ``model`` and ``depth``, or ``directory`` already holds a
                key file (exit 1 when a concurrent keygen wrote it while this one waited).
            InputError: ``directory`` is a file, its parent folder is missing, or
                either is not writable.
            SecurityError: a request below 128-bit security.

        Example:
            >>> keys = HEKeys.generate_into("keys", model="model.json")  # doctest: +SKIP
        """
        if model is not None and depth is not None:
            raise UsageError("give depth or model, not both")
        folder = Path(directory)
        names = (SECRET_FILE, PUBLIC_FILE)
        for name in names:  # checked here: the keys are written to a staged folder
            if (folder / name).exists():
                raise UsageError(f"keys already exist: {folder / name} already exists; choose another folder")
        # one keygen at a time per folder (a lock in its parent), so concurrent runs
        # have one winner and never mix secret.he and public.he of two key sets
        with key_folder_lock(folder):
            for name in names:  # written by a concurrent keygen while this one waited
                if (folder / name).exists():
                    raise _keys_exist(f"keys already exist: {folder / name} was just written by another keygen")
            with operation(audit_log, "he.keygen") as op:
                if model is not None:
                    keys = cls.for_model(model, output=output, **options)
                else:
                    keys = cls.generate(depth=depth or 1, **options)
                keys.save(op.stage(folder, folder=True, record=False))
                op.update(params={"key_id": keys.key_id, "he_params": keys.params.to_dict()})
        return keys

    def public(self) -> PublicKeys:
        """The public context for the scoring service: no secret key.

        Relinearization keys are included only when the parameter set asks for them
        (polynomial activations), Galois keys only for per-row packing, the public key
        only for ``encryption="public-key"``.
        """
        blob = _serialize(self._ctx, self.params, secret=False)
        return PublicKeys.from_bytes(blob, params=self.params, key_id=self.key_id)

    def is_private(self) -> bool:
        return True

    # -- files ------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``DIR/secret.he`` (mode 0600) and ``DIR/public.he``.

        Raises:
            UsageError: the folder already holds a secret key file (``overwrite=False``):
                replacing keys would make existing batches undecryptable.
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        secret_path = folder / SECRET_FILE
        if secret_path.exists() and not overwrite:
            raise UsageError(f"{secret_path} already exists; choose another folder")
        blob = self._secret_blob()
        header = BatchHeader(kind="secret-context", params=self.params, key_id=self.key_id)
        write_bytes(secret_path, EncryptedBatch(header, (Chunk(0, (blob,)),)).to_bytes(), private=True)
        self.public().save(folder / PUBLIC_FILE)
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HEKeys:
        """Read ``DIR/secret.he`` (or the given secret file).

        Raises:
            KeyMissingError: no secret key file there.
            SecurityError: the file is readable by group or others.
        """
        p = Path(path)
        if p.is_dir():
            p = p / SECRET_FILE
        if not p.exists():
            raise KeyMissingError(f"no secret key: {p} does not exist")
        from privdl.encrypted.wire import read_batch_header

        kind = read_batch_header(p).kind
        if kind != "secret-context":
            raise KeyMissingError(f"{p.name} holds no secret key (it is a {kind} file)")
        mode = p.stat().st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecurityError(
                f"secret key file {p} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):o}); run `chmod 600` on it"
            )
        batch = EncryptedBatch.load(p)
        ctx = _load_context(_container_blob(batch, p.name), p.name)
        ctx.global_scale = float(2**batch.header.params.scale_bits)
        return cls(ctx, params=batch.header.params, key_id=batch.key_id)

    # -- encryption -------------------------------------------------------------------
    def encrypt(
        self,
        data: pd.DataFrame | np.ndarray | Any,
        *,
        columns: Sequence[str] | None = None,
        encoder: Any = None,
        packing: str = "feature-major",
        workers: int = 1,
        audit_log: Any = None,
    ) -> EncryptedBatch:
        """Encrypt feature columns, feature-major: one ciphertext per column per N/2 rows.

        Args:
            data: a DataFrame (``columns`` are feature specs: ``"age"`` numeric, or
                ``"sex=Female"`` an indicator) or a 2-D array (``columns`` name its columns).
            columns: the features to encrypt, in order.
            encoder: a TableEncoder (or its JSON) that makes ``columns`` from the table,
                e.g. ``load_model_spec(path).info["encoder"]`` of a saved PrivateTrainer model.
            packing: ``"feature-major"`` (default) or ``"row"``: one ciphertext per row,
                for single, latency-bound queries only (one ~230 KB ciphertext instead of
                one per column; the public context then needs Galois keys).
            workers: processes to encrypt with (the context reaches them by ``fork``,
                never through a pipe; 1 where ``fork`` is unavailable).
            audit_log: an AuditLog, a path, or None; one ``he.encrypt`` entry.

        Raises:
            InputError: a missing column, or a value that is not a finite number
                (named by column and row, never by value).
        """
        from privdl.encrypted.packing import as_matrix

        _check_packing(packing)
        matrix, names = as_matrix(data, columns, encoder=encoder)
        if packing == "row" and matrix.shape[0] > MAX_ROW_PACKED:
            raise UsageError(
                f"per-row packing is for single, latency-bound queries (at most "
                f"{MAX_ROW_PACKED} rows); use the default feature-major packing"
            )
        header = _features_header(self.params, self.key_id, names, int(matrix.shape[0]), packing=packing)
        with self._encrypt_operation(audit_log, {"packing": packing}) as op:
            if packing == "row":
                chunks: tuple[Chunk, ...] = tuple(encrypt_row(self._ctx, row) for row in matrix)
            else:
                chunks = tuple(self.encrypt_chunks(matrix, workers=workers))
            op.update(params={"rows": header.rows, "columns": list(names)})
        return EncryptedBatch(header, chunks)

    def _encrypt_operation(
        self, audit_log: Any, params: dict[str, Any], *, inputs: Sequence[Any] = ()
    ) -> contextlib.AbstractContextManager[Any]:
        """The ``he.encrypt`` entry: the parameter set and key id, then ``params``."""
        return operation(
            audit_log,
            "he.encrypt",
            params={"he_params": self.params.to_dict(), "key_id": self.key_id, **params},
            inputs=inputs,
        )

    def encrypt_to_file(
        self,
        data: pd.DataFrame | np.ndarray | Any,
        path: str | os.PathLike[str],
        *,
        columns: Sequence[str] | None = None,
        encoder: Any = None,
        workers: int = 1,
        audit_log: Any = None,
        inputs: Sequence[Any] = (),
    ) -> BatchHeader:
        """Encrypt like :meth:`encrypt`, writing chunks to ``path`` as they are made.

        The file is written atomically; nothing is left behind on failure.
        """
        from privdl.encrypted.packing import as_matrix
        from privdl.encrypted.wire import BatchWriter

        matrix, names = as_matrix(data, columns, encoder=encoder)
        header = _features_header(self.params, self.key_id, names, int(matrix.shape[0]))
        with self._encrypt_operation(
            audit_log, {"rows": header.rows, "columns": list(names)}, inputs=inputs
        ) as op:
            # staged: the file appears only once its audit entry (if any) is written
            with (
                BatchWriter(op.stage(path), header) as writer,
                progress.step(f"encrypting {len(names)} columns", total=header.rows) as bar,
            ):
                for chunk in self.encrypt_chunks(matrix, workers=workers):
                    writer.write(chunk)
                    bar.advance(chunk.rows)
            op.update(outputs=[os.fspath(path)])
        return header

    def encrypt_table(
        self,
        source: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        columns: Sequence[str],
        model: Any = None,
        model_key: Any = None,
        packing: str = "feature-major",
        workers: int = 1,
        sep: str | None = None,
        audit_log: Any = None,
    ) -> BatchHeader:
        """Encrypt ``columns`` of the table at ``source`` into the batch file ``output``.

        Only the table columns the features are made from are read. With ``model``, each
        requested column stands for the model's features made from it
        (``city`` -> ``city=Berlin``, ``city=Paris``...; see
        :meth:`~privdl.encrypted.models.ModelSpec.features_for`) and a PrivateTrainer
        model's TableEncoder makes them, so the scorer receives what the model reads.

        Args:
            source: the table (file or ``sqlite:///`` URL, see :func:`privdl.io.read_table`).
            output: the encrypted batch file to write.
            columns: features (``age``, ``sex=F``) or, with ``model``, table columns.
            model: a model folder or file (read with
                :func:`~privdl.encrypted.models.load_model_spec`), or a ModelSpec.
            model_key: the key that verifies a signed model folder.
            packing: ``"feature-major"`` (written chunk by chunk, flat memory) or ``"row"``.
            workers: encryption processes (feature-major).
            sep: delimiter of a text table.
            audit_log: an AuditLog, a path, or None; one ``he.encrypt`` entry. The log
                is checked to take it before the table is read.

        Returns:
            The header of the batch written.

        Raises:
            UsageError: ``output`` is ``source``, or an unknown packing.
            InputError: the model reads none of ``columns``, a missing column, a value
                that is not a finite number (named by column and row, never by value).
        """
        from privdl import io
        from privdl.encrypted.packing import source_columns

        _check_packing(packing)
        if workers < 1:
            raise UsageError(f"workers must be at least 1, not {workers}")
        io.check_distinct_paths(source, output)
        log = _appendable(audit_log)
        features = list(columns)
        sources = source_columns(features)
        encoder = None
        if model is not None:
            from privdl.encrypted.models import ModelSpec, load_model_spec

            spec = model if isinstance(model, ModelSpec) else load_model_spec(model, key=model_key)
            encoder = spec.info.get("encoder")
            features, sources = spec.features_for(features)
            if not features:
                name = os.fspath(model) if isinstance(model, str | os.PathLike) else "the model"
                raise InputError(f"{name}: the model reads none of the given columns")
        frame = io.read_table(source, sep=sep, columns=sources)
        if packing == "row":
            batch = self.encrypt(frame, columns=features, encoder=encoder, packing="row", audit_log=log)
            batch.save(output)
            return batch.header
        return self.encrypt_to_file(
            frame,
            output,
            columns=features,
            encoder=encoder,
            workers=workers,
            audit_log=log,
            inputs=[source] if Path(source).exists() else [],
        )

    def encrypt_chunks(self, matrix: np.ndarray, *, workers: int = 1) -> Iterator[Chunk]:
        """Encrypt a float matrix chunk by chunk (rows in order), yielding :class:`Chunk`."""
        from privdl.encrypted.packing import chunk_bounds

        bounds = chunk_bounds(matrix.shape[0], self.params.slots)
        if len(bounds) < 2:
            workers = 1
        yield from self.encrypt_blocks((matrix[a:b] for a, b in bounds), workers=workers)

    def encrypt_blocks(self, blocks: Iterable[np.ndarray], *, workers: int = 1) -> Iterator[Chunk]:
        """Encrypt a stream of row blocks (each at most N/2 rows) in order, in flat memory.

        Args:
            blocks: float arrays of shape (rows, columns), rows <= ``params.slots``.
            workers: processes; the secret context reaches them by ``fork`` only.
        """
        checked = (self._check_block(b) for b in blocks)
        yield from self._map_secret(encrypt_task, encrypt_block, checked, workers=workers)

    def _check_block(self, block: np.ndarray) -> np.ndarray:
        if block.ndim != 2 or block.shape[0] > self.params.slots:
            raise UsageError(f"a block holds at most {self.params.slots} rows (rows x columns)")
        return block

    def decrypt_chunks(self, chunks: Iterable[Chunk], *, workers: int = 1) -> Iterator[np.ndarray]:
        """Decrypt a stream of score chunks in order (raw values, shape rows x outputs)."""
        yield from self._map_secret(decrypt_task, decrypt_block, chunks, workers=workers)

    def _map_secret(
        self,
        task: Callable[[Any], Any],
        local: Callable[[Any, Any], Any],
        items: Iterable[Any],
        *,
        workers: int,
    ) -> Iterator[Any]:
        """``local(context, item)`` for each item in order, or ``task`` in ``workers``
        forked processes that inherit the secret context (never through a pipe)."""
        if workers > 1 and _can_fork():
            from privdl.encrypted.pool import map_forked

            yield from map_forked(
                task, items, blob=self._secret_blob(), scale_bits=self.params.scale_bits, workers=workers
            )
            return
        for item in items:
            yield local(self._ctx, item)

    def _secret_blob(self) -> bytes:
        return _serialize(self._ctx, self.params, secret=True)

    # -- decryption -------------------------------------------------------------------
    def decrypt(
        self,
        scores: EncryptedBatch | str | os.PathLike[str],
        *,
        raw: bool = False,
        decimals: int | None = None,
        workers: int = 1,
        audit_log: Any = None,
    ) -> np.ndarray:
        """Decrypt encrypted scores.

        Args:
            scores: an encrypted ``scores`` batch or its file.
            raw: return what was computed (the logit for a logistic model) instead of
                applying the exact link (sigmoid) on this side.
            decimals: round the released scores (limits what decrypted values reveal
                if they ever travel back; CKKS is not IND-CPA-D secure).
            workers: processes (the secret context reaches them by ``fork`` only).
            audit_log: an AuditLog, a path, or None; one ``he.decrypt`` entry.

        Returns:
            An array of shape ``(rows,)``, or ``(rows, outputs)`` for several outputs.

        Raises:
            KeyMissingError: the scores were made for another key set.
            InputError: not a scores container, or other parameters.
        """
        import numpy as np

        batch = scores if isinstance(scores, EncryptedBatch) else EncryptedBatch.load(scores)
        source = "scores" if isinstance(scores, EncryptedBatch) else Path(scores).name
        batch.header.check_compatible(kind="scores", params=self.params, key_id=self.key_id, source=source)
        with operation(
            audit_log,
            "he.decrypt",
            params={
                "he_params": self.params.to_dict(),
                "key_id": self.key_id,
                "rows": batch.rows,
                "raw": raw,
                "decimals": decimals,
                "model_id": batch.header.info.get("model_id"),
            },
            inputs=[] if isinstance(scores, EncryptedBatch) else [os.fspath(scores)],
        ):
            with progress.step("decrypting scores", total=batch.rows) as bar:
                parts = []
                for part in self.decrypt_chunks(batch.chunks, workers=workers):
                    parts.append(part)
                    bar.advance(len(part))
            values = np.concatenate(parts, axis=0) if parts else np.zeros((0, len(batch.columns)))
            values = finish_scores(values, batch.header.info, raw=raw, decimals=decimals)
        return values

    def decrypt_frame(
        self,
        scores: EncryptedBatch | str | os.PathLike[str],
        *,
        raw: bool = False,
        decimals: int | None = None,
        workers: int = 1,
        audit_log: Any = None,
    ) -> pd.DataFrame:
        """:meth:`decrypt` into a table: one column per model output, rows in input order.

        The columns are the output names the scores header carries (``score``, or one
        per class).
        """
        import pandas as pd

        from privdl.encrypted.wire import read_batch_header

        header = scores.header if isinstance(scores, EncryptedBatch) else read_batch_header(scores)
        values = self.decrypt(scores, raw=raw, decimals=decimals, workers=workers, audit_log=audit_log)
        return pd.DataFrame(values.reshape(len(values), -1), columns=list(header.columns))

    def decrypt_to_table(
        self,
        scores: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        raw: bool = False,
        decimals: int | None = None,
        workers: int = 1,
        audit_log: Any = None,
    ) -> pd.DataFrame:
        """:meth:`decrypt_frame` of the scores file, written to the table ``output``.

        Raises:
            UsageError: ``output`` is ``scores``.
            FormatError / InputError: an unknown output format or a missing folder.
        """
        from privdl import io

        io.check_distinct_paths(scores, output)
        frame = self.decrypt_frame(scores, raw=raw, decimals=decimals, workers=workers, audit_log=audit_log)
        io.write_table(frame, output)
        return frame

    # -- hygiene ----------------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"HEKeys(key_id={self.key_id!r}, N={self.params.poly_modulus_degree}, "
            f"security={self.params.security!r}, secret=<hidden>)"
        )

    def __reduce__(self) -> NoReturn:
        raise SecurityError("HEKeys hold a secret key and cannot be pickled; use save(DIR)")

    def context(self) -> Any:
        """The private TenSEAL context (data-owner side only)."""
        return self._ctx


def finish_scores(values: np.ndarray, info: dict[str, Any], *, raw: bool, decimals: int | None) -> np.ndarray:
    """Apply the exact link on the client (sigmoid for a logit) and optional rounding."""
    import numpy as np

    if not raw and info.get("output") == "logit":
        # the exact link here keeps the server-side depth at 1
        if info.get("link") == "logit":
            values = 0.5 * (1.0 + np.tanh(0.5 * values))
        elif info.get("link") == "softmax":
            shifted = np.exp(values - values.max(axis=1, keepdims=True))
            values = shifted / shifted.sum(axis=1, keepdims=True)
    if decimals is not None:
        values = np.round(values, int(decimals))
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    return values


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def _check_packing(packing: str) -> None:
    if packing not in ("feature-major", "row"):
        raise UsageError(f"packing must be 'feature-major' or 'row', not {packing!r}")


def _appendable(audit_log: Any) -> Any:
    """The AuditLog for ``audit_log`` (or None), checked to take an entry before any work."""
    if audit_log is None:
        return None
    from privdl.audit.operation import resolve_audit_log

    log = resolve_audit_log(audit_log)
    if log is not None:
        log.check_appendable()
    return log


def with_info(batch: EncryptedBatch, **info: Any) -> EncryptedBatch:
    """A copy of ``batch`` with extra header info."""
    return replace(batch, header=replace(batch.header, info={**batch.header.info, **info}))


# -- helpers of HEKeys.generate_into ------------------------------------------------------
def _keys_exist(message: str) -> UsageError:
    """The error for a keygen that lost the race for a folder: exit 1 (a check that
    failed), still a UsageError for callers of the API. Keys there before the call
    are bad usage (exit 2)."""
    exc = UsageError(message)
    exc.exit_code = 1
    return exc
