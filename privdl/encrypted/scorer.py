"""EncryptedScorer: evaluate a model on CKKS ciphertexts with public material only.

Feature-major batches make a linear score a sum of ciphertext-by-scalar products:

* **linear fast path** (one layer, logit/value returned): products are summed without
  rescaling (one level, no rotations, no relinearization keys); the bias and the
  plaintext partial score of hybrid inputs are folded into the largest-weight column
  *before* its product, so nothing needs encrypting on the server.
* **polynomial path** (MLP, or an encrypted probability): rescale after each product,
  evaluate activation polynomials (degree <= 3) with ciphertext products
  (relinearization keys needed), no rotations.

**Hybrid scoring**: only sensitive columns arrive encrypted; the non-sensitive ones
arrive in plaintext and their partial score (with the bias) is added server-side, so
the cost scales with the encrypted columns only.

The scorer holds a :class:`~privdl.encrypted.keys.PublicKeys` (no secret key: it
refuses a private context), a public :class:`~privdl.encrypted.models.ModelSpec` and
an :class:`~privdl.encrypted.approximation.ApproximationReport`: how far the
polynomial circuit is from the exact model, measured in plaintext on a calibration
sample or inside input bounds (aggregates only, never a row).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privdl import progress
from privdl._optional import require
from privdl.audit.operation import operation
from privdl.encrypted.approximation import DEFAULT_TOLERANCE, ApproximationReport, assess
from privdl.encrypted.keys import HEKeys, PublicKeys
from privdl.encrypted.models import ModelSpec, as_model
from privdl.encrypted.polynomial import SIGMOID_RANGE, PolyActivation, approximate
from privdl.encrypted.wire import (
    BatchHeader,
    BatchWriter,
    Chunk,
    EncryptedBatch,
    iter_chunks,
    read_batch_header,
)
from privdl.errors import ApproximationWarning, FormatError, InputError, SecurityError, UsageError
from privdl.serialize import json_mapping, json_text

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["EncryptedScorer"]

OUTPUTS = ("logit", "probability")
SCORER_FORMAT = "privdl-he-scorer/1"
# a scalar below this encodes to zero at scale 2^40 and would make a transparent
# ciphertext (which SEAL refuses); its term contributes under 1e-11 and is skipped
_NEGLIGIBLE = 2.0**-38


def _zero(w: float) -> bool:
    return abs(w) < _NEGLIGIBLE


@dataclass(frozen=True)
class _Plan:
    """How one batch's columns map onto the model (computed once per batch)."""

    enc_index: tuple[int, ...]  # blob position in a chunk for each encrypted model input
    enc_weight: Any  # outputs x len(enc_index), scaler folded
    plain_weight: Any  # outputs x len(plain_columns)
    bias: Any  # outputs
    plain_columns: tuple[str, ...]
    encrypted_columns: tuple[str, ...]
    packing: str = "feature-major"
    row_weight: Any = None  # per-row packing: outputs x batch columns (zeros elsewhere)


class EncryptedScorer:
    """Scores encrypted batches with a model and a public context.

    Example:
        >>> keys = HEKeys.generate()                                    # doctest: +SKIP
        >>> scorer = EncryptedScorer.from_model(model, keys.public())  # doctest: +SKIP
        >>> scores = keys.decrypt(scorer.score(keys.encrypt(frame, columns=cols)))  # doctest: +SKIP
    """

    def __init__(
        self,
        model: ModelSpec,
        public_keys: PublicKeys,
        *,
        output: str = "logit",
        sigmoid: PolyActivation | None = None,
        approximation: ApproximationReport | None = None,
    ) -> None:
        if isinstance(public_keys, HEKeys) or not isinstance(public_keys, PublicKeys):
            raise SecurityError("EncryptedScorer takes public keys only: pass keys.public(), never HEKeys")
        if public_keys.is_private():
            raise SecurityError("refusing a context that holds a secret key")
        if output not in OUTPUTS:
            raise UsageError(f"output must be one of {OUTPUTS}, not {output!r}")
        if output == "probability" and (model.link != "logit" or model.outputs != 1):
            raise UsageError("an encrypted probability needs a single-output logistic model")
        self.model_ = model
        self.public_keys = public_keys
        self.output = output
        self.sigmoid_ = sigmoid if output == "probability" else None
        # without a measured report: "exact", or "unmeasured" for approximated activations
        self.approximation_ = approximation or assess(model, output=output, sigmoid=self.sigmoid_)
        need = self.depth()
        have = public_keys.params.depth
        if need > have:
            raise UsageError(
                f"the model needs multiplicative depth {need}; these keys allow {have}: "
                f"generate keys with HEKeys.generate(depth={need})"
            )
        if not self._fast and not public_keys.params.relin_keys:
            raise UsageError(
                "polynomial activations need relinearization keys: "
                f"HEKeys.generate(depth={need}) includes them"
            )

    @classmethod
    def from_model(
        cls,
        model: Any,
        public_keys: PublicKeys,
        *,
        columns: Sequence[str] | None = None,
        scaler: Any = None,
        link: str | None = None,
        output: str = "logit",
        activation_degree: int = 2,
        activation_range: tuple[float, float] = (-4.0, 4.0),
        sigmoid_degree: int = 3,
        sigmoid_range: tuple[float, float] = SIGMOID_RANGE,
        model_key: Any = None,
        calibration: Any = None,
        bounds: tuple[Any, Any] | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> EncryptedScorer:
        """Build a scorer from a torch / scikit-learn model or a model file.

        When the circuit approximates an activation (ReLU, Tanh... replaced by a
        polynomial, or ``output="probability"``), the approximation error is measured
        in plaintext on ``calibration`` (or on points sampled inside ``bounds``) on what
        the user gets (the probability, for a classifier), stored in
        :attr:`approximation_` and warned about (:class:`~privdl.errors.ApproximationWarning`)
        above ``tolerance``, or when there is nothing to measure it on. Linear and
        logistic models returning the logit, and networks with polynomial activations
        (:class:`~privdl.encrypted.activations.Square`,
        :class:`~privdl.encrypted.activations.PolynomialActivation`), are exact up to
        CKKS noise and need no sample.

        Args:
            model: torch ``nn.Linear`` / ``nn.Sequential`` (small MLP), scikit-learn
                linear model or pipeline, a :class:`ModelSpec`, or a path to an exported
                ``.json`` or ``.safetensors`` model.
            public_keys: ``keys.public()`` or :meth:`PublicKeys.load` (never ``HEKeys``).
            columns: feature names in the model's input order.
            scaler: standardization to fold into the first layer.
            link: override the model's link.
            output: ``"logit"`` (default: the client applies the exact sigmoid, depth 1)
                or ``"probability"`` (a polynomial sigmoid evaluated encrypted).
            activation_degree: degree of polynomials replacing hidden activations.
            activation_range: input range they are fitted on (approximation error is
                reported in :attr:`approximation`).
            sigmoid_degree, sigmoid_range: the encrypted sigmoid's polynomial.
            model_key: for a signed PrivateTrainer model folder, the HMAC Secret or
                Ed25519 public key that verifies its signature.
            calibration: a sample of inputs (rows x model columns, raw values; or a
                DataFrame) to measure the approximation on; only aggregates are kept.
            bounds: ``(low, high)`` of the raw inputs (numbers, or one per column), to
                measure on points sampled inside instead.
            tolerance: absolute error on the user's output above which to warn.

        Raises:
            SecurityError: ``public_keys`` holds a secret key.
            UsageError: keys too shallow for the model, or an unsupported model.
            InputError: a calibration sample or bounds that do not fit the model.
        """
        spec = as_model(
            model,
            columns=columns,
            scaler=scaler,
            link=link,
            activation_degree=activation_degree,
            activation_range=activation_range,
            key=model_key,
        )
        sigmoid = (
            approximate("sigmoid", degree=sigmoid_degree, range=sigmoid_range)
            if output == "probability"
            else None
        )
        report = assess(
            spec, output=output, sigmoid=sigmoid, calibration=calibration, bounds=bounds, tolerance=tolerance
        )
        scorer = cls(spec, public_keys, output=output, sigmoid=sigmoid, approximation=report)
        for message in scorer.warnings_:
            warnings.warn(message, ApproximationWarning, stacklevel=2)
        return scorer

    # -- facts ------------------------------------------------------------------------
    @property
    def _fast(self) -> bool:
        return self.model_.is_linear and self.output == "logit"

    def depth(self) -> int:
        """Multiplicative depth this scorer needs from the keys."""
        return self.model_.depth(output=self.output, sigmoid=self.sigmoid_)

    @property
    def approximation(self) -> dict[str, Any]:
        """Polynomial stand-ins, their max errors on their ranges, and under ``"error"``
        the measured gap to the exact model (:attr:`approximation_` as a dict)."""
        out: dict[str, Any] = {}
        if self.model_.activations:
            out["activations"] = [a.to_dict() for a in self.model_.activations]
        if self.sigmoid_ is not None:
            out["sigmoid"] = self.sigmoid_.to_dict()
        out["error"] = self.approximation_.to_dict()
        return out

    @property
    def warnings_(self) -> tuple[str, ...]:
        """What a caller should be told (approximation error above tolerance or unmeasured)."""
        message = self.approximation_.warning()
        return (message,) if message else ()

    def get_params(self) -> dict[str, Any]:
        """What goes into an audit record (public facts only)."""
        return {
            "model_id": self.model_.model_id(),
            "columns": list(self.model_.columns),
            "link": self.model_.link,
            "output": self.output,
            "depth": self.depth(),
            "he_params": self.public_keys.params.to_dict(),
            "key_id": self.public_keys.key_id,
            "approximation": self.approximation,
        }

    # -- serialization ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The scorer without its keys, as plain JSON-compatible data (see :meth:`to_json`)."""
        return {
            "format": SCORER_FORMAT,
            "model": json.loads(self.model_.to_json()),
            "output": self.output,
            "sigmoid": None if self.sigmoid_ is None else self.sigmoid_.to_dict(),
            "approximation": self.approximation_.to_dict(),
        }

    def to_json(self) -> str:
        """The scorer without its keys: model, output, sigmoid and approximation report.

        Public material only (no key of any kind, no data row); rebuild it with
        :meth:`from_json` and the public keys.
        """
        return json_text(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], public_keys: PublicKeys) -> EncryptedScorer:
        """Rebuild a scorer from :meth:`to_dict` output (its report is kept, not re-measured).

        Raises:
            FormatError: not a scorer.
        """
        if not isinstance(data, Mapping) or data.get("format") != SCORER_FORMAT:
            raise FormatError(f"scorer: expected format {SCORER_FORMAT}")
        try:
            model = ModelSpec.from_json(json.dumps(data["model"]), source="scorer model")
            sigmoid = PolyActivation.from_dict(data["sigmoid"]) if data.get("sigmoid") else None
            report = ApproximationReport.from_dict(data["approximation"])
            output = str(data["output"])
        except (KeyError, TypeError):
            raise FormatError("scorer: malformed") from None
        return cls(model, public_keys, output=output, sigmoid=sigmoid, approximation=report)

    @classmethod
    def from_json(
        cls, text: str | bytes | Mapping[str, Any], public_keys: PublicKeys
    ) -> EncryptedScorer:
        """Rebuild a scorer written by :meth:`to_json`: the JSON string or its parsed dict.

        Raises:
            FormatError: not a scorer file.
        """
        return cls.from_dict(json_mapping(text, kind="scorer", error=FormatError), public_keys)

    def __repr__(self) -> str:
        return (
            f"EncryptedScorer(model_id={self.model_.model_id()!r}, "
            f"columns={len(self.model_.columns)}, output={self.output!r}, "
            f"key_id={self.public_keys.key_id!r})"
        )

    # -- planning ---------------------------------------------------------------------
    def plan(
        self,
        encrypted_columns: Sequence[str],
        plain_columns: Sequence[str] = (),
        *,
        packing: str = "feature-major",
    ) -> _Plan:
        """Map batch columns onto the model's inputs.

        Raises:
            InputError: a model column is in neither input, or in both.
        """
        import numpy as np

        enc_pos = {c: i for i, c in enumerate(encrypted_columns)}
        plain_pos = {c: i for i, c in enumerate(plain_columns)}
        w, b = self.model_.folded()
        enc_idx: list[int] = []
        enc_cols: list[int] = []
        plain_cols: list[int] = []
        plain_names: list[str] = []
        for j, name in enumerate(self.model_.columns):
            if name in enc_pos and name in plain_pos:
                raise InputError(f"column {name!r} is given both encrypted and in plaintext")
            if name in enc_pos:
                enc_idx.append(enc_pos[name])
                enc_cols.append(j)
            elif name in plain_pos:
                plain_cols.append(j)
                plain_names.append(name)
            else:
                raise InputError(f"model column {name!r} is neither encrypted nor in --plain")
        if not enc_idx:
            raise InputError("none of the model's columns is encrypted; nothing to score encrypted")
        enc_w = w[:, enc_cols]
        if self.model_.is_linear and np.any(np.all(np.abs(enc_w) < _NEGLIGIBLE, axis=1)):
            raise UsageError("the model puts no weight on any encrypted column")
        row_weight = None
        if packing == "row":
            if not self._fast:
                raise UsageError("per-row packing supports linear models returning the logit")
            if not self.public_keys.params.galois_keys:
                raise UsageError("per-row packed batches need Galois keys: HEKeys.generate(galois_keys=True)")
            row_weight = np.zeros((enc_w.shape[0], len(encrypted_columns)))
            row_weight[:, enc_idx] = enc_w
        elif packing != "feature-major":
            raise InputError(f"unknown packing {packing!r}")
        return _Plan(
            enc_index=tuple(enc_idx),
            enc_weight=enc_w,
            plain_weight=w[:, plain_cols],
            bias=b,
            plain_columns=tuple(plain_names),
            encrypted_columns=tuple(self.model_.columns[j] for j in enc_cols),
            packing=packing,
            row_weight=row_weight,
        )

    # -- scoring ----------------------------------------------------------------------
    def score(
        self,
        batch: EncryptedBatch,
        *,
        plain: pd.DataFrame | np.ndarray | None = None,
        plain_columns: Sequence[str] | None = None,
        workers: int = 1,
        audit_log: Any = None,
    ) -> EncryptedBatch:
        """Score an encrypted batch; returns an encrypted ``scores`` batch (row order kept).

        Args:
            batch: made by :meth:`HEKeys.encrypt` with the same key set.
            plain: the non-sensitive features, one row per encrypted row (hybrid).
            plain_columns: which columns of ``plain`` the model reads (default: the
                model columns that ``plain`` has).
            workers: processes (TenSEAL holds the GIL; ciphertexts travel as bytes).
            audit_log: an AuditLog, a path, or None; one ``he.score`` entry.

        Raises:
            KeyMissingError: the batch was made with another key set.
            InputError: other parameters, or rows / columns that do not match.
        """
        header = batch.header
        header.check_compatible(
            kind="features",
            params=self.public_keys.params,
            key_id=self.public_keys.key_id,
            source="batch",
        )
        plan, pmatrix = self._prepare(
            header.columns, batch.rows, plain, plain_columns, packing=header.packing
        )
        with operation(audit_log, "he.score", params=self._audit_params(plan, batch.rows)):
            chunks = tuple(self._score_stream(batch.chunks, plan, pmatrix, workers=workers))
        return EncryptedBatch(self._scores_header(plan, batch.rows), chunks)

    def score_file(
        self,
        source: str | os.PathLike[str],
        target: str | os.PathLike[str],
        *,
        plain: pd.DataFrame | np.ndarray | str | os.PathLike[str] | None = None,
        plain_columns: Sequence[str] | None = None,
        workers: int = 1,
        audit_log: Any = None,
        inputs: Sequence[Any] = (),
        sep: str | None = None,
    ) -> BatchHeader:
        """Score an encrypted file into a scores file, one chunk at a time (flat memory).

        Args:
            source: the encrypted batch (from :meth:`HEKeys.encrypt_to_file`).
            target: the encrypted scores file to write (staged under an audit log: it
                appears only once its entry is written).
            plain: the non-sensitive features, as for :meth:`score`, or the location of
                a table holding them: then ``plain_columns`` name features or table
                columns (``city`` stands for the model's ``city=...`` features, see
                :meth:`~privdl.encrypted.models.ModelSpec.features_for`) and only the
                table columns they are made from are read.
            plain_columns: as for :meth:`score`; required with a table location.
            workers: scoring processes.
            audit_log: an AuditLog, a path, or None; one ``he.score`` entry.
            inputs: further files read, for the audit entry.
            sep: delimiter of a text ``plain`` table.

        Raises:
            UsageError: ``target`` is ``source``, or a table location without
                ``plain_columns``.
            InputError: the model reads none of ``plain_columns``; see :meth:`score`.
        """
        from privdl import io

        io.check_distinct_paths(source, target)
        if isinstance(plain, str | os.PathLike):
            plain, plain_columns = self._read_plain(plain, plain_columns, sep=sep)
        header = read_batch_header(source)
        name = Path(source).name
        header.check_compatible(
            kind="features",
            params=self.public_keys.params,
            key_id=self.public_keys.key_id,
            source=name,
        )
        if header.rows is None:
            raise InputError(f"{name}: the header does not give the row count")
        plan, pmatrix = self._prepare(
            header.columns, header.rows, plain, plain_columns, packing=header.packing
        )
        out_header = self._scores_header(plan, header.rows)
        with operation(
            audit_log,
            "he.score",
            params=self._audit_params(plan, header.rows),
            inputs=[os.fspath(source), *inputs],
        ) as op:
            # staged: the file appears only once its audit entry (if any) is written
            with (
                BatchWriter(op.stage(target), out_header) as writer,
                progress.step("scoring encrypted rows", total=header.rows) as bar,
            ):
                for chunk in self._score_stream(iter_chunks(source), plan, pmatrix, workers=workers):
                    writer.write(chunk)
                    bar.advance(chunk.rows)
            if writer.rows != header.rows:
                raise InputError(f"{name}: holds {writer.rows} rows, its header says {header.rows}")
            op.update(outputs=[os.fspath(target)])
        return out_header

    def _read_plain(
        self, location: str | os.PathLike[str], requested: Sequence[str] | None, *, sep: str | None
    ) -> tuple[pd.DataFrame, list[str]]:
        """The model features ``requested`` names and the table columns they come from."""
        from privdl import io

        if not requested:
            raise UsageError("a plain table needs plain_columns: the model columns it holds")
        features, sources = self.model_.features_for(requested)
        if not features:
            raise InputError(f"{Path(location).name}: the model reads none of the plain columns")
        return io.read_table(location, sep=sep, columns=sources), features

    def score_chunks(
        self,
        chunks: Iterable[Chunk],
        *,
        columns: Sequence[str],
        plain: Iterable[np.ndarray] | None = None,
        plain_columns: Sequence[str] = (),
        workers: int = 1,
    ) -> Iterator[Chunk]:
        """Score a stream of feature chunks in order, in flat memory.

        Args:
            chunks: encrypted chunks whose blobs follow ``columns``.
            columns: the encrypted feature names (a batch header's ``columns``).
            plain: per chunk, the plaintext features (rows x ``plain_columns``).
            plain_columns: names of the plaintext features.
            workers: scoring processes (started from a clean interpreter).
        """
        import numpy as np

        plan = self.plan(columns, plain_columns)
        keep = [list(plain_columns).index(c) for c in plan.plain_columns]
        plain_iter = iter(plain) if plain is not None else None

        def items() -> Iterator[tuple[Chunk, np.ndarray]]:
            for chunk in chunks:
                block = None
                if plain_iter is not None:
                    block = np.asarray(next(plain_iter), dtype=np.float64)[:, keep]
                yield chunk, self._partial(plan, block, 0, chunk.rows)

        yield from self._run(items(), plan, workers)

    def _prepare(
        self,
        encrypted_columns: Sequence[str],
        rows: int,
        plain: pd.DataFrame | np.ndarray | None,
        plain_columns: Sequence[str] | None,
        *,
        packing: str = "feature-major",
    ) -> tuple[_Plan, np.ndarray | None]:
        import numpy as np
        import pandas as pd

        from privdl.encrypted.packing import feature_matrix

        if plain is None:
            if plain_columns:
                raise UsageError("plain_columns given without plain data")
            return self.plan(encrypted_columns, packing=packing), None
        encoder = self.model_.info.get("encoder")
        if isinstance(plain, pd.DataFrame) and encoder is not None:
            # a PrivateTrainer model: its TableEncoder makes the plaintext features
            from privdl.encrypted.packing import encoder_groups, encoder_matrix

            if plain_columns is not None:
                names = list(plain_columns)
            else:
                made = {n for col, ns in encoder_groups(encoder) if col in plain.columns
                        for n in ns}  # fmt: skip
                names = [c for c in self.model_.columns
                         if c not in encrypted_columns and c in made]  # fmt: skip
            matrix = encoder_matrix(plain, names, encoder, source="plain input")
        elif isinstance(plain, pd.DataFrame):
            names = list(plain_columns) if plain_columns is not None else [
                c for c in self.model_.columns if c not in encrypted_columns
                and (c.split("=", 1)[0] in plain.columns)
            ]  # fmt: skip
            matrix = feature_matrix(plain, names, source="plain input")
        else:
            matrix = np.asarray(plain, dtype=np.float64)
            if matrix.ndim == 1:
                matrix = matrix[:, None]
            if plain_columns is None or len(plain_columns) != matrix.shape[1]:
                raise UsageError("name the columns of a plain array with plain_columns")
            names = list(plain_columns)
        if matrix.shape[0] != rows:
            raise InputError(f"plain input has {matrix.shape[0]} rows, the encrypted batch {rows}")
        plan = self.plan(encrypted_columns, names, packing=packing)
        keep = [names.index(c) for c in plan.plain_columns]
        return plan, np.ascontiguousarray(matrix[:, keep])

    def _score_stream(
        self,
        chunks: Iterable[Chunk],
        plan: _Plan,
        pmatrix: np.ndarray | None,
        *,
        workers: int,
    ) -> Iterator[Chunk]:
        def items() -> Iterator[tuple[Chunk, np.ndarray]]:
            start = 0
            for chunk in chunks:
                partial = self._partial(plan, pmatrix, start, start + chunk.rows)
                start += chunk.rows
                yield chunk, partial

        yield from self._run(items(), plan, workers)

    def _run(self, items: Iterator[tuple[Chunk, np.ndarray]], plan: _Plan, workers: int) -> Iterator[Chunk]:
        if workers > 1:
            from privdl.encrypted.pool import map_ordered

            yield from map_ordered(
                _score_task,
                items,
                initializer=_init_score_worker,
                initargs=(self.recipe(plan),),
                workers=workers,
                preload=("tenseal", __name__),
            )
            return
        for chunk, partial in items:
            yield self.score_chunk(chunk, plan, partial)

    @staticmethod
    def _partial(plan: _Plan, pmatrix: np.ndarray | None, a: int, b: int) -> np.ndarray:
        import numpy as np

        bias = np.asarray(plan.bias, dtype=np.float64)
        if pmatrix is None or pmatrix.shape[1] == 0:
            return np.broadcast_to(bias, (b - a, bias.shape[0])).copy()
        return pmatrix[a:b] @ np.asarray(plan.plain_weight).T + bias

    def score_chunk(self, chunk: Chunk, plan: _Plan, partial: np.ndarray) -> Chunk:
        """Score one chunk; ``partial`` (rows x outputs) is the plaintext part with bias."""
        ts: Any = require("tenseal", "he")
        ctx = self.public_keys.context()
        if partial.shape[0] != chunk.rows:
            raise InputError("plain partial scores do not match the chunk's rows")
        if plan.packing == "row":
            return self._score_row(chunk, plan, partial)
        try:
            vecs = [ts.ckks_vector_from(ctx, chunk.blobs[i]) for i in plan.enc_index]
        except IndexError:
            raise InputError("a chunk holds fewer ciphertexts than the header's columns") from None
        except Exception:
            raise InputError("a ciphertext in the batch cannot be read with this context") from None
        outs = self.evaluate(vecs, plan, partial)
        return Chunk(rows=chunk.rows, blobs=tuple(v.serialize() for v in outs))

    def _score_row(self, chunk: Chunk, plan: _Plan, partial: np.ndarray) -> Chunk:
        """Per-row packing: ``dot`` (rotations with the Galois keys) plus the plain part."""
        ts: Any = require("tenseal", "he")
        ctx = self.public_keys.context()
        try:
            vec = ts.ckks_vector_from(ctx, chunk.blobs[0])
        except Exception:
            raise InputError("a ciphertext in the batch cannot be read with this context") from None
        ctx.auto_rescale = True
        outs = [
            vec.dot(plan.row_weight[o].tolist()) + float(partial[0, o])
            for o in range(plan.row_weight.shape[0])
        ]
        return Chunk(rows=1, blobs=tuple(v.serialize() for v in outs))

    def evaluate(self, vecs: list[Any], plan: _Plan, partial: np.ndarray) -> list[Any]:
        """The homomorphic evaluation on deserialized ``CKKSVector`` s (one per input).

        Args:
            vecs: one vector per encrypted model input, in ``plan.enc_index`` order.
            plan: from :meth:`plan`.
            partial: plaintext part (bias + plain columns), rows x outputs.

        Returns:
            One encrypted vector per output.
        """
        import numpy as np

        ctx = self.public_keys.context()
        enc_w = np.asarray(plan.enc_weight)
        if self._fast:
            ctx.auto_rescale = False
            try:
                outs = [_linear_fast(vecs, enc_w[o], partial[:, o]) for o in range(enc_w.shape[0])]
            finally:
                ctx.auto_rescale = True
        else:
            ctx.auto_rescale = True
            outs = self._deep(vecs, enc_w, partial)
        return outs

    def _deep(self, vecs: list[Any], enc_w: np.ndarray, partial: np.ndarray) -> list[Any]:
        hidden = [_affine(vecs, enc_w[o], partial[:, o].tolist()) for o in range(enc_w.shape[0])]
        for act, layer in zip(self.model_.activations, self.model_.layers[1:], strict=True):
            activated = [_polyval(h, act.coefficients) for h in hidden]
            hidden = [_affine(activated, layer.w[o], float(layer.b[o])) for o in range(layer.shape[0])]
        if self.sigmoid_ is not None:
            hidden = [_polyval(h, self.sigmoid_.coefficients) for h in hidden]
        return hidden

    # -- headers, audit, workers --------------------------------------------------------
    def _scores_header(self, plan: _Plan, rows: int) -> BatchHeader:
        return BatchHeader(
            kind="scores",
            params=self.public_keys.params,
            key_id=self.public_keys.key_id,
            columns=tuple(self.model_.output_names()),
            rows=rows,
            packing=plan.packing,
            info={
                "model_id": self.model_.model_id(),
                "link": self.model_.link,
                "output": self.output,
                "encrypted_columns": list(plan.encrypted_columns),
                "plain_columns": list(plan.plain_columns),
                "approximation": self.approximation,
            },
        )

    def _audit_params(self, plan: _Plan, rows: int) -> dict[str, Any]:
        params = self.get_params()
        params.update(
            rows=rows,
            encrypted_columns=list(plan.encrypted_columns),
            plain_columns=list(plan.plain_columns),
        )
        return params

    def recipe(self, plan: _Plan) -> dict[str, Any]:
        """Public material a worker process rebuilds this scorer from (bytes and JSON)."""
        return {
            "context": self.public_keys.to_bytes(),
            "params": self.public_keys.params.to_dict(),
            "key_id": self.public_keys.key_id,
            "model": self.model_.to_json(),
            "output": self.output,
            "sigmoid": None if self.sigmoid_ is None else self.sigmoid_.to_dict(),
            "approximation": self.approximation_.to_dict(),
            "plan": plan,
        }

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any]) -> tuple[EncryptedScorer, _Plan]:
        from privdl.encrypted.params import ParameterSet

        public = PublicKeys.from_bytes(
            recipe["context"],
            params=ParameterSet.from_dict(recipe["params"]),
            key_id=recipe["key_id"],
        )
        sigmoid = PolyActivation.from_dict(recipe["sigmoid"]) if recipe["sigmoid"] else None
        report = ApproximationReport.from_dict(recipe["approximation"])
        scorer = cls(
            ModelSpec.from_json(recipe["model"]), public, output=recipe["output"], sigmoid=sigmoid,
            approximation=report,
        )  # fmt: skip
        return scorer, recipe["plan"]


# ----------------------------------------------------------------------------- workers
_WORKER: dict[str, Any] = {}


def _init_score_worker(recipe: dict[str, Any]) -> None:
    """Worker initializer: rebuild the scorer from public material only."""
    _WORKER["scorer"], _WORKER["plan"] = EncryptedScorer.from_recipe(recipe)


def _score_task(item: tuple[Chunk, np.ndarray]) -> Chunk:
    chunk, partial = item
    return _WORKER["scorer"].score_chunk(chunk, _WORKER["plan"], partial)


# ----------------------------------------------------------------------------- kernels
def _linear_fast(vecs: list[Any], weights: np.ndarray, partial: np.ndarray) -> Any:
    """sum_j w_j * c_j + partial, with one level and no rescale (auto_rescale off).

    The plaintext partial (bias + plain columns) is added to the largest-weight column
    before its product, ``(c_k + p / w_k) * w_k``, because after a product the
    ciphertext's scale is squared and a fresh plaintext could not be added to it.
    """
    import numpy as np

    k = int(np.argmax(np.abs(weights)))
    acc = vecs[k] + (partial / weights[k]).tolist()
    acc *= float(weights[k])
    for j, vec in enumerate(vecs):
        w = float(weights[j])
        if j != k and not _zero(w):
            acc += vec * w
    return acc


def _affine(vecs: Sequence[Any], weights: Any, partial: Any) -> Any:
    """sum_j w_j * c_j + partial, rescaling after each product (polynomial path)."""
    acc = None
    for vec, w in zip(vecs, weights, strict=True):
        if _zero(float(w)):
            continue
        term = vec * float(w)
        acc = term if acc is None else acc + term
    if acc is None:
        raise UsageError("a layer unit has no weight on any encrypted input")
    return acc + partial


def _polyval(x: Any, coefficients: Sequence[float]) -> Any:
    """c0 + c1 x + c2 x^2 + c3 x^3 with depth 1 (square / linear) or 2; no encryption.

    TenSEAL's ``polyval`` encrypts its constant term, which a public context cannot;
    the constant is added as a plaintext here.
    """
    if len(coefficients) > 4:
        raise UsageError("activation polynomials of degree above 3 are not supported")
    c = [0.0 if _zero(float(v)) else float(v) for v in coefficients]
    c += [0.0] * (4 - len(c))
    terms = []
    if c[3] != 0.0:
        x2 = x.square()
        terms.append((x * c[3]) * x2)
    if c[2] != 0.0:
        terms.append(x.square() if c[2] == 1.0 else (x * c[2]) * x)
    if c[1] != 0.0:
        terms.append(x * c[1])
    if not terms:
        raise UsageError("an activation polynomial without a variable term")
    acc = terms[0]
    for t in terms[1:]:
        acc = acc + t
    return acc + c[0] if c[0] != 0.0 else acc
