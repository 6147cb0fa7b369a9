"""PyTorch models with branches, skips, slices, padding, resizing and transposed convolutions
into the graph IR (:func:`nnbound.network.from_torch_graph.from_torch_graph`): the graph
computes what the module computes (float32 and float64), CROWN bounds on the graph hold for
the module at samples, vertices and PGD points, the catalogue's ResNet-18 / MobileNetV2 /
SqueezeNet convert, and what cannot be converted is named with its traced node."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnbound.bounds.graph_bounds import graph_bounds
from nnbound.catalogue import as_graph, build_model, cifar_resnet, cifar_resnet_graph
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.from_torch import from_torch
from nnbound.network.from_torch_graph import from_torch_graph
from nnbound.network.graph import Graph
from nnbound.network.load import load_model
from nnbound.ops.base import OpKind
from nnbound.ops.registry import get_op
from nnbound.sets.lp_ball import LpBall

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: F401  (one torch thread: a shared machine stalls the pool)


def _bn(c: int, gen: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    return bn


class ResidualBlock(nn.Module):
    def __init__(self, c: int, gen: torch.Generator) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), _bn(c, gen)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), _bn(c, gen)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class Residual(nn.Module):
    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.block = ResidualBlock(2, gen)
        self.fc = nn.Linear(2 * 5 * 5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.block(x).flatten(1))


class Nested(nn.Module):
    """An outer skip around two residual blocks, and a skip over a whole stage."""

    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.inner = nn.Sequential(ResidualBlock(2, gen), ResidualBlock(2, gen))
        self.fc = nn.Linear(2 * 5 * 5, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = x + 0.5 * self.inner(x)
        y = y - torch.relu(y)  # two computed tensors again (sub)
        return self.fc(torch.flatten(y, 1))


class Branches(nn.Module):
    """Inception-style: three branches concatenated along the channels."""

    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 2, 1)
        self.b = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.fc = nn.Linear(7 * 5 * 5, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([self.a(x), self.b(x), self.pool(x)], dim=1)
        return self.fc(F.relu(y).view(y.size(0), -1))


class Slices(nn.Module):
    """Indexing, chunk, split, narrow and unbind feeding different branches."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(50 + 45 + 45 + 5 + 50 + 25, 3)

    def forward(self, x: Tensor) -> Tensor:
        lo, hi = x.chunk(2, dim=1)
        first, rest = torch.split(x, [1, 3], dim=1)
        strided = x[:, 1:, ::2, :]
        row = torch.narrow(x, 2, 1, 1)[:, 0, 0, :]
        picked = x[:, [3, 0]]
        plane = torch.unbind(x, 1)[2]
        parts = [
            torch.relu(lo - hi),
            torch.tanh(rest[:, :, 1:4]) + first[:, :, 1:4],
            strided,
            row,
            picked,
            plane,
        ]
        return self.fc(torch.cat([p.flatten(1) for p in parts], 1))


class BatchNormOnly(nn.Module):
    """Batch norms without a convolution in front: on the input and after an activation."""

    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.bn0 = _bn(4, gen)
        self.fc1 = nn.Linear(4 * 5 * 5, 8)
        self.bn1 = nn.BatchNorm1d(8)
        with torch.no_grad():
            self.bn1.running_var.uniform_(0.5, 2.0, generator=gen)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.sigmoid(self.fc1(self.bn0(x).flatten(1)))
        return self.fc2(self.bn1(h) + h)


class Padded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 3)
        self.same = nn.Conv2d(2, 2, 3, padding="same", dilation=2)
        self.fc = nn.Linear(4 * 6 * 8, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(F.pad(x, (1, 2, 0, 1), value=0.5))  # (2, 4, 6)
        y = F.pad(torch.relu(y), (1, 0, 1, 1), mode="reflect")  # (2, 6, 7)
        y = F.pad(y, (0, 1, -1, 1))  # a negative pad crops: (2, 6, 8)
        return self.fc(torch.cat([y, self.same(y)], 1).flatten(1))


class Permuted(nn.Module):
    """Channels-last linear layers between permutes, and a transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(4, 3)
        self.fc = nn.Linear(3 * 5 * 5, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.mix(x.permute(0, 2, 3, 1))  # (5, 5, 3): dense on the last axis
        y = torch.relu(y).permute(0, 3, 1, 2).transpose(2, 3)
        return self.fc(y.reshape(-1, 75))


class Resized(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)  # (4, 3, 3)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")  # (4, 6, 6)
        self.fc = nn.Linear(4 * 6 * 6 + 4 * 10 * 10, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.up(self.down(x)))
        z = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.fc(torch.cat([y.flatten(1), z.flatten(1)], 1))


class Deconv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)
        self.conv = nn.Conv2d(2, 2, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * 5 * 5, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.deconv(x))  # (2, 10, 10)
        return self.fc((self.conv(y) + x[:, :2]).flatten(1))


class Pools(nn.Module):
    """Adaptive pools whose sizes do not divide each other (a separable average), that
    upsample (VGG's 7x7 pool on a small image), and SiLU / constants made from the input."""

    def __init__(self) -> None:
        super().__init__()
        self.odd = nn.AdaptiveAvgPool2d((2, 3))
        self.up = nn.AdaptiveMaxPool2d((10, 5))
        self.act = nn.SiLU()
        self.fc = nn.Linear(4 * 2 * 3 + 4 * 10 * 5, 3)

    def forward(self, x: Tensor) -> Tensor:
        shift = x.new_tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1)
        y = self.act(self.odd(x) + shift) + torch.zeros_like(self.odd(x))
        z = F.silu(self.up(x))
        return self.fc(torch.cat([y.flatten(1), torch.exp(-z).flatten(1)], 1))


def _model(name: str) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        m = {
            "residual": lambda: Residual(gen),
            "nested": lambda: Nested(gen),
            "branches": lambda: Branches(gen),
            "slices": Slices,
            "bn_only": lambda: BatchNormOnly(gen),
            "padded": Padded,
            "permuted": Permuted,
            "resized": Resized,
            "deconv": Deconv,
            "pools": Pools,
        }[name]()
    return m.eval()


_SHAPES = {"residual": (2, 5, 5), "nested": (2, 5, 5), "branches": (2, 5, 5)}
MODELS = (
    "residual",
    "nested",
    "branches",
    "slices",
    "bn_only",
    "padded",
    "permuted",
    "resized",
    "deconv",
    "pools",
)


def _shape(name: str) -> tuple[int, ...]:
    return _SHAPES.get(name, (4, 5, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", MODELS)
def test_graph_forward_equals_module(name: str, dtype: torch.dtype) -> None:
    module = _model(name).to(dtype)
    graph = from_torch_graph(module, _shape(name), input_range=(-1.0, 1.0))
    assert isinstance(graph, Graph) and graph.dtype == dtype
    x = torch.rand(5, *_shape(name), dtype=dtype) * 2 - 1
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    with torch.no_grad():
        torch.testing.assert_close(graph(x), module(x), rtol=tol, atol=tol)


def test_node_kinds_of_the_converted_graphs() -> None:
    ops = {
        name: {n.op for n in from_torch_graph(_model(name), _shape(name)).nodes} for name in MODELS
    }
    assert {"add", "scale", "relu"} <= ops["residual"]
    assert {"add", "sub", "scale"} <= ops["nested"]
    assert {"concat", "maxpool2d"} <= ops["branches"]
    assert {"slice", "gather", "concat", "sub"} <= ops["slices"]
    assert {"pad", "gather", "slice"} <= ops["padded"]  # reflect padding is a gather
    assert "transpose" in ops["permuted"] and "conv2d" in ops["permuted"]
    assert "resize_nearest" in ops["resized"]
    assert "conv_transpose2d" in ops["deconv"]
    assert {"resize_nearest", "transpose", "mul", "sigmoid", "exp"} <= ops["pools"]


# -- soundness of CROWN on the converted graph, against the torch module ---------------------
def _pgd_points(module: nn.Module, ball: LpBall, steps: int = 15) -> Tensor:
    """For every output and side, the best point of a short sign-gradient attack."""
    x0 = ball.center[0]
    out = module(x0[None]).shape[1]
    x = x0.expand(2 * out, *x0.shape).clone()
    sign = torch.cat([torch.ones(out), -torch.ones(out)]).to(x0.dtype)
    rows = torch.arange(2 * out) % out
    eps = float(ball.eps.reshape(-1)[0])
    for t in range(steps):
        x.requires_grad_(True)
        val = module(x)[torch.arange(2 * out), rows] * sign
        (grad,) = torch.autograd.grad(val.sum(), x)
        with torch.no_grad():
            lr = 2.5 * eps / steps * (0.5 * (1 + math.cos(math.pi * t / steps)) + 0.05)
            x = ball.project((x + lr * grad.sign())[None])[0]
    return x.detach()


def _check_sound(module: nn.Module, graph: Graph, eps: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    dtype = graph.dtype
    center = torch.rand(1, *graph.input_shape, generator=gen, dtype=torch.float64) * 2 - 1
    ball = LpBall.make(center.to(dtype), eps, float("inf"))
    ops = [get_op(n.op) for n in graph.nodes]
    relu_only = all(op.kind is not OpKind.ELEMENTWISE or op.traits.piecewise_linear for op in ops)
    bounds = graph_bounds(graph, ball, "crown" if relu_only else "crown-general")
    pts = torch.cat(
        [
            ball.sample(64, generator=gen)[0],
            ball.vertices(32, generator=gen)[0],
            _pgd_points(module, ball),
        ]
    )
    with torch.no_grad():
        y = module(pts)
    lo, up = bounds.lower.reshape(1, -1), bounds.upper.reshape(1, -1)
    tol = (1e-9 if dtype == torch.float64 else 1e-5) * max(1.0, float(y.abs().max()))
    assert bool((lo <= y + tol).all()), float((lo - y).max())
    assert bool((y <= up + tol).all()), float((y - up).max())
    assert bool((up - lo < 1e3).all())  # bounded, not just sound


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["nested", "slices", "deconv"])
def test_crown_bounds_on_the_graph_hold_for_the_module(name: str, dtype: torch.dtype) -> None:
    module = _model(name).to(dtype)
    graph = from_torch_graph(module, _shape(name))
    _check_sound(module, graph, 0.05, seed=3)


def test_crown_bounds_hold_on_branches_padding_and_resizing() -> None:
    for name in ("branches", "padded", "resized", "pools"):
        module = _model(name)
        _check_sound(module, from_torch_graph(module, _shape(name)), 0.05, seed=4)


# -- the catalogue ------------------------------------------------------------------------------
def _matches(module: nn.Module, graph: Graph, seed: int = 5) -> None:
    x = torch.rand(2, *graph.input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = module(x)
        got = graph(x)
    scale = max(1.0, float(expected.abs().max()))
    assert float((got - expected).abs().max()) <= 1e-4 * scale


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_catalogue_models_convert_and_match(name: str) -> None:
    model = build_model(name, image_size=32, num_classes=10)
    graph = as_graph(model)
    assert graph.input_range == (0.0, 1.0) and graph.meta["architecture"] == name
    ops = {n.op for n in graph.nodes}
    assert "add" in ops and ("brelu" in ops) == (name == "mobilenet_v2")
    _matches(model, graph)


def test_load_model_gives_the_graph_of_a_catalogue_name() -> None:
    graph = load_model("squeezenet1_1", input_shape=(3, 32, 32))
    assert isinstance(graph, Graph) and "concat" in {n.op for n in graph.nodes}
    assert graph.meta["weights"].startswith("random")
    _matches(build_model("squeezenet1_1", image_size=32), graph)


def test_from_torch_falls_back_to_the_graph_importer() -> None:
    module = _model("branches")
    graph = from_torch(module, _shape("branches"))  # not a chain
    assert isinstance(graph, Graph) and "concat" in {n.op for n in graph.nodes}
    _matches(module, graph)


def test_cifar_resnet_keeps_activations_in_scale_and_converts() -> None:
    graph = cifar_resnet_graph(18, width=4, image_size=16)  # ResNet-18's depth, test width
    assert graph.input_shape == (3, 16, 16)
    assert sum(n.op == "add" for n in graph.nodes) == 8  # eight residual blocks
    y = graph(torch.rand(4, 3, 16, 16))
    assert bool(torch.isfinite(y).all()) and float(y.abs().max()) < 100.0
    model = cifar_resnet((1, 1), width=8)
    assert from_torch_graph(model, (3, 32, 32)).output_shape == (10,)


# -- other conversions ----------------------------------------------------------------------------
class _Misc(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.randn(5, 3, generator=torch.Generator().manual_seed(2)))
        self.register_buffer("cap", torch.tensor([0.2, -0.1, 0.3]))
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x @ self.w  # (4, 3): a constant matrix on the last axis
        h = torch.clamp(h, -0.5, 0.75) + F.hardsigmoid(h) + torch.clamp(h, min=0.1)
        h = F.relu6(h * 3.0) - torch.clamp(h, max=self.cap)
        out = self.fc(h)  # Linear on (4, 3): the same dense map on every row
        return out.sum(dim=1), out.mean(dim=-1, keepdim=True)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_same_padding_of_an_even_kernel_pads_after() -> None:
    module = nn.Sequential(nn.Conv2d(2, 3, (2, 4), padding="same"), nn.Flatten()).eval()
    graph = from_torch_graph(module, (2, 5, 6))
    assert graph.nodes[0].op == "pad"
    x = torch.randn(3, 2, 5, 6)
    torch.testing.assert_close(graph(x), module(x), rtol=1e-5, atol=1e-5)


def test_misc_functions_and_several_outputs() -> None:
    module = _Misc().eval()
    graph = from_torch_graph(module, (4, 5))
    x = torch.randn(6, 4, 5)
    a, b = module(x)
    expected = torch.cat([a.flatten(1), b.flatten(1)], 1)
    torch.testing.assert_close(graph(x), expected, rtol=1e-5, atol=1e-5)
    ops = {n.op for n in graph.nodes}
    assert {"brelu", "relu", "reduce_sum", "concat", "transpose"} <= ops


# -- what cannot be converted is named -------------------------------------------------------------
class _CumSum(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.cumsum(torch.relu(x), dim=1)


class _Norm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


class _Bilinear(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear")


class _DataDependent(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x if x.sum() > 0 else -x


class _Aliased(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc(x)
        z = self.act(y)  # in place: y is now relu(y) too
        return y + z


@pytest.mark.parametrize(
    ("module", "shape", "pattern"),
    [
        (
            _CumSum(),
            (4,),
            r"node 'cumsum' \(function cumsum\).*unsupported torch function 'cumsum'",
        ),
        (_Norm(), (4,), r"node 'body_1' \(LayerNorm at 'body\.1'\).*unsupported torch module"),
        (_Bilinear(), (1, 3, 3), r"node 'interpolate'.*mode 'bilinear'"),
        (_DataDependent(), (4,), r"torch\.fx cannot trace _DataDependent"),
        (_Aliased(), (4,), r"does not reproduce _Aliased\.forward"),
        (
            nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4, track_running_stats=False)),
            (4,),
            r"BatchNorm1d at '1'.*batch statistics",
        ),
    ],
)
def test_unsupported_operations_are_named(
    module: nn.Module, shape: tuple[int, ...], pattern: str
) -> None:
    with pytest.raises(UnsupportedError, match=pattern):
        from_torch_graph(module, shape)


def test_a_wrong_input_shape_or_nan_weights_are_input_errors() -> None:
    with pytest.raises(InputError, match=r"node 'block_conv1'.*is input_shape right\?"):
        from_torch_graph(_model("residual"), (3, 5, 5))
    module = _model("residual")
    with torch.no_grad():
        module.fc.weight[0, 0] = float("nan")
    with pytest.raises(InputError, match=r"fc\.weight contains NaN"):
        from_torch_graph(module, (2, 5, 5))


def test_mobilenet_v3_converts_with_hardswish_and_squeeze_excite_products() -> None:
    model = build_model("mobilenet_v3_small", image_size=32, num_classes=10)
    graph = as_graph(model)
    ops = {n.op for n in graph.nodes}
    assert {"hardswish", "mul", "brelu"} <= ops  # hard sigmoid: a bounded ReLU
    _matches(model, graph)
