"""from_torch / load_torchscript / load_state_dict: exact round trips, folding, clear refusals."""

from __future__ import annotations

import itertools
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from nnbound.errors import InputError, ModelFormatError, UnsupportedError
from nnbound.network import (
    Activation,
    Conv2d,
    Dense,
    Flatten,
    Network,
    Normalize,
    Reshape,
    to_torch,
)
from nnbound.network.from_torch import (
    from_torch,
    load_state_dict,
    load_torchscript,
    torch_archive_kind,
)
from nnbound.network.graph import Graph
from nnbound.network.to_torch import Arctan, NormalizeModule

DATA = Path(__file__).resolve().parents[1] / "data" / "torch"


def _t(*shape: int, seed: int) -> Tensor:
    """float64 values that float32 represents exactly: to_torch builds float32 modules before
    casting them, so only such values survive IR -> to_torch bit for bit."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 0.3).double()


def _same_layers(a: Network, b: Network) -> None:
    assert len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert type(la) is type(lb)
        ta, tb = la.tensors(), lb.tensors()
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), (type(la).__name__, key)
        if isinstance(la, Activation):
            assert (la.name, la.alpha) == (lb.name, lb.alpha)
        if isinstance(la, Conv2d):
            assert (la.stride, la.padding, la.dilation, la.groups) == (
                lb.stride,
                lb.padding,
                lb.dilation,
                lb.groups,
            )
        if isinstance(la, Reshape):
            assert la.shape == lb.shape


def _cnn_ir() -> Network:
    """Every layer type and activation of the IR, float64."""
    return Network(
        layers=(
            Normalize(
                torch.tensor([0.125, 0.25], dtype=torch.float64).view(2, 1, 1),
                torch.tensor([0.5, 0.375], dtype=torch.float64).view(2, 1, 1),
            ),
            Conv2d(_t(4, 2, 3, 3, seed=1), _t(4, seed=2), stride=2, padding=1),
            Activation("leaky_relu", 0.2),
            Conv2d(_t(4, 2, 3, 3, seed=3), _t(4, seed=4), padding=(2, 1), dilation=2, groups=2),
            Activation("elu", 0.7),
            Flatten(),
            Dense(_t(12, 4 * 4 * 2, seed=5), _t(12, seed=6)),
            Activation("tanh"),
            Reshape((3, 4)),
            Reshape((12,)),
            Dense(_t(9, 12, seed=7), _t(9, seed=8)),
            Activation("sigmoid"),
            Dense(_t(8, 9, seed=9), _t(8, seed=10)),
            Activation("arctan"),
            Dense(_t(7, 8, seed=11), _t(7, seed=12)),
            Activation("softplus"),
            Dense(_t(6, 7, seed=13), _t(6, seed=14)),
            Activation("relu"),
            Dense(_t(3, 6, seed=15), _t(3, seed=16)),
        ),
        input_shape=(2, 8, 8),
        input_range=(0.0, 1.0),
    )


def test_round_trip_ir_to_torch_to_ir_is_identical_in_float64() -> None:
    net = _cnn_ir()
    module = to_torch(net)
    back = from_torch(module, net.input_shape, input_range=net.input_range, name="rt")
    _same_layers(net, back)
    assert back.dtype == torch.float64
    assert back.input_range == (0.0, 1.0) and back.name == "rt"
    x = torch.rand(5, *net.input_shape, dtype=torch.float64)
    assert torch.equal(back(x), module(x))
    # the IR owns copies: changing the module later leaves it intact
    with torch.no_grad():
        module[1].weight.add_(1.0)
    _same_layers(net, back)


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=2, max_size=5),
    acts=st.lists(
        st.sampled_from(
            ["relu", "leaky_relu", "tanh", "sigmoid", "arctan", "softplus", "elu", "brelu"]
        ),
        min_size=4,
        max_size=4,
    ),
    seed=st.integers(0, 2**16),
)
def test_random_mlp_round_trip(widths: list[int], acts: list[str], seed: int) -> None:
    layers: list = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        layers.append(Dense(_t(n_out, n_in, seed=seed + 2 * i), _t(n_out, seed=seed + 2 * i + 1)))
        if i < len(widths) - 2:
            layers.append(
                Activation(acts[i], 0.25 if acts[i] in ("leaky_relu", "elu", "brelu") else 0.0)
            )
    net = Network(layers=tuple(layers), input_shape=(widths[0],))
    back = from_torch(to_torch(net), net.input_shape)
    _same_layers(net, back)
    x = _t(3, widths[0], seed=seed)
    assert torch.equal(back(x), net(x))


def test_nested_sequentials_are_flattened_and_dropout_identity_skipped() -> None:
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.5), nn.ReLU())
    module = nn.Sequential(nn.Flatten(), nn.Sequential(inner, nn.Identity()), nn.Linear(5, 2))
    module.train()
    net = from_torch(module, (2, 3))
    assert [type(layer).__name__ for layer in net.layers] == [
        "Flatten",
        "Dense",
        "Activation",
        "Dense",
    ]
    assert module.training and inner[1].training  # the caller's flags are restored
    x = torch.randn(4, 2, 3)
    module.eval()
    torch.testing.assert_close(net(x), module(x), rtol=0, atol=0)


def test_batchnorm_folding_is_exact_in_float64() -> None:
    torch.manual_seed(1)
    module = nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        nn.BatchNorm1d(5, affine=False),
        nn.Tanh(),
        nn.Linear(5, 2),
    ).double()
    for bn in (module[1], module[5]):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.2, 3.0)
    with torch.no_grad():
        module[1].weight.normal_()
        module[1].bias.normal_()
    net = from_torch(module, (1, 8, 8))
    # BatchNorm disappears into the preceding Conv2d / Linear
    assert [type(layer).__name__ for layer in net.layers] == [
        "Conv2d",
        "Activation",
        "Flatten",
        "Dense",
        "Activation",
        "Dense",
    ]
    x = torch.rand(16, 1, 8, 8, dtype=torch.float64)
    module.eval()
    torch.testing.assert_close(net(x), module(x), rtol=1e-12, atol=1e-12)


def test_standalone_batchnorm_on_the_input_becomes_normalize() -> None:
    bn = nn.BatchNorm2d(2)
    bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
    bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    module = nn.Sequential(bn, nn.Flatten(), nn.Linear(8, 3)).double()
    net = from_torch(module, (2, 2, 2))
    assert isinstance(net.layers[0], Normalize)
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(net(x), module.eval()(x), rtol=1e-12, atol=1e-12)


def test_batchnorm_after_an_activation_is_refused_with_its_name() -> None:
    module = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3))
    with pytest.raises(UnsupportedError, match=r"BatchNorm1d at '2'.*cannot be folded"):
        from_torch(module, (4,))


class _ViewNet(nn.Module):
    """A hand-written forward using functional activations and views."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc1 = nn.Linear(2 * 4 * 4, 6)
        self.fc2 = nn.Linear(6, 6)
        self.fc3 = nn.Linear(6, 3)
        self.register_buffer("mean", torch.tensor(0.25))

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / 0.5
        x = F.relu(self.conv(x))
        x = x.view(x.size(0), -1)
        x = torch.tanh(self.fc1(x))
        x = torch.sigmoid(self.fc2(x)).reshape(-1, 6)
        x = F.leaky_relu(x, negative_slope=0.1)
        return self.fc3(torch.flatten(x, 1))


def test_fx_traced_forward_with_views_and_functional_activations() -> None:
    torch.manual_seed(2)
    module = _ViewNet()
    net = from_torch(module, (1, 6, 6), input_range=(0.0, 1.0))
    names = [type(layer).__name__ for layer in net.layers]
    assert names == [
        "Normalize",
        "Conv2d",
        "Activation",
        "Flatten",
        "Dense",
        "Activation",
        "Dense",
        "Activation",
        "Activation",
        "Dense",
    ]
    norm = net.layers[0]
    assert float(norm.mean) == 0.25 and float(norm.std) == 0.5  # exact, not 1 / (1 / 0.5)
    x = torch.rand(4, 1, 6, 6)
    torch.testing.assert_close(net(x), module(x), rtol=1e-6, atol=1e-6)


def test_builtin_style_view_minus_one() -> None:
    class Fc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(12, 5), nn.Linear(5, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc2(F.relu(self.fc1(x.view(-1, 12))))

    net = from_torch(Fc(), (3, 2, 2))
    assert isinstance(net.layers[0], Flatten)


@pytest.mark.parametrize(
    ("module", "pattern"),
    [
        (
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(3)),
            r"AdaptiveAvgPool2d at '1'.*windows of different sizes",
        ),
        (
            nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.LPPool2d(2, 2))),
            r"unsupported module LPPool2d at '0\.1'",
        ),
        (nn.Sequential(nn.Flatten(), nn.Softplus(beta=2.0)), r"Softplus.*beta=2"),
        (nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")), "padding_mode"),
        # Hardtanh(0, c) is the bounded ReLU; the default Hardtanh(-1, 1) is no IR activation
        (nn.Sequential(nn.Flatten(), nn.Hardtanh()), r"Hardtanh at '1': hardtanh\(min=-1\.0"),
    ],
)
def test_unsupported_modules_are_named(module: nn.Module, pattern: str) -> None:
    with pytest.raises(UnsupportedError, match=pattern):
        from_torch(module, (1, 6, 6))


def test_skip_connection_falls_back_to_a_graph() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x) + x

    module = Residual()
    graph = from_torch(module, (4,))  # not a chain: the graph importer takes it
    assert isinstance(graph, Graph) and not graph.is_chain
    x = torch.randn(3, 4)
    torch.testing.assert_close(graph(x), module(x))


def test_untraceable_forward_that_is_not_its_children_in_order_is_caught() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > -1e9:  # data-dependent: torch.fx cannot trace it
                x = 3.0 * torch.relu(self.fc1(x))
            return self.fc2(x)

    with pytest.raises(UnsupportedError, match=r"does not reproduce.*registration order"):
        from_torch(Branchy(), (4,))


def test_nan_weights_and_wrong_input_shape_are_input_errors() -> None:
    module = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(InputError, match="expects a flat input of 4 features"):
        from_torch(module, (5,))
    with torch.no_grad():
        module[0].weight[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        from_torch(module, (4,))
    with pytest.raises(InputError, match="input_shape"):
        from_torch(nn.Sequential(nn.ReLU()), (0, 3))


# ---- state dicts ---------------------------------------------------------------------------
def test_load_state_dict_legacy_zip_and_wrapped(tmp_path: Path) -> None:
    legacy = load_state_dict(DATA / "kw_mnist.pth")  # legacy (non-zip) serialization
    assert torch_archive_kind(DATA / "kw_mnist.pth") is None
    assert list(legacy) == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "5.weight",
        "5.bias",
        "7.weight",
        "7.bias",
    ]
    sd = {"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}
    for i, obj in enumerate(
        [
            sd,
            {"state_dict": sd, "epoch": 3},
            {"model": sd, "optimizer": {"lr": 0.1}},
            {f"module.{k}": v for k, v in sd.items()},
        ]
    ):
        torch.save(obj, tmp_path / f"{i}.pth")
        got = load_state_dict(tmp_path / f"{i}.pth")
        assert got.keys() == sd.keys()
        assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_load_state_dict_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="model file not found"):
        load_state_dict(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file at all")
    with pytest.raises(ModelFormatError, match="not a readable PyTorch file") as info:
        load_state_dict(tmp_path / "junk.pth")
    assert "\n" not in str(info.value)
    good = (DATA / "mnist_fc_3layer.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelFormatError):
        load_state_dict(tmp_path / "cut.pth")
    # a whole pickled module needs arbitrary code to load: refused, naming the class
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(ModelFormatError, match=r"pickled Python objects \(torch\.nn\..*Linear"):
        load_state_dict(tmp_path / "module.pth")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(nn.Linear(2, 2)))
    with pytest.raises(ModelFormatError):
        load_state_dict(tmp_path / "raw.pkl")
    torch.save({"epoch": 3}, tmp_path / "nostate.pth")
    with pytest.raises(ModelFormatError, match="no state dict"):
        load_state_dict(tmp_path / "nostate.pth")


# ---- TorchScript ---------------------------------------------------------------------------
def _script(module: nn.Module, path: Path, trace_input: Tensor | None = None, **kw: object) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream
        sm = (
            torch.jit.trace(module, trace_input)
            if trace_input is not None
            else torch.jit.script(module)
        )
        torch.jit.save(sm, str(path), **kw)
    return path


def test_torchscript_scripted_and_traced_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    module = _ViewNet().eval()
    x = torch.rand(3, 1, 6, 6)
    for path in (
        _script(module, tmp_path / "traced.pt", torch.rand(2, 1, 6, 6)),
        _script(module, tmp_path / "scripted.pt"),
    ):
        assert torch_archive_kind(path) == "torchscript"
        net = load_torchscript(path, (1, 6, 6))
        torch.testing.assert_close(net(x), module(x), rtol=1e-5, atol=1e-6)
        assert net.meta["format"] == "torchscript"


def test_torchscript_sequential_with_stored_shape_and_bn(tmp_path: Path) -> None:
    torch.manual_seed(4)
    module = nn.Sequential(
        NormalizeModule(torch.tensor(0.5), torch.tensor(0.25)),
        nn.Flatten(),
        nn.Linear(9, 5),
        nn.BatchNorm1d(5),
        nn.LeakyReLU(0.3),
        Arctan(),
        nn.Linear(5, 2),
    ).eval()
    module[3].running_var.uniform_(0.5, 2.0)
    path = _script(
        module,
        tmp_path / "seq.pt",
        _extra_files={"nnbound.json": '{"input_shape": [1, 3, 3], "input_range": [0, 1]}'},
    )
    net = load_torchscript(path)
    assert net.input_shape == (1, 3, 3) and net.input_range == (0.0, 1.0)
    x = torch.rand(4, 1, 3, 3)
    torch.testing.assert_close(net(x), module(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="input_shape"):
        load_torchscript(_script(module, tmp_path / "noshape.pt"))


def test_torchscript_errors(tmp_path: Path) -> None:
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2, divisor_override=3))
    path = _script(module, tmp_path / "avg.pt")
    with pytest.raises(UnsupportedError, match=r"avg_pool2d with divisor_override"):
        load_torchscript(path, (1, 6, 6))
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelFormatError, match="not a readable TorchScript archive"):
        load_torchscript(tmp_path / "bad.pt", (1, 6, 6))
    with pytest.raises(ModelFormatError, match="model file not found"):
        load_torchscript(tmp_path / "none.pt", (1, 6, 6))
