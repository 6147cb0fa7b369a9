"""from_keras_h5 on files written here with h5py in exactly Keras 2's ``model.save`` layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from nnbound.errors import InputError, ModelFormatError, UnsupportedError
from nnbound.network import Activation, Dense, Flatten
from nnbound.network.from_keras_h5 import from_keras_h5, is_hdf5
from nnbound.network.load import load_model


def write_keras_h5(
    path: Path,
    layers: list[dict[str, Any]],
    weights: dict[str, list[tuple[str, np.ndarray]]],
    *,
    style: str = "dict",
    keras_version: str = "2.2.4",
    chunk_layer_names: bool = False,
) -> Path:
    """Write what Keras 2's ``save_model`` writes: ``layers`` are ``{"class_name", "config"}``
    records, ``weights`` maps a layer name to its ``(weight name, array)`` pairs."""
    config: Any = layers if style == "list" else {"name": "sequential_1", "layers": layers}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = keras_version.encode()
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(
            {"class_name": "Sequential", "config": config}
        ).encode()
        f.attrs["training_config"] = json.dumps({"loss": "categorical_crossentropy"}).encode()
        g = f.create_group("model_weights")
        names = [la["config"]["name"] for la in layers if la["class_name"] != "InputLayer"]
        encoded = np.array([n.encode() for n in names])
        if chunk_layer_names:  # what Keras does when the attribute exceeds 64 KiB
            g.attrs["layer_names0"] = encoded[:2]
            g.attrs["layer_names1"] = encoded[2:]
        else:
            g.attrs["layer_names"] = encoded
        g.attrs["backend"] = b"tensorflow"
        g.attrs["keras_version"] = keras_version.encode()
        for lname in names:
            lg = g.create_group(lname)
            pairs = weights.get(lname, [])
            lg.attrs["weight_names"] = np.array([wn.encode() for wn, _ in pairs], dtype="S")
            for wn, arr in pairs:
                lg.create_dataset(wn, data=arr)
    return path


def _dense(name: str, units: int, activation: str = "linear", **extra: Any) -> dict[str, Any]:
    cfg = {
        "name": name,
        "trainable": True,
        "units": units,
        "activation": activation,
        "use_bias": True,
        "kernel_initializer": {"class_name": "VarianceScaling"},
        **extra,
    }
    return {"class_name": "Dense", "config": cfg}


# The reference MLP's Lambda layer, declared as its arctan (the code is never run).
ARCTAN = {"arctan_1": "arctan"}


def _kernel(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    return (rng.standard_normal((n_in, n_out)) * 0.2).astype(np.float32)


def _mlp_file(path: Path, style: str, **kw: Any) -> tuple[Path, dict[str, np.ndarray]]:
    """The reference's 784-20-20-10 MLP: Flatten, Dense+LeakyReLU(0.3), Dense+tanh,
    Dense+arctan (Lambda), Dense logits."""
    rng = np.random.default_rng(0)
    w = {
        "k1": _kernel(rng, 784, 20),
        "b1": (rng.standard_normal(20) * 0.1).astype(np.float32),
        "k2": _kernel(rng, 20, 20),
        "b2": (rng.standard_normal(20) * 0.1).astype(np.float32),
        "k3": _kernel(rng, 20, 10),
        "b3": (rng.standard_normal(10) * 0.1).astype(np.float32),
    }
    layers = [
        {
            "class_name": "Flatten",
            "config": {
                "name": "flatten_1",
                "batch_input_shape": [None, 28, 28, 1],
                "dtype": "float32",
                "data_format": "channels_last",
            },
        },
        _dense("dense_1", 20),
        {"class_name": "LeakyReLU", "config": {"name": "leaky_re_lu_1", "alpha": 0.3}},
        _dense("dense_2", 20, "tanh"),
        {"class_name": "Dropout", "config": {"name": "dropout_1", "rate": 0.5}},
        {
            "class_name": "Lambda",
            "config": {
                "name": "arctan_1",
                "function": ["4wEAAAAAAAAAAQAAAAMAAABTAAAA", None, None],
                "function_type": "lambda",
            },
        },
        _dense("dense_3", 10),
    ]
    weights = {
        f"dense_{i}": [(f"dense_{i}/kernel:0", w[f"k{i}"]), (f"dense_{i}/bias:0", w[f"b{i}"])]
        for i in (1, 2, 3)
    }
    return write_keras_h5(path, layers, weights, style=style, **kw), w


def _numpy_forward(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """The Keras model's logits in float64 numpy (x is (N, 28, 28, 1), HWC)."""
    h = x.reshape(len(x), -1).astype(np.float64)
    z = h @ w["k1"].astype(np.float64) + w["b1"]
    h = np.where(z > 0, z, 0.3 * z)
    h = np.tanh(h @ w["k2"].astype(np.float64) + w["b2"])
    h = np.arctan(h)
    return h @ w["k3"].astype(np.float64) + w["b3"]


@pytest.mark.parametrize(("style", "version"), [("list", "2.1.6"), ("dict", "2.2.4")])
def test_reference_mlp_logits_match_numpy(tmp_path: Path, style: str, version: str) -> None:
    path, w = _mlp_file(tmp_path / f"mlp_{style}.h5", style, keras_version=version)
    net = from_keras_h5(path, lambda_activations=ARCTAN)
    assert net.input_shape == (28, 28, 1)
    assert net.input_range == (-0.5, 0.5)
    assert net.dtype == torch.float32
    assert [type(la).__name__ for la in net.layers] == [
        "Flatten",
        "Dense",
        "Activation",
        "Dense",
        "Activation",
        "Activation",
        "Dense",
    ]
    acts = [la for la in net.layers if isinstance(la, Activation)]
    assert [(a.name, a.alpha) for a in acts] == [
        ("leaky_relu", pytest.approx(0.3)),
        ("tanh", 0.0),
        ("arctan", 0.0),
    ]
    dense = [la for la in net.layers if isinstance(la, Dense)]
    assert tuple(dense[0].weight.shape) == (20, 784)  # Keras (in, out) transposed
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (5, 28, 28, 1))
    expected = _numpy_forward(x, w)
    got64 = net.to(dtype=torch.float64)(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got64, expected, rtol=1e-6, atol=1e-6)
    got32 = net(torch.tensor(x, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got32, expected, rtol=1e-5, atol=1e-5)


def test_hwc_flatten_order_is_kerass(tmp_path: Path) -> None:
    """A 2x2x3 HWC image: the kernel row i must meet x.reshape(-1)[i], as in Keras."""
    kernel = np.arange(12 * 2, dtype=np.float32).reshape(12, 2) / 10
    layers = [
        {
            "class_name": "InputLayer",
            "config": {"name": "in", "batch_input_shape": [None, 2, 2, 3]},
        },
        {"class_name": "Flatten", "config": {"name": "flatten"}},
        _dense("dense", 2),
    ]
    path = write_keras_h5(
        tmp_path / "hwc.h5",
        layers,
        {"dense": [("dense/kernel:0", kernel), ("dense/bias:0", np.zeros(2, np.float32))]},
    )
    net = from_keras_h5(path)
    assert net.input_shape == (2, 2, 3)
    x = np.random.default_rng(2).standard_normal((3, 2, 2, 3))
    expected = x.reshape(3, -1) @ kernel.astype(np.float64)
    got = net.to(dtype=torch.float64)(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("activation", "torch_fn"),
    [
        ("relu", torch.relu),
        ("sigmoid", torch.sigmoid),
        ("softplus", torch.nn.functional.softplus),
        ("elu", torch.nn.functional.elu),
        ("linear", lambda t: t),
    ],
)
def test_dense_activation_attribute_and_activation_layers(
    tmp_path: Path, activation: str, torch_fn: Any
) -> None:
    rng = np.random.default_rng(3)
    k1, k2 = _kernel(rng, 6, 4), _kernel(rng, 4, 3)
    layers = [
        _dense("d1", 4, activation, batch_input_shape=[None, 6]),
        {"class_name": "Activation", "config": {"name": "act", "activation": "tanh"}},
        _dense("d2", 3),
    ]
    weights = {
        "d1": [("d1/kernel:0", k1), ("d1/bias:0", np.zeros(4, np.float32))],
        "d2": [("d2/kernel:0", k2), ("d2/bias:0", np.ones(3, np.float32))],
    }
    net = from_keras_h5(write_keras_h5(tmp_path / "m.h5", layers, weights), input_range=(0, 1))
    assert net.input_shape == (6,) and net.input_range == (0.0, 1.0)
    x = torch.tensor(rng.standard_normal((4, 6)))
    h = torch.tanh(torch_fn(x @ torch.tensor(k1, dtype=torch.float64)))
    expected = h @ torch.tensor(k2, dtype=torch.float64) + 1
    torch.testing.assert_close(net.to(dtype=torch.float64)(x), expected, rtol=1e-12, atol=1e-12)


def test_chunked_layer_names_and_extensionless_file(tmp_path: Path) -> None:
    path, w = _mlp_file(tmp_path / "model_without_extension", "dict", chunk_layer_names=True)
    assert is_hdf5(path)
    with pytest.raises(UnsupportedError, match="Lambda layer runs Python code"):
        load_model(path)  # recognised by the HDF5 signature (a Keras layer is named)
    net = from_keras_h5(path, lambda_activations=ARCTAN)
    x = np.random.default_rng(4).uniform(-0.5, 0.5, (2, 28, 28, 1))
    np.testing.assert_allclose(
        net.to(dtype=torch.float64)(torch.tensor(x)).numpy(), _numpy_forward(x, w), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("layer", "pattern"),
    [
        (
            {"class_name": "Lambda", "config": {"name": "lambda_1"}},
            r"Lambda 'lambda_1'.*lambda_activations=\{'lambda_1': 'arctan'\}",
        ),
        (
            {"class_name": "Conv2D", "config": {"name": "conv2d_1"}},
            r"unsupported Keras layer Conv2D",
        ),
        (
            {"class_name": "Activation", "config": {"name": "a", "activation": "softmax"}},
            r"softmax.*logits",
        ),
        (
            {
                "class_name": "ReLU",
                "config": {"name": "r", "max_value": 6.0, "negative_slope": 0.1},
            },
            "max_value and negative_slope",
        ),
    ],
)
def test_unsupported_layers_are_named(tmp_path: Path, layer: dict[str, Any], pattern: str) -> None:
    layers = [_dense("d", 3, batch_input_shape=[None, 4]), layer]
    weights = {
        "d": [("d/kernel:0", np.ones((4, 3), np.float32)), ("d/bias:0", np.zeros(3, np.float32))]
    }
    with pytest.raises(UnsupportedError, match=pattern):
        from_keras_h5(write_keras_h5(tmp_path / "u.h5", layers, weights))


def test_nan_weights_are_an_input_error(tmp_path: Path) -> None:
    kernel = np.ones((4, 3), np.float32)
    kernel[1, 2] = np.nan
    layers = [_dense("d", 3, batch_input_shape=[None, 4])]
    path = write_keras_h5(
        tmp_path / "nan.h5",
        layers,
        {"d": [("d/kernel:0", kernel), ("d/bias:0", np.zeros(3, np.float32))]},
    )
    with pytest.raises(InputError, match="NaN"):
        from_keras_h5(path)


def test_corrupt_truncated_and_wrong_files(tmp_path: Path) -> None:
    path, _ = _mlp_file(tmp_path / "good.h5", "dict")
    data = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFormatError) as info:
        from_keras_h5(tmp_path / "cut.h5")
    assert "\n" not in str(info.value)
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(ModelFormatError, match="not an HDF5 file"):
        from_keras_h5(tmp_path / "text.h5")
    with pytest.raises(ModelFormatError, match="model file not found"):
        from_keras_h5(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "weights_only.h5", "w") as f:  # model.save_weights layout
        f.attrs["layer_names"] = np.array([b"dense_1"])
    with pytest.raises(ModelFormatError, match="only weights"):
        from_keras_h5(tmp_path / "weights_only.h5")
    layers = [_dense("d", 3, batch_input_shape=[None, 4])]
    with pytest.raises(ModelFormatError, match="no 2-D kernel among the weights of 'd'"):
        from_keras_h5(write_keras_h5(tmp_path / "noweights.h5", layers, {}))


def test_input_shape_without_batch_input_shape_comes_from_first_kernel(tmp_path: Path) -> None:
    layers = [_dense("d", 3)]
    path = write_keras_h5(
        tmp_path / "noshape.h5",
        layers,
        {"d": [("d/kernel:0", np.ones((5, 3), np.float32)), ("d/bias:0", np.zeros(3, np.float32))]},
    )
    net = from_keras_h5(path)
    assert net.input_shape == (5,)
    assert isinstance(net.layers[0], Dense) and not isinstance(net.layers[0], Flatten)


def test_bounded_relu_layers(tmp_path: Path) -> None:
    """Keras ReLU(max_value=c) and the CLEVER reference's Activation(bounded_relu) (its
    ``K.relu(x, max_value=1)``) are the bounded ReLU."""
    layers = [
        _dense("d", 3, batch_input_shape=[None, 4]),
        {"class_name": "ReLU", "config": {"name": "r", "max_value": 6.0}},
        {"class_name": "Activation", "config": {"name": "a", "activation": "bounded_relu"}},
    ]
    weights = {
        "d": [("d/kernel:0", np.ones((4, 3), np.float32)), ("d/bias:0", np.zeros(3, np.float32))]
    }
    net = from_keras_h5(write_keras_h5(tmp_path / "b.h5", layers, weights))
    assert [(a.name, a.alpha) for a in net.activations] == [("brelu", 6.0), ("brelu", 1.0)]


def test_a_lambda_is_never_identified_by_its_name(tmp_path: Path) -> None:
    # issue 19 #4: a Lambda named arctan_1 whose code computes x * 100 was imported as arctan
    # (the bounded model was not the model in the file)
    path, _ = _mlp_file(tmp_path / "named.h5", "dict")
    with pytest.raises(UnsupportedError, match=r"layer 5 \(Lambda 'arctan_1'\)"):
        from_keras_h5(path)
    with pytest.raises(UnsupportedError, match="Lambda 'arctan_1'"):
        from_keras_h5(path, lambda_activations={"arctan_2": "arctan"})  # another layer's
    net = from_keras_h5(path, lambda_activations={"arctan_1": "tanh"})  # declared, taken
    assert [a.name for a in net.layers if isinstance(a, Activation)][-1] == "tanh"
