"""load_model / save_model dispatch, the native format round trip, and torch.export programs."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnbound.errors import InputError, ModelFormatError, UnsupportedError
from nnbound.network import Activation, Conv2d, Dense, Flatten, Network, Normalize, Reshape
from nnbound.network.from_torch import load_exported
from nnbound.network.load import load_model, save_model
from nnbound.network.native import load_network

DATA = Path(__file__).resolve().parents[1] / "data" / "torch"


def _net(dtype: torch.dtype) -> Network:
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype)

    return Network(
        layers=(
            Normalize(
                torch.tensor([0.5], dtype=dtype).view(1, 1, 1),
                torch.tensor([0.25], dtype=dtype).view(1, 1, 1),
            ),
            Conv2d(r(3, 1, 3, 3), r(3), stride=2, padding=1, dilation=1),
            Activation("leaky_relu", 0.1),
            Flatten(),
            Reshape((3, 16)),
            Flatten(),
            Dense(r(5, 48), r(5)),
            Activation("elu", 0.5),
            Dense(r(2, 5), r(2)),
        ),
        input_shape=(1, 8, 8),
        input_range=(0.0, 1.0),
        name="tiny",
        meta={"source": "test"},
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_round_trip_is_exact(tmp_path: Path, dtype: torch.dtype) -> None:
    net = _net(dtype)
    path = save_model(net, tmp_path / "tiny.safetensors")
    for back in (load_model(path), load_network(path)):
        assert back.dtype == dtype
        assert back.input_shape == net.input_shape and back.input_range == net.input_range
        assert back.name == "tiny" and dict(back.meta) == {"source": "test"}
        for a, b in zip(net.layers, back.layers, strict=True):
            assert type(a) is type(b)
            for key, t in a.tensors().items():
                assert torch.equal(t, b.tensors()[key])
        assert (back.layers[2].name, back.layers[2].alpha) == ("leaky_relu", 0.1)
        assert back.layers[1].stride == (2, 2) and back.layers[4].shape == (3, 16)
        x = torch.rand(3, 1, 8, 8, dtype=dtype)
        assert torch.equal(back(x), net(x))


def test_builtin_names_overrides_and_errors(tmp_path: Path) -> None:
    net = load_model("mnist-kw")
    assert net.name == "mnist-kw" and net.input_shape == (1, 28, 28)
    assert load_model("mnist-kw", input_range=(-1.0, 1.0)).input_range == (-1.0, 1.0)
    with pytest.raises(InputError, match="input shape is"):
        load_model("mnist-kw", input_shape=(784,))
    with pytest.raises(ModelFormatError, match=r"model file not found: mnist-nope.*built-in"):
        load_model("mnist-nope")
    missing = tmp_path / "gone.onnx"
    with pytest.raises(ModelFormatError, match=re.escape(f"model file not found: {missing}")):
        load_model(missing)


def test_state_dict_files_are_refused_with_advice(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match=r"state dict.*no architecture.*from_torch"):
        load_model(DATA / "mnist_fc_3layer.pth")
    with pytest.raises(ModelFormatError, match=r"state dict.*no architecture"):
        load_model(DATA / "kw_mnist.pth")  # legacy format
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ModelFormatError, match="not a readable PyTorch file"):
        load_model(tmp_path / "garbage.pt")
    (tmp_path / "mystery.xyz").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ModelFormatError, match="unrecognised model format"):
        load_model(tmp_path / "mystery.xyz")


def test_save_model_rejects_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.safetensors.*\.onnx"):
        save_model(_net(torch.float32), tmp_path / "model.pkl")


def test_onnx_dispatch_round_trip(tmp_path: Path) -> None:
    net = load_model("mnist-fc-3layer")
    path = save_model(net, tmp_path / "fc.onnx")
    back = load_model(path, input_range=(0.0, 1.0))
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(back(x.reshape(4, *back.input_shape)), net(x), rtol=1e-5, atol=1e-5)
    assert back.input_range == (0.0, 1.0)


def test_keras_dispatch_by_extension_and_signature(tmp_path: Path) -> None:
    kernel = np.arange(6, dtype=np.float32).reshape(3, 2)
    layers = [
        {
            "class_name": "Dense",
            "config": {
                "name": "d",
                "units": 2,
                "activation": "relu",
                "batch_input_shape": [None, 3],
            },
        }
    ]
    for path in (tmp_path / "m.h5", tmp_path / "m.hdf5", tmp_path / "m"):
        with h5py.File(path, "w") as f:
            f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": layers})
            g = f.create_group("model_weights")
            g.attrs["layer_names"] = np.array([b"d"])
            lg = g.create_group("d")
            lg.attrs["weight_names"] = np.array([b"d/kernel:0", b"d/bias:0"])
            lg.create_dataset("d/kernel:0", data=kernel)
            lg.create_dataset("d/bias:0", data=np.zeros(2, np.float32))
        net = load_model(path)
        assert net.input_range == (-0.5, 0.5)
        assert load_model(path, input_range=(0.0, 1.0)).input_range == (0.0, 1.0)
        assert torch.equal(net.layers[0].weight, torch.tensor(kernel.T))


def test_torchscript_dispatch_for_pt_and_pth(tmp_path: Path) -> None:
    torch.manual_seed(1)
    module = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Sigmoid(), nn.Linear(4, 2)).eval()
    x = torch.rand(3, 3, 4)
    for suffix in (".pt", ".pth"):
        path = tmp_path / f"ts{suffix}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream
            torch.jit.save(torch.jit.script(module), str(path))
        net = load_model(path, input_shape=(3, 4), input_range=(0.0, 1.0))
        assert net.input_range == (0.0, 1.0)
        torch.testing.assert_close(net(x), module(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="input_shape"):
        load_model(path)


# ---- torch.export ---------------------------------------------------------------------------
class _Exported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc1 = nn.Linear(3 * 4 * 4, 6)
        self.fc2 = nn.Linear(6, 2)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(torch.tanh(self.fc1(x)))


def _export(module: nn.Module, path: Path, example: Tensor) -> list[Path]:
    """Save ``module`` exported as is (``path``) and after run_decompositions (``path`` with
    ``-core`` appended), where linear becomes addmm/permute and batch_norm a native op."""
    core = path.with_name(path.stem + "-core.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-internal deprecation noise in export
        ep = torch.export.export(module, (example,))
        torch.export.save(ep, str(path))
        torch.export.save(ep.run_decompositions(), str(core))
    return [path, core]


def test_exported_program_plain_and_decomposed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _Exported().eval()
    example = torch.rand(2, 1, 8, 8)
    x = torch.rand(5, 1, 8, 8)
    for path in _export(module, tmp_path / "m.pt2", example):
        net = load_model(path, input_range=(0.0, 1.0))
        assert net.input_shape == (1, 8, 8) and net.input_range == (0.0, 1.0)
        assert net.meta["format"] == "torch.export"
        assert [type(la).__name__ for la in net.layers] == [
            "Conv2d",
            "Activation",
            "Flatten",
            "Dense",
            "Activation",
            "Dense",
        ]
        torch.testing.assert_close(net(x), module(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="differs from the exported"):
        load_exported(path, (64,))


def test_exported_program_errors(tmp_path: Path) -> None:
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2, divisor_override=3), nn.Flatten())
    module = module.eval()
    for path in _export(module, tmp_path / "avg.pt2", torch.rand(1, 1, 6, 6)):
        with pytest.raises(UnsupportedError, match="avg_pool2d"):
            load_model(path)
    data = path.read_bytes()
    (tmp_path / "cut.pt2").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match=r"not a readable torch\.export archive"):
        load_model(tmp_path / "cut.pt2")


def test_a_weight_made_non_finite_in_place_is_caught_on_the_next_network() -> None:
    """Finite weights are scanned once per tensor version: a NaN written in place afterwards
    (a new version) is still refused when another network is built on that weight."""
    w, b = torch.randn(4, 3), torch.zeros(4)
    layers = (Dense(w, b), Activation("relu"), Dense(torch.randn(2, 4), torch.zeros(2)))
    Network(layers, (3,))
    Network(layers, (3,), name="again")  # the cached scan
    w[1, 2] = float("nan")
    with pytest.raises(InputError, match="NaN or inf"):
        Network(layers, (3,))


def test_networks_accept_inference_mode_weights() -> None:
    """Tensors made under ``torch.inference_mode`` have no version counter: still checked."""
    with torch.inference_mode():
        w, bad = torch.randn(2, 3), torch.full((2, 3), float("inf"))
    Network((Dense(w, torch.zeros(2)),), (3,))
    with pytest.raises(InputError, match="NaN or inf"):
        Network((Dense(bad, torch.zeros(2)),), (3,))
