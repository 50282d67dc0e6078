from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from privdl.encrypted.models import (
    LINEAR_FORMAT,
    MLP_FORMAT,
    ModelSpec,
    approximate,
    as_model,
    export_linear_model,
    load_model_spec,
)
from privdl.errors import FormatError, InputError, UsageError

RNG = np.random.default_rng(0)


def _x(n=50, d=4):
    return RNG.normal(size=(n, d))


def test_torch_linear_and_sigmoid_link():
    torch.manual_seed(0)
    lin = nn.Linear(4, 1)
    spec = as_model(nn.Sequential(lin, nn.Sigmoid()), columns=["a", "b", "c", "d"])
    assert spec.link == "logit" and spec.is_linear and spec.columns == ("a", "b", "c", "d")
    x = _x()
    with torch.no_grad():
        expected = lin(torch.tensor(x, dtype=torch.float32)).numpy()
    assert np.allclose(spec.predict(x), expected, atol=1e-5)
    assert as_model(lin).link == "identity"


def test_two_class_softmax_becomes_one_logit():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 2), nn.Softmax(dim=1))
    spec = as_model(net)
    assert spec.outputs == 1 and spec.link == "logit"
    x = _x()
    with torch.no_grad():
        probs = net(torch.tensor(x, dtype=torch.float32)).numpy()[:, 1]
    assert np.allclose(1 / (1 + np.exp(-spec.predict(x)[:, 0])), probs, atol=1e-5)


def test_consecutive_linear_layers_compose():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    spec = as_model(net)
    assert spec.is_linear
    with torch.no_grad():
        expected = net(torch.tensor(_x(), dtype=torch.float32)).numpy()
    assert np.allclose(spec.predict(RNG.normal(size=(0, 4))).shape, (0, 1))
    x = _x()
    with torch.no_grad():
        expected = net(torch.tensor(x, dtype=torch.float32)).numpy()
    assert np.allclose(spec.predict(x), expected, atol=1e-5)


def test_mlp_activation_is_a_polynomial_with_a_true_error():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 1))
    spec = as_model(net, activation_degree=2, activation_range=(-3.0, 3.0))
    (act,) = spec.activations
    assert act.name == "relu" and act.degree == 2 and act.range == (-3.0, 3.0)
    grid = np.linspace(-3, 3, 20001)
    true_error = np.max(np.abs(act(grid) - np.maximum(grid, 0)))
    assert act.max_error == pytest.approx(true_error, rel=1e-3)
    assert 0.05 < act.max_error < 0.5
    x = _x()
    with torch.no_grad():
        exact = net(torch.tensor(x, dtype=torch.float32)).numpy()
    assert np.allclose(spec.predict(x, exact=True), exact, atol=1e-5)


@pytest.mark.parametrize("name,degree", [("sigmoid", 3), ("tanh", 3), ("gelu", 2), ("silu", 2)])
def test_approximation_errors_are_measured(name, degree):
    from privdl.encrypted.polynomial import activation_function

    poly = approximate(name, degree=degree, range=(-4, 4))
    grid = np.linspace(-4, 4, 9999)
    assert poly.max_error == pytest.approx(
        np.max(np.abs(poly(grid) - activation_function(name)(grid))), rel=1e-2, abs=1e-6
    )


def test_square_is_exact_and_shallow():
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    spec = as_model(nn.Sequential(nn.Linear(3, 2), Square(), nn.Linear(2, 1)))
    assert spec.activations[0].max_error == 0.0 and spec.activations[0].depth == 1
    assert spec.depth() == 3


def test_unsupported_layers_are_refused():
    with pytest.raises(UsageError, match="batchnorm1d"):
        as_model(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Linear(2, 1)))
    with pytest.raises(UsageError):
        as_model(nn.Sequential(nn.ReLU(), nn.Linear(2, 1)))
    with pytest.raises(UsageError):
        as_model(object())


def test_sklearn_models_and_pipeline():
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = _x(200, 3) * [1, 10, 100] + [0, 5, 50]
    y = (x[:, 0] + x[:, 1] / 10 > 0.5).astype(int)
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    spec = as_model(pipe)
    assert spec.link == "logit" and spec.scaler is not None
    assert np.allclose(spec.predict(x)[:, 0], pipe.decision_function(x), atol=1e-9)
    reg = LinearRegression().fit(x, x @ [1.0, 2.0, 3.0] + 4)
    rspec = as_model(reg, columns=["a", "b", "c"])
    assert rspec.link == "identity" and np.allclose(rspec.predict(x)[:, 0], reg.predict(x))
    multi = LogisticRegression(max_iter=500).fit(x, (x[:, 0] > 0).astype(int) + (x[:, 1] > 5))
    mspec = as_model(multi)
    assert mspec.link == "softmax" and mspec.outputs == 3


def test_export_and_load_linear_json(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = _x(100, 2)
    y = (x[:, 0] > 0).astype(int)
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression().fit(scaler.transform(x), y)
    path = export_linear_model(clf, tmp_path / "m.json", columns=["age", "sex=F"], scaler=scaler)
    data = json.loads(path.read_text())
    assert data["format"] == LINEAR_FORMAT and data["link"] == "logit"
    assert data["columns"] == ["age", "sex=F"] and len(data["weights"]) == 2
    assert set(data["scaler"]) == {"mean", "scale"}
    spec = load_model_spec(path)
    assert np.allclose(spec.predict(x)[:, 0], clf.decision_function(scaler.transform(x)))


def test_export_and_load_mlp_json(tmp_path):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    path = export_linear_model(net, tmp_path / "mlp.json", columns=["a", "b", "c"])
    assert json.loads(path.read_text())["format"] == MLP_FORMAT
    spec = load_model_spec(path)
    assert spec == as_model(net, columns=["a", "b", "c"])


def test_safetensors_with_sidecar(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "model.safetensors")
    with pytest.raises(InputError, match="sidecar"):
        load_model_spec(tmp_path / "model.safetensors")
    (tmp_path / "model.json").write_text(
        json.dumps(
            {
                "columns": ["a", "b", "c"],
                "activation": "relu",
                "link": "logit",
                "scaler": {"mean": [0, 1, 2], "scale": [1, 2, 3]},
            }
        )
    )
    spec = load_model_spec(tmp_path / "model.safetensors")
    assert spec.columns == ("a", "b", "c") and len(spec.layers) == 2 and spec.link == "logit"
    x = _x(30, 3)
    with torch.no_grad():
        exact = net(torch.tensor((x - [0, 1, 2]) / [1, 2, 3], dtype=torch.float32)).numpy()
    assert np.allclose(spec.predict(x, exact=True), exact, atol=1e-5)


def test_malformed_model_files(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(FormatError):
        load_model_spec(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(FormatError, match="unknown model format"):
        load_model_spec(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(
        json.dumps({"format": LINEAR_FORMAT, "columns": ["a"], "weights": [1, 2], "bias": 0})
    )
    with pytest.raises(InputError):
        load_model_spec(tmp_path / "c.json")
    (tmp_path / "d.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(FormatError):
        load_model_spec(tmp_path / "d.pt")


def test_model_id_changes_with_weights():
    from privdl.encrypted.models import Layer

    a = ModelSpec(columns=("x",), layers=(Layer.from_arrays([[1.0]], [0.0]),))
    b = ModelSpec(columns=("x",), layers=(Layer.from_arrays([[1.5]], [0.0]),))
    assert a.model_id() != b.model_id() and a.model_id() == ModelSpec.from_json(a.to_json()).model_id()
