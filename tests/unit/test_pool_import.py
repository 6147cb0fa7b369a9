"""Pooling through the importers and exporters: ONNX export/import checked against
onnxruntime, ONNX attributes refused by name, torch modules / functional calls / TorchScript /
torch.export, and Keras HDF5 pooling layers."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_from_keras_h5 import write_keras_h5

import helpers  # noqa: F401  (one torch thread)
from nnbound.errors import UnsupportedError
from nnbound.network.from_keras_h5 import from_keras_h5
from nnbound.network.from_onnx import from_onnx
from nnbound.network.from_torch import from_torch, load_exported, load_torchscript
from nnbound.network.layers import Activation, AvgPool2d, Conv2d, Dense, Flatten, MaxPool2d
from nnbound.network.network import Network
from nnbound.network.to_onnx import save_onnx

ort = pytest.importorskip("onnxruntime")
DT = torch.float64


def _net(dtype: torch.dtype = DT) -> Network:
    gen = torch.Generator().manual_seed(0)
    conv = Conv2d(torch.randn(3, 2, 3, 3, generator=gen), torch.randn(3, generator=gen), padding=1)
    layers = [
        conv,
        Activation("relu"),
        MaxPool2d(3, 2, 1, ceil_mode=True),
        AvgPool2d(2, 1, 1, ceil_mode=True, count_include_pad=False),
        MaxPool2d(2, 1, dilation=2),
        AvgPool2d((2, 3), (1, 2), (1, 1)),
        Flatten(),
    ]
    probe = Network(tuple(layers), (2, 9, 8))
    layers.append(Dense(torch.randn(3, probe.num_outputs, generator=gen), torch.zeros(3)))
    return Network(tuple(layers), (2, 9, 8)).to(dtype=dtype)


def _run_ort(path: Path, x: Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_onnx_round_trip_and_onnxruntime(tmp_path: Path, dtype: torch.dtype) -> None:
    net = _net(dtype)
    path = save_onnx(net, tmp_path / "pool.onnx")
    back = from_onnx(path)
    x = torch.rand(4, 2, 9, 8, dtype=dtype)
    assert [type(la) for la in back.layers] == [type(la) for la in net.layers]
    assert torch.equal(back(x), net(x))
    if dtype == torch.float32:  # onnxruntime has no float64 Conv kernel
        np.testing.assert_allclose(_run_ort(path, x), net(x).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(UnsupportedError, match="ceil_mode to ONNX opset 9"):
        save_onnx(net, tmp_path / "old.onnx", opset=9)


def _pool_model(op: str, shape: list[int], **attrs: object) -> object:
    node = helper.make_node(op, ["x"], ["y"], name="pool0", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("op", "attrs"),
    [
        ("AveragePool", {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER"}),
        ("AveragePool", {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 0]}),
        (
            "AveragePool",
            {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
        ),
        (
            "AveragePool",
            {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        ),
        ("MaxPool", {"kernel_shape": [2, 2], "dilations": [2, 1], "auto_pad": "VALID"}),
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ("GlobalAveragePool", {}),
        ("GlobalMaxPool", {}),
    ],
)
def test_onnx_pool_nodes_match_onnxruntime(tmp_path: Path, op: str, attrs: dict) -> None:
    model = _pool_model(op, ["N", 2, 7, 6], **attrs)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    net = from_onnx(path)
    x = torch.rand(3, 2, 7, 6)
    expected = _run_ort(path, x).reshape(3, -1)
    np.testing.assert_allclose(net(x).numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("op", "attrs", "pattern"),
    [
        ("AveragePool", {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}, r"attribute pads=.*symm"),
        ("MaxPool", {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER"}, r"attribute auto_pad="),
        ("MaxPool", {"kernel_shape": [2, 2], "storage_order": 1}, r"attribute storage_order="),
        ("AveragePool", {"kernel_shape": [2, 2], "dilations": [2, 2]}, r"attribute dilations="),
        ("AveragePool", {"kernel_shape": [2, 2, 2]}, r"attribute kernel_shape="),
        ("MaxPool", {"kernel_shape": [2, 2], "pads": [2, 2, 2, 2]}, r"attribute pads=.*half"),
    ],
)
def test_onnx_bad_pool_attributes_name_node_and_attribute(
    op: str, attrs: dict, pattern: str
) -> None:
    with pytest.raises(UnsupportedError, match=rf"{op}.*pool0.*{pattern}"):
        from_onnx(_pool_model(op, ["N", 2, 7, 6], **attrs))


def test_onnx_maxpool_indices_and_1d_pooling_are_refused() -> None:
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], name="pool0", kernel_shape=[2, 2])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedError, match="Indices output"):
        from_onnx(model)
    with pytest.raises(UnsupportedError, match="only 2-D pooling"):
        from_onnx(_pool_model("AveragePool", ["N", 2, 7], kernel_shape=[2]))


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(torch.relu(self.conv(x)), 3, 2, 1, ceil_mode=True)
        x = F.avg_pool2d(x, 2, 1, 1, count_include_pad=False)
        x = F.adaptive_max_pool2d(x, (2, 1))
        return self.fc(x.mean((2, 3)))


def _sequential() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.ReLU(),
        nn.MaxPool2d(2, 1, dilation=2, ceil_mode=True),
        nn.AvgPool2d(2, 1, 1, ceil_mode=True),
        nn.AdaptiveAvgPool2d((2, 1)),
        nn.Flatten(),
        nn.Linear(6, 2),
    ).eval()


def test_torch_modules_and_functional_pooling() -> None:
    cases = [
        (_sequential(), (2, 9, 8)),
        (_Functional().eval(), (2, 9, 8)),
        (nn.Sequential(nn.AdaptiveMaxPool2d(3), nn.Flatten()), (2, 9, 6)),
    ]
    for module, shape in cases:
        net = from_torch(module, shape)
        x = torch.rand(4, *shape)
        torch.testing.assert_close(net(x).reshape(4, -1), module(x).reshape(4, -1))
    with pytest.raises(UnsupportedError, match="windows of different sizes"):
        from_torch(nn.Sequential(nn.AdaptiveAvgPool2d(4)), (1, 9, 9))
    with pytest.raises(UnsupportedError, match="return_indices"):
        from_torch(nn.Sequential(nn.MaxPool2d(2, return_indices=True)), (1, 4, 4))


def test_torchscript_and_exported_pooling(tmp_path: Path) -> None:
    module = _sequential()
    x = torch.rand(3, 2, 9, 8)
    path = tmp_path / "m.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit / export deprecation noise
        # TorchScript compiles adaptive pooling's output-size defaults into list code over
        # the input size, which the TorchScript reader does not follow: script the rest.
        torch.jit.save(torch.jit.script(module[:4]), str(path))
        exported = torch.export.export(module, (torch.rand(1, 2, 9, 8),))
        torch.export.save(exported, str(tmp_path / "m.pt2"))
        # decomposed: max_pool2d_with_indices, _adaptive_avg_pool2d ...
        torch.export.save(exported.run_decompositions(), str(tmp_path / "core.pt2"))
    torch.testing.assert_close(
        load_torchscript(path, (2, 9, 8))(x).reshape(3, -1), module[:4](x).reshape(3, -1)
    )
    for name in ("m.pt2", "core.pt2"):
        torch.testing.assert_close(load_exported(tmp_path / name)(x), module(x))


def _keras_pool(kind: str, **cfg: object) -> dict:
    return {"class_name": kind, "config": {"name": kind.lower(), **cfg}}


def test_keras_pooling_layers(tmp_path: Path) -> None:
    inp = {
        "class_name": "InputLayer",
        "config": {"name": "in", "batch_input_shape": [None, 6, 6, 1]},
    }
    layers = [inp, _keras_pool("MaxPooling2D", pool_size=[2, 2], strides=[1, 1], padding="valid")]
    layers += [
        _keras_pool("AveragePooling2D", pool_size=[2, 2], padding="valid"),
        {"class_name": "Flatten", "config": {"name": "f"}},
    ]
    net = from_keras_h5(write_keras_h5(tmp_path / "a.h5", layers, {}))
    x = torch.rand(2, 6, 6, 1)
    ref = F.avg_pool2d(F.max_pool2d(x.permute(0, 3, 1, 2), 2, 1), 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(net(x), ref.reshape(2, -1))
    # a global average pool of a multi-channel channels_last input is a dense map
    inp3 = {
        "class_name": "InputLayer",
        "config": {"name": "in", "batch_input_shape": [None, 4, 5, 3]},
    }
    net = from_keras_h5(
        write_keras_h5(tmp_path / "g.h5", [inp3, _keras_pool("GlobalAveragePooling2D")], {})
    )
    x = torch.rand(2, 4, 5, 3)
    torch.testing.assert_close(net(x), x.mean((1, 2)))
    first = {
        "class_name": "InputLayer",
        "config": {"name": "in", "batch_input_shape": [None, 3, 4, 4]},
    }
    gmax = _keras_pool("GlobalMaxPooling2D", data_format="channels_first")
    net = from_keras_h5(write_keras_h5(tmp_path / "c.h5", [first, gmax], {}))
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(net(x), x.amax((2, 3)))
    bad = [inp3, _keras_pool("MaxPooling2D", pool_size=[2, 2])]
    with pytest.raises(UnsupportedError, match="channels_last input with 3 channels"):
        from_keras_h5(write_keras_h5(tmp_path / "b.h5", bad, {}))
    same = [inp, _keras_pool("AveragePooling2D", pool_size=[3, 3], strides=[1, 1], padding="same")]
    with pytest.raises(UnsupportedError, match="padding='same'"):
        from_keras_h5(write_keras_h5(tmp_path / "s.h5", same, {}))
