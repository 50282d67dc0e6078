"""Models the encrypted scorer can evaluate, and where they come from.

A :class:`ModelSpec` is a stack of affine layers with polynomial activations between
them, a link applied by the data owner after decryption (``logit`` -> exact sigmoid,
``softmax``, ``identity``) and an optional :class:`~privdl.encrypted.packing.Standardizer`.
It is built from

* torch: ``nn.Linear``, ``nn.Sequential`` of ``Linear`` layers with activations
  (``ReLU``, ``Tanh``, ``Sigmoid``, ``GELU``, ``SiLU`` are replaced by a least-squares
  polynomial on a stated input range, with the approximation error reported; a module
  named ``Square`` and :class:`privdl.encrypted.PolynomialActivation` are evaluated
  exactly), an optional final ``Sigmoid``/``Softmax``;
* scikit-learn: ``LogisticRegression``, ``LinearRegression`` (and other fitted linear
  models with ``coef_``/``intercept_``), alone or in a ``Pipeline`` after a
  ``StandardScaler``;
* files: the exported JSON formats ``privdl-linear/1`` and ``privdl-mlp/1`` written by
  :func:`export_linear_model`, or a ``.safetensors`` weight file with a JSON sidecar.
  Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privdl.encrypted.packing import Standardizer, encoder_groups, parse_feature
from privdl.encrypted.polynomial import (
    DEFAULT_RANGE,
    SIGMOID_RANGE,
    PolyActivation,
    approximate,
    exact_polynomial,
)
from privdl.errors import FormatError, InputError, UsageError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "LINEAR_FORMAT",
    "MLP_FORMAT",
    "Layer",
    "ModelSpec",
    "PolyActivation",
    "approximate",
    "as_model",
    "exact_polynomial",
    "export_linear_model",
    "load_model_spec",
]

LINEAR_FORMAT = "privdl-linear/1"
MLP_FORMAT = "privdl-mlp/1"
LINKS = ("logit", "identity", "softmax")


@dataclass(frozen=True)
class Layer:
    """An affine layer: ``weight`` (outputs x inputs) and ``bias`` (outputs,)."""

    weight: tuple[tuple[float, ...], ...]
    bias: tuple[float, ...]

    @classmethod
    def from_arrays(cls, weight: Any, bias: Any | None) -> Layer:
        import numpy as np

        w = np.asarray(weight, dtype=np.float64)
        if w.ndim == 1:
            w = w[None, :]
        b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64).ravel()
        if w.ndim != 2 or b.shape[0] != w.shape[0]:
            raise InputError(f"layer weight {w.shape} and bias {b.shape} do not fit together")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise InputError("layer holds a non-finite weight")
        return cls(tuple(tuple(float(v) for v in row) for row in w), tuple(float(v) for v in b))

    @property
    def w(self) -> np.ndarray:
        import numpy as np

        return np.asarray(self.weight, dtype=np.float64)

    @property
    def b(self) -> np.ndarray:
        import numpy as np

        return np.asarray(self.bias, dtype=np.float64)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.weight), len(self.weight[0]) if self.weight else 0


@dataclass(frozen=True)
class ModelSpec:
    """What the encrypted scorer evaluates; public (it holds weights, no data).

    Attributes:
        columns: the input features, in the order of the first layer's inputs
            (``"age"`` numeric, ``"sex=Female"`` indicator).
        layers: affine layers, first to last.
        activations: one polynomial between each pair of layers.
        link: ``"logit"`` (exact sigmoid after decryption), ``"softmax"`` or ``"identity"``.
        scaler: standardization of the inputs, folded into the first layer when scoring.
    """

    columns: tuple[str, ...]
    layers: tuple[Layer, ...]
    activations: tuple[PolyActivation, ...] = ()
    link: str = "identity"
    scaler: Standardizer | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layers:
            raise InputError("a model needs at least one layer")
        if len(self.activations) != len(self.layers) - 1:
            raise InputError("a model needs one activation between each pair of layers")
        if self.link not in LINKS:
            raise InputError(f"link must be one of {LINKS}, not {self.link!r}")
        if self.layers[0].shape[1] != len(self.columns):
            raise InputError(f"model has {len(self.columns)} columns for {self.layers[0].shape[1]} inputs")
        for a, b in zip(self.layers, self.layers[1:], strict=False):
            if b.shape[1] != a.shape[0]:
                raise InputError("consecutive layers do not fit together")
        if self.scaler is not None and len(self.scaler.mean) != len(self.columns):
            raise InputError("scaler length differs from the number of columns")
        if len(set(self.columns)) != len(self.columns):
            raise InputError("model columns are not unique")

    @property
    def is_linear(self) -> bool:
        return len(self.layers) == 1

    @property
    def outputs(self) -> int:
        return self.layers[-1].shape[0]

    def output_names(self) -> list[str]:
        return ["score"] if self.outputs == 1 else [f"score_{i}" for i in range(self.outputs)]

    def depth(self, *, output: str = "logit", sigmoid: PolyActivation | None = None) -> int:
        """Multiplicative depth of the encrypted evaluation (levels the keys need)."""
        depth = len(self.layers) + sum(a.depth for a in self.activations)
        if output == "probability":
            depth += (sigmoid or approximate("sigmoid", degree=3, range=SIGMOID_RANGE)).depth
        return depth

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """First-layer weight and bias with the scaler folded in."""
        first = self.layers[0]
        if self.scaler is None:
            return first.w, first.b
        return self.scaler.fold(first.w, first.b)

    def predict(self, matrix: np.ndarray, *, exact: bool = False) -> np.ndarray:
        """Plaintext reference: the pre-link output (logit) of the polynomial model.

        Args:
            matrix: rows x columns, raw (unscaled) feature values.
            exact: use the original activations instead of their polynomials.
        """
        import numpy as np

        w, b = self.folded()
        h = np.asarray(matrix, dtype=np.float64) @ w.T + b
        for act, layer in zip(self.activations, self.layers[1:], strict=True):
            h = act.reference(h) if exact else act(h)
            h = h @ layer.w.T + layer.b
        return h

    # -- serialization ----------------------------------------------------------------
    def to_json(self) -> str:
        common: dict[str, Any] = {"columns": list(self.columns), "link": self.link}
        if self.scaler is not None:
            common["scaler"] = self.scaler.to_dict()
        if self.info:
            common["info"] = self.info
        if self.is_linear and self.outputs == 1:
            layer = self.layers[0]
            body = {
                "format": LINEAR_FORMAT,
                "weights": list(layer.weight[0]),
                "bias": layer.bias[0],
                **common,
            }
        else:
            body = {
                "format": MLP_FORMAT,
                "layers": [
                    {"weight": [list(row) for row in layer.weight], "bias": list(layer.bias)}
                    for layer in self.layers
                ],
                "activations": [a.to_dict() for a in self.activations],
                **common,
            }
        return json.dumps(body, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "model") -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise FormatError(f"{source}: not valid JSON") from None
        if not isinstance(data, dict):
            raise FormatError(f"{source}: not a JSON object")
        fmt = data.get("format")
        if fmt not in (LINEAR_FORMAT, MLP_FORMAT):
            raise FormatError(
                f"{source}: unknown model format {fmt!r}; expected {LINEAR_FORMAT} or {MLP_FORMAT}"
            )
        try:
            scaler = Standardizer.from_dict(data["scaler"]) if data.get("scaler") else None
            common = {
                "columns": tuple(str(c) for c in data["columns"]),
                "link": str(data.get("link", "identity")),
                "scaler": scaler,
                "info": dict(data.get("info") or {}),
            }
            if fmt == LINEAR_FORMAT:
                layers: tuple[Layer, ...] = (Layer.from_arrays([data["weights"]], [data.get("bias", 0.0)]),)
                return cls(layers=layers, **common)  # type: ignore[arg-type]
            else:
                layers = tuple(
                    Layer.from_arrays(layer["weight"], layer.get("bias")) for layer in data["layers"]
                )
                acts = tuple(PolyActivation.from_dict(a) for a in data.get("activations", []))
                return cls(layers=layers, activations=acts, **common)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, FormatError):
                raise
            if isinstance(exc, InputError):
                raise InputError(f"{source}: {exc}") from None
            raise FormatError(f"{source}: malformed model ({type(exc).__name__})") from None

    def model_id(self) -> str:
        """A public fingerprint of the model (columns, weights, link, scaler)."""
        from privdl.fingerprint import fingerprint_bytes

        return "mdl_" + fingerprint_bytes(self.to_json().encode())["sha256"][:16]

    def features_for(self, requested: Sequence[str]) -> tuple[list[str], list[str]]:
        """The model's features that ``requested`` names, in model order, and the table
        columns they are made from.

        ``requested`` may name features (``"age"``, ``"city=Berlin"``) or table columns:
        ``"city"`` stands for every feature the model makes from it (through the
        TableEncoder of a PrivateTrainer model, else its ``city=VALUE`` indicators).
        What the model does not read is left out.

        Example:
            >>> spec = ModelSpec(columns=("age", "city=Berlin", "city=Paris"),
            ...                  layers=(Layer.from_arrays([[1.0, 2.0, 3.0]], [0.0]),))
            >>> spec.features_for(["city"])
            (['city=Berlin', 'city=Paris'], ['city'])
        """
        encoder = self.info.get("encoder")
        if encoder is not None:
            source = {n: col for col, names in encoder_groups(encoder) for n in names}
        else:
            source = {c: parse_feature(c)[0] for c in self.columns}
        wanted = set(requested)
        features = [c for c in self.columns if c in wanted or source.get(c) in wanted]
        return features, list(dict.fromkeys(source[c] for c in features))


# ----------------------------------------------------------------------------- extraction
def as_model(
    model: Any,
    *,
    columns: Sequence[str] | None = None,
    scaler: Any = None,
    link: str | None = None,
    activation_degree: int = 2,
    activation_range: tuple[float, float] = DEFAULT_RANGE,
    key: Any = None,
) -> ModelSpec:
    """Extract a :class:`ModelSpec` from a torch module, a scikit-learn model or a file.

    Args:
        model: ``ModelSpec``, a path (``.json`` / ``.safetensors``), a torch module or a
            fitted scikit-learn estimator / pipeline.
        columns: feature names (default: the model's own, e.g. sklearn's
            ``feature_names_in_``, else ``x0, x1, ...``).
        scaler: a fitted ``StandardScaler``, a :class:`Standardizer`, or a mapping with
            ``mean`` and ``scale``.
        link: override the link (``"logit"``, ``"identity"``, ``"softmax"``).
        activation_degree: degree of the polynomials replacing non-polynomial activations.
        activation_range: input range those polynomials are fitted on.
        key: for a signed PrivateTrainer model folder, the HMAC Secret or Ed25519
            public key its signature is checked with (see :func:`load_model_spec`).

    Raises:
        UsageError: a model kind or layer that cannot be evaluated on ciphertexts.
    """
    if isinstance(model, ModelSpec):
        spec = model
    elif isinstance(model, str | os.PathLike):
        spec = load_model_spec(
            model, key=key, activation_degree=activation_degree, activation_range=activation_range
        )
    elif _is_torch_module(model):
        spec = _from_torch(model, activation_degree, activation_range)
    elif hasattr(model, "predict") or hasattr(model, "steps"):
        spec = _from_sklearn(model)
    else:
        raise UsageError(f"cannot score a {type(model).__name__} encrypted")
    if columns is not None:
        if len(columns) != len(spec.columns):
            raise UsageError(f"{len(columns)} column names for a model with {len(spec.columns)}")
        spec = replace(spec, columns=tuple(columns))
    if scaler is not None:
        if spec.scaler is not None:
            raise UsageError("the model already carries a scaler")
        spec = replace(spec, scaler=_as_standardizer(scaler, len(spec.columns)))
    if link is not None:
        spec = replace(spec, link=link)
    return spec


def _is_torch_module(model: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module"
               for c in type(model).__mro__)  # fmt: skip


def _default_columns(n: int) -> tuple[str, ...]:
    return tuple(f"x{i}" for i in range(n))


def _as_standardizer(scaler: Any, n: int) -> Standardizer:
    import numpy as np

    if isinstance(scaler, Standardizer):
        result = scaler
    elif isinstance(scaler, dict):
        result = Standardizer.from_dict(scaler)
    elif hasattr(scaler, "scale_") or hasattr(scaler, "mean_"):
        mean = getattr(scaler, "mean_", None)
        scale = getattr(scaler, "scale_", None)
        mean = np.zeros(n) if mean is None else np.asarray(mean, dtype=np.float64)
        scale = np.ones(n) if scale is None else np.asarray(scale, dtype=np.float64)
        result = Standardizer(tuple(float(v) for v in mean), tuple(float(v) for v in scale))
    else:
        raise UsageError(f"unsupported scaler {type(scaler).__name__}; use a StandardScaler")
    if len(result.mean) != n:
        raise UsageError(f"scaler has {len(result.mean)} features, the model {n}")
    return result


def _reduce_two_class(layer: Layer) -> Layer:
    """Two-class softmax logits -> one logit: sigmoid(z1 - z0) == softmax(z)[1]."""
    w, b = layer.w, layer.b
    return Layer.from_arrays(w[1] - w[0], [b[1] - b[0]])


def _from_torch(module: Any, degree: int, rng: tuple[float, float]) -> ModelSpec:
    torch = __import__("torch")
    nn = torch.nn
    from privdl.encrypted.activations import PolynomialActivation

    modules = list(module) if isinstance(module, nn.Sequential) else [module]
    items: list[tuple[str, Any, Any]] = []
    for m in modules:
        if isinstance(m, nn.Linear):
            items.append(("linear", m.weight.detach().cpu().double().numpy(), _bias(m)))
        elif isinstance(m, PolynomialActivation):
            items.append(("polynomial", m.coefficients, None))
        else:
            items.append((type(m).__name__.lower(), None, None))
    return _from_layers(items, degree, rng, link="identity")


_SKIP = ("dropout", "identity", "flatten")
_APPROXIMABLE = ("relu", "tanh", "sigmoid", "gelu", "silu")


def _from_layers(
    items: Sequence[tuple[str, Any, Any]],
    degree: int,
    rng: tuple[float, float],
    *,
    link: str,
    columns: Sequence[str] | None = None,
) -> ModelSpec:
    """Build a spec from ``(kind, weight, bias)`` items: ``"linear"`` or an activation name."""
    layers: list[Layer] = []
    activations: list[PolyActivation] = []
    pending: PolyActivation | None = None
    for i, (kind, weight, bias) in enumerate(items):
        last = i == len(items) - 1
        if kind == "linear":
            w = weight
            b = bias if bias is not None else None
            if layers and pending is None:
                # two affine layers in a row compose into one
                prev = layers.pop()
                b = w @ prev.b + (0.0 if b is None else b)
                w = w @ prev.w
            if pending is not None:
                activations.append(pending)
                pending = None
            layers.append(Layer.from_arrays(w, b))
        elif kind in _SKIP:
            continue
        elif last and kind == "sigmoid":
            link = "logit"
        elif last and kind in ("softmax", "logsoftmax"):
            link = "softmax"
        elif kind == "square":
            pending = approximate("square", range=rng)
        elif kind == "polynomial":
            if not layers:
                raise UsageError("an activation before the first Linear layer is not supported")
            pending = exact_polynomial(weight, range=rng)
        else:
            if kind not in _APPROXIMABLE:
                raise UsageError(f"layer {i} ({kind}) cannot be evaluated encrypted")
            if not layers:
                raise UsageError("an activation before the first Linear layer is not supported")
            pending = approximate(kind, degree=degree, range=rng)
    if not layers:
        raise UsageError("the model has no Linear layer")
    if pending is not None:
        raise UsageError("a hidden activation after the last Linear layer is not supported")
    if link == "softmax" and layers[-1].shape[0] == 2:
        layers[-1] = _reduce_two_class(layers[-1])
        link = "logit"
    return ModelSpec(
        columns=tuple(columns) if columns is not None else _default_columns(layers[0].shape[1]),
        layers=tuple(layers),
        activations=tuple(activations),
        link=link,
    )


def _bias(m: Any) -> Any:
    import numpy as np

    if m.bias is None:
        return np.zeros(m.out_features)
    return m.bias.detach().cpu().double().numpy()


def _from_sklearn(model: Any) -> ModelSpec:
    import numpy as np

    scaler = None
    estimator = model
    if hasattr(model, "steps"):
        steps = [s for _, s in model.steps if s is not None and s != "passthrough"]
        *transforms, estimator = steps
        for t in transforms:
            if type(t).__name__ != "StandardScaler":
                raise UsageError(f"pipeline step {type(t).__name__} cannot be folded; "
                                 "only StandardScaler is supported")  # fmt: skip
            if scaler is not None:
                raise UsageError("more than one StandardScaler in the pipeline")
            scaler = t
    if not (hasattr(estimator, "coef_") and hasattr(estimator, "intercept_")):
        raise UsageError(f"{type(estimator).__name__} is not a fitted linear model")
    coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))
    if intercept.shape[0] == 1 and coef.shape[0] > 1:
        intercept = np.repeat(intercept, coef.shape[0])
    # a classifier outputs logits (one, or one per class); a regressor the value itself
    multi = "logit" if coef.shape[0] == 1 else "softmax"
    link = multi if hasattr(estimator, "classes_") else "identity"
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        names = getattr(estimator, "feature_names_in_", None)
    columns = tuple(str(c) for c in names) if names is not None else _default_columns(coef.shape[1])
    spec = ModelSpec(columns=columns, layers=(Layer.from_arrays(coef, intercept),), link=link)
    if scaler is not None:
        spec = replace(spec, scaler=_as_standardizer(scaler, coef.shape[1]))
    return spec


# ----------------------------------------------------------------------------- files
def export_linear_model(
    model: Any,
    path: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    scaler: Any = None,
    link: str | None = None,
    activation_degree: int = 2,
    activation_range: tuple[float, float] = DEFAULT_RANGE,
) -> Path:
    """Write ``model`` as a small public JSON file the scorer and the CLI read.

    Linear single-output models are written as ``privdl-linear/1``::

        {"format": "privdl-linear/1", "columns": [...], "weights": [...], "bias": 0.1,
         "link": "logit", "scaler": {"mean": [...], "scale": [...]}}

    small MLPs (with their activation polynomials and errors) as ``privdl-mlp/1``.

    Example:
        >>> export_linear_model(clf, "model.json", columns=["age", "sex=Female"])  # doctest: +SKIP
    """
    from privdl.io import atomic_write

    spec = as_model(
        model,
        columns=columns,
        scaler=scaler,
        link=link,
        activation_degree=activation_degree,
        activation_range=activation_range,
    )
    with atomic_write(path, "w") as fh:
        fh.write(spec.to_json() + "\n")
    return Path(path)


def load_model_spec(
    path: str | os.PathLike[str],
    *,
    key: Any = None,
    activation_degree: int = 2,
    activation_range: tuple[float, float] = DEFAULT_RANGE,
) -> ModelSpec:
    """Read a saved PrivateTrainer model, an exported JSON model, or safetensors + sidecar.

    A folder holding ``meta.json`` (format ``privdl-model/1``) is a model saved by
    :meth:`PrivateTrainer.save`: its signature is verified (``key``: the signing Secret
    or Ed25519 public key, for signed models), layers are rebuilt from ``meta.json``,
    weights read from ``model.safetensors``, columns are its ``feature_names`` and its
    ``encoder.json`` (the TableEncoder) is kept so both sides encode tables the same way.

    The sidecar (``model.json`` beside ``model.safetensors``, or ``model.safetensors.json``,
    or ``metadata.json`` in the same folder) must give ``columns`` (or
    ``feature_names``); it may give ``link``, ``scaler``, ``activation`` (name, or the
    polynomial dict), ``activation_degree``, ``activation_range`` and ``layers`` (an
    ordered list of ``{"weight": TENSOR, "bias": TENSOR}`` names). Without ``layers`` the
    2-D ``*.weight`` tensors are taken in natural order of their names. Weights are
    read with ``safetensors`` (no pickle).

    Raises:
        InputError: missing file or sidecar.
        FormatError: unreadable or inconsistent file.
    """
    p = Path(path)
    if p.is_dir() and (p / "meta.json").exists():
        return _from_privdl_model(p, key=key, degree=activation_degree, rng=activation_range)
    if p.is_dir():
        candidates = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.json"))
        if not candidates:
            raise InputError(f"{p}: no model file (.safetensors or .json) in this folder")
        p = candidates[0]
    if not p.exists():
        raise InputError(f"model file {p} does not exist")
    if p.suffix.lower() == ".json":
        return ModelSpec.from_json(p.read_text(encoding="utf-8"), source=p.name)
    if p.suffix.lower() == ".safetensors":
        return _from_safetensors(p)
    raise FormatError(f"{p.name}: unknown model format; use an exported .json or .safetensors")


def _from_privdl_model(folder: Path, *, key: Any, degree: int, rng: tuple[float, float]) -> ModelSpec:
    import numpy as np

    # the torch-free reader: a scoring server verifies and reads the folder without torch
    from privdl.train.modelfile import read_model_folder

    saved = read_model_folder(folder, key=key)
    meta, encoder_json = saved.meta, saved.encoder_json
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in saved.arrays().items()}
    container = meta.get("container")
    described = meta.get("layers") or []
    if container not in ("sequential", "single") or not described:
        raise UsageError(f"{folder.name}: the model's architecture is not described in meta.json")
    items: list[tuple[str, Any, Any]] = []
    for i, layer in enumerate(described):
        kind = str(layer.get("type", "")).lower()
        prefix = f"{i}." if container == "sequential" else ""
        if kind == "linear":
            if prefix + "weight" not in arrays:
                raise FormatError(f"{folder.name}: tensor {prefix}weight is missing")
            items.append(("linear", arrays[prefix + "weight"], arrays.get(prefix + "bias")))
        else:
            items.append((kind, None, None))
    task = meta.get("task")
    link = {"binary": "logit", "multiclass": "softmax"}.get(str(task), "identity")
    columns = meta.get("feature_names")
    spec = _from_layers(items, degree, rng, link=link, columns=columns)
    if encoder_json:
        spec = replace(spec, info={**spec.info, "encoder": json.loads(encoder_json)})
    return spec


def _sidecar(p: Path) -> dict[str, Any]:
    for candidate in (p.with_suffix(".json"), p.with_name(p.name + ".json"),
                      p.with_name("metadata.json"), p.with_name("model.json")):  # fmt: skip
        if candidate.exists() and candidate != p:
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise FormatError(f"{candidate.name}: not valid JSON") from None
            if isinstance(data, dict):
                return data
    raise InputError(f"{p.name}: no JSON sidecar with the model's columns beside it")


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _from_safetensors(p: Path) -> ModelSpec:
    from privdl._optional import require

    st_numpy: Any = require("safetensors.numpy", "train")
    try:
        tensors = st_numpy.load_file(str(p))
    except Exception:
        raise FormatError(f"{p.name}: not a readable safetensors file") from None
    meta = _sidecar(p)
    meta = dict(meta.get("encrypted", meta))  # a trainer may nest what the scorer needs
    columns = meta.get("columns") or meta.get("feature_names")
    if not columns:
        raise InputError(f"{p.name}: the sidecar does not name the model's columns")
    if "layers" in meta:
        pairs = [(str(layer["weight"]), layer.get("bias")) for layer in meta["layers"]]
    else:
        weights = sorted(
            (k for k, v in tensors.items() if k.endswith("weight") and v.ndim == 2), key=_natural
        )
        pairs = [(k, k[: -len("weight")] + "bias") for k in weights]
    layers = []
    for wname, bname in pairs:
        if wname not in tensors:
            raise FormatError(f"{p.name}: tensor {wname!r} is missing")
        bias = tensors.get(bname) if bname else None
        layers.append(Layer.from_arrays(tensors[wname], bias))
    if not layers:
        raise FormatError(f"{p.name}: no 2-D weight tensors")
    act_meta = meta.get("activation", "relu")
    degree = int(meta.get("activation_degree", 2))
    rng = tuple(meta.get("activation_range", DEFAULT_RANGE))
    if isinstance(act_meta, dict):
        act = PolyActivation.from_dict(act_meta)
    else:
        act = approximate(str(act_meta).lower(), degree=degree, range=(float(rng[0]), float(rng[1])))
    link = str(meta.get("link", "identity"))
    if link == "softmax" and layers[-1].shape[0] == 2:
        layers[-1] = _reduce_two_class(layers[-1])
        link = "logit"
    scaler = Standardizer.from_dict(meta["scaler"]) if meta.get("scaler") else None
    return ModelSpec(
        columns=tuple(str(c) for c in columns),
        layers=tuple(layers),
        activations=tuple(act for _ in layers[1:]),
        link=link,
        scaler=scaler,
    )
