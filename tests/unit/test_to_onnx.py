"""The ONNX exporter: onnxruntime runs the exported file to the IR's logits, and a round trip
through from_onnx keeps logits, input shape, input_range, name and meta."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from nnbound.errors import InputError
from nnbound.network.from_onnx import from_onnx
from nnbound.network.layers import Activation, Conv2d, Dense, Flatten, Normalize
from nnbound.network.layers import Reshape as ReshapeLayer
from nnbound.network.network import Network
from nnbound.network.to_onnx import save_onnx

ACTIVATIONS_OPSET_9 = (
    "relu",
    "leaky_relu",
    "tanh",
    "sigmoid",
    "arctan",
    "softplus",
    "elu",
    "brelu",
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp(dtype: torch.dtype = torch.float32, seed: int = 0) -> Network:
    """Normalize -> (Dense -> activation) for every IR activation -> Dense, input (6,)."""
    g = _gen(seed)
    layers: list = [Normalize(torch.rand(6, generator=g), torch.rand(6, generator=g) + 0.5)]
    width = 6
    # the activations whose ONNX operators exist from opset 9 (the oldest exported below);
    # every registered one is exported in test_activation_registry.py
    for name in ACTIVATIONS_OPSET_9:
        layers.append(Dense(torch.randn(8, width, generator=g) / 2, torch.randn(8, generator=g)))
        alpha = {"leaky_relu": 0.1, "elu": 0.8}.get(name, 0.0)
        layers.append(Activation(name, alpha))
        width = 8
    layers.append(Dense(torch.randn(3, width, generator=g), torch.randn(3, generator=g)))
    net = Network(
        layers=tuple(layers),
        input_shape=(6,),
        input_range=(0.0, 1.0),
        name="mlp",
        meta={"dataset": "synthetic", "note": 'quotes " and unicode µ'},
    )
    return net.to(dtype=dtype)


def cnn(dtype: torch.dtype = torch.float32, seed: int = 1) -> Network:
    """Normalize (per channel) -> Conv (stride, pad) -> relu -> grouped dilated Conv -> tanh ->
    Reshape -> Flatten -> Dense, input (2, 9, 9)."""
    g = _gen(seed)
    layers = (
        Normalize(torch.rand(2, 1, 1, generator=g), torch.rand(2, 1, 1, generator=g) + 0.5),
        Conv2d(torch.randn(4, 2, 3, 3, generator=g) / 3, torch.randn(4, generator=g), 2, 1),
        Activation("relu"),
        Conv2d(
            torch.randn(4, 2, 3, 3, generator=g) / 3,
            torch.randn(4, generator=g),
            stride=1,
            padding=2,
            dilation=2,
            groups=2,
        ),
        Activation("tanh"),
        ReshapeLayer((4, 25)),
        Flatten(),
        Dense(torch.randn(5, 100, generator=g) / 10, torch.randn(5, generator=g)),
    )
    net = Network(layers=layers, input_shape=(2, 9, 9), input_range=(-1.0, 1.0), name="cnn")
    return net.to(dtype=dtype)


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-6))


@pytest.mark.parametrize("make", [mlp, cnn])
@pytest.mark.parametrize("opset", [9, 13, 17])
def test_onnxruntime_runs_the_export(tmp_path: Path, make, opset: int) -> None:
    net = make()
    path = save_onnx(net, tmp_path / "net.onnx", opset=opset)
    assert path == tmp_path / "net.onnx"
    x = torch.rand(3, *net.input_shape, generator=_gen(5))  # a batch of 3: dynamic batch axis
    ref = ort_logits(path, x.numpy())
    assert ref.shape == (3, net.num_outputs)
    assert rel_err(net(x).detach().numpy(), ref) <= 1e-5


@pytest.mark.parametrize("make", [mlp, cnn])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip(tmp_path: Path, make, dtype: torch.dtype) -> None:
    net = make(dtype)
    back = from_onnx(save_onnx(net, tmp_path / "net.onnx"))
    assert back.dtype == dtype
    assert back.input_shape == net.input_shape
    assert back.output_shape == net.output_shape
    assert back.input_range == net.input_range
    assert back.name == net.name
    assert back.meta == net.meta
    x = torch.rand(4, *net.input_shape, generator=_gen(9), dtype=dtype)
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    assert rel_err(back(x).detach().numpy(), net(x).detach().numpy()) <= tol
    # the layers come back as they were (Normalize kept, activations with their alpha)
    for a, b in zip(net.activations, back.activations, strict=True):
        assert (a.name, a.alpha) == (b.name, b.alpha)
    assert isinstance(back.layers[0], Normalize)


def test_float64_round_trip_is_exact(tmp_path: Path) -> None:
    net = mlp(torch.float64)
    back = from_onnx(save_onnx(net, tmp_path / "net.onnx"))
    for a, b in zip(net.layers, back.layers, strict=True):
        assert type(a) is type(b)
        for key, t in a.tensors().items():
            torch.testing.assert_close(b.tensors()[key], t, rtol=0, atol=0)


def test_graph_interface_and_metadata(tmp_path: Path) -> None:
    net = mlp(torch.float64)
    model = onnx.load(save_onnx(net, tmp_path / "net.onnx"))
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [6]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["nnbound.input_range"]) == [0.0, 1.0]
    assert json.loads(props["nnbound.input_shape"]) == [6]
    assert json.loads(props["nnbound.meta"]) == dict(net.meta)
    assert props["nnbound.name"] == "mlp"
    ops = [n.op_type for n in model.graph.node]
    assert ops[:3] == ["Sub", "Div", "Gemm"]
    assert {"Relu", "LeakyRelu", "Tanh", "Sigmoid", "Atan", "Softplus", "Elu"} <= set(ops)
    assert all(n.attribute[0].i == 1 for n in model.graph.node if n.op_type == "Gemm")


def test_no_input_range_and_import_override(tmp_path: Path) -> None:
    net = Network(layers=(Dense(torch.eye(2), torch.zeros(2)),), input_shape=(2,), name="eye")
    path = save_onnx(net, tmp_path / "eye.onnx")
    assert from_onnx(path).input_range is None
    assert from_onnx(path, input_range=(-2.0, 2.0)).input_range == (-2.0, 2.0)
    ranged = save_onnx(mlp(), tmp_path / "mlp.onnx")
    assert from_onnx(ranged, input_range=(0.0, 255.0), name="x").input_range == (0.0, 255.0)


def test_input_shape_round_trip_for_vector_like_shapes(tmp_path: Path) -> None:
    # (1, 6) would import as (6,) from a foreign file; the metadata keeps it exact
    base = mlp()
    net = Network(layers=(Flatten(), *base.layers[1:]), input_shape=(1, 6), input_range=(0.0, 1.0))
    back = from_onnx(save_onnx(net, tmp_path / "net.onnx"))
    assert back.input_shape == (1, 6)
    x = torch.rand(2, 1, 6, generator=_gen(3))
    assert rel_err(back(x).detach().numpy(), net(x).detach().numpy()) <= 1e-5


@pytest.mark.parametrize("opset", [3, 6, 10_000])
def test_bad_opset(tmp_path: Path, opset: int) -> None:
    with pytest.raises(InputError, match="opset"):
        save_onnx(mlp(), tmp_path / "net.onnx", opset=opset)
