"""AvgPool2d / MaxPool2d IR layers: torch semantics, an exact adjoint for every option, the
max-pool relaxation and Lipschitz constant, save/load and the clear refusals."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: F401  (one torch thread)
from nnbound.bounds.api import bounds
from nnbound.bounds.spectral import block_matrix
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.layers import Activation, AvgPool2d, Conv2d, Dense, Flatten, MaxPool2d
from nnbound.network.native import load_network, save_network
from nnbound.network.network import Network, layer_summary
from nnbound.network.to_torch import to_torch
from nnbound.relax.maxpool import maxpool_backward, maxpool_lines, maxpool_lipschitz
from nnbound.sets.lp_ball import LpBall

DT = torch.float64


def _avg_configs() -> list[AvgPool2d]:
    out = []
    for k, s, p, ceil, cip in itertools.product(
        (2, 3), (1, 2, 3), (0, 1), (False, True), (False, True)
    ):
        out.append(AvgPool2d((k, k - 1 if k == 3 else k), (s, max(1, s - 1)), (p, 0), ceil, cip))
    return out


def _max_configs() -> list[MaxPool2d]:
    out = []
    for k, s, p, d, ceil in itertools.product((2, 3), (1, 2, 3), (0, 1), (1, 2), (False, True)):
        out.append(MaxPool2d((k, k), (s, max(1, s - 1)), (p, p), (d, 1), ceil))
    return out


@pytest.mark.parametrize("size", [(5, 6), (7, 7)])
def test_avgpool_matches_torch_and_transpose_is_the_exact_adjoint(size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    shape = (2, *size)
    for layer in _avg_configs():
        out = layer.out_shape(shape)
        x = torch.randn(3, *shape, generator=gen, dtype=DT, requires_grad=True)
        y = layer.forward(x)
        ref = F.avg_pool2d(
            x,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.ceil_mode,
            layer.count_include_pad,
        )
        assert tuple(y.shape[1:]) == out and torch.equal(y, ref), layer
        # transpose with two leading axes == autograd's vector-Jacobian product
        a = torch.randn(2, 3, *out, generator=gen, dtype=DT)
        at = layer.transpose(a, shape)
        (vjp,) = torch.autograd.grad((y.unsqueeze(0) * a).sum(), x)
        assert at.shape == (2, 3, *shape)
        torch.testing.assert_close(at.sum(0), vjp, rtol=1e-12, atol=1e-12)
        assert torch.equal(layer.forward_abs(x.detach().abs()), layer.forward(x.detach().abs()))
        assert layer.bias_map(out) is None and layer.tensors() == {}


@pytest.mark.parametrize("size", [(5, 6), (8, 7)])
def test_maxpool_matches_torch_and_its_windows(size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(1)
    shape = (2, *size)
    for layer in _max_configs():
        try:
            out = layer.out_shape(shape)
        except InputError:
            continue  # a window of padding only: refused, checked below
        x = torch.randn(3, *shape, generator=gen, dtype=DT)
        y = layer.forward(x)
        ref = F.max_pool2d(
            x, layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.ceil_mode
        )
        assert tuple(y.shape[1:]) == out and torch.equal(y, ref), layer
        idx, valid = layer.windows(shape)
        taps = x.reshape(3, 2, -1)[:, :, idx].masked_fill(~valid, -math.inf)
        assert torch.equal(taps.amax(2).reshape(y.shape), y), layer


def test_bad_shapes_and_options_are_input_errors() -> None:
    with pytest.raises(InputError, match=r"AvgPool2d expects an input \(C, H, W\)"):
        AvgPool2d(2).out_shape((4, 4))
    with pytest.raises(InputError, match="does not fit"):
        AvgPool2d(5).out_shape((1, 4, 4))
    with pytest.raises(InputError, match="padding"):
        AvgPool2d(2, 1, 2)
    with pytest.raises(InputError, match="stride"):
        MaxPool2d(2, 0)
    with pytest.raises(InputError, match="kernel_size"):
        MaxPool2d(0)
    with pytest.raises(InputError, match="dilation"):
        MaxPool2d(2, dilation=0)
    with pytest.raises(InputError, match="entirely in the padding"):
        MaxPool2d(2, 1, 1, dilation=5).out_shape((1, 4, 4))
    with pytest.raises(InputError, match=r"layer 1 .*MaxPool2d"):
        Network((Flatten(), MaxPool2d(2)), (1, 4, 4))
    assert AvgPool2d(3).stride == (3, 3) and MaxPool2d((2, 3)).stride == (2, 3)


def test_maxpool_is_not_linear() -> None:
    pool = MaxPool2d(2)
    for call in (
        lambda: pool.transpose(torch.zeros(1, 1, 2, 2), (1, 4, 4)),
        lambda: pool.bias_map((1, 2, 2)),
        lambda: pool.forward_abs(torch.zeros(1, 1, 4, 4)),
    ):
        with pytest.raises(UnsupportedError, match="max pooling is not a linear layer"):
            call()


@pytest.mark.parametrize("layer", [MaxPool2d(3, 2, 1), MaxPool2d(2, 1, dilation=2, ceil_mode=True)])
def test_maxpool_lines_and_backward_step_are_sound(layer: MaxPool2d) -> None:
    gen = torch.Generator().manual_seed(2)
    shape = (2, 5, 5)
    n = 3
    mid = torch.randn(n, *shape, generator=gen, dtype=DT)
    rad = torch.rand(n, *shape, generator=gen, dtype=DT) * torch.rand(n, 1, 1, 1, generator=gen)
    lo, up = mid - rad, mid + rad
    up[0, 0, 0, 0] = lo[0, 0, 0, 0] = 5.0  # a dominating input: exact lines
    lines = maxpool_lines(layer, shape, lo, up)
    x = lo.unsqueeze(1) + (up - lo).unsqueeze(1) * torch.rand(
        n, 400, *shape, generator=gen, dtype=DT
    )
    x = torch.cat([x, lo.unsqueeze(1), up.unsqueeze(1)], 1)  # (n, M, *shape)
    y = layer.forward(x.reshape(-1, *shape)).reshape(n, x.shape[1], -1)
    xj = x.reshape(n, x.shape[1], -1).gather(2, lines.index.unsqueeze(1).expand(-1, x.shape[1], -1))
    assert torch.all(xj <= y)
    assert torch.all(y <= lines.upper_slope.unsqueeze(1) * xj + lines.upper_bias.unsqueeze(1))
    # the window holding the dominating input is relaxed exactly (y = x_j)
    assert lines.upper_slope[0, 0] == 1 and lines.upper_bias[0, 0] == 0
    out = layer.out_shape(shape)
    a = torch.randn(n, 4, *out, generator=gen, dtype=DT)
    a_up, c_up = maxpool_backward(a, lines, shape, upper=True)
    a_lo, c_lo = maxpool_backward(a, lines, shape, upper=False)
    val = torch.einsum("nsk,nmk->nms", a.reshape(n, 4, -1), y)
    flat = x.reshape(n, x.shape[1], -1)
    hi = torch.einsum("nsk,nmk->nms", a_up.reshape(n, 4, -1), flat) + c_up.unsqueeze(1)
    low = torch.einsum("nsk,nmk->nms", a_lo.reshape(n, 4, -1), flat) + c_lo.unsqueeze(1)
    assert torch.all(low <= val + 1e-12) and torch.all(val <= hi + 1e-12)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_maxpool_lipschitz_constant(p: float) -> None:
    gen = torch.Generator().manual_seed(3)
    shape = (1, 6, 6)
    for layer, cover in ((MaxPool2d(2), 1), (MaxPool2d(3, 1), 9), (MaxPool2d(3, 2, 1), 4)):
        assert layer.coverage(shape) == cover
        k = maxpool_lipschitz(layer, shape, p)
        assert k == {1.0: cover, 2.0: math.sqrt(cover), math.inf: 1.0}[p]
        x = torch.randn(500, *shape, generator=gen, dtype=DT)
        d = torch.randn(500, *shape, generator=gen, dtype=DT) * 0.1
        dy = (layer.forward(x + d) - layer.forward(x)).reshape(500, -1)
        ratio = dy.norm(p, dim=1) / d.reshape(500, -1).norm(p, dim=1)
        assert float(ratio.max()) <= k + 1e-12
    # overlapping windows and one entry raised: every window covering it moves (tight for p=1)
    x = torch.zeros(1, *shape, dtype=DT)
    d = torch.zeros_like(x)
    d[0, 0, 2, 2] = 1.0
    dy = MaxPool2d(3, 1).forward(x + d) - MaxPool2d(3, 1).forward(x)
    assert float(dy.abs().sum()) == 9.0


def _pool_net(dtype: torch.dtype = DT) -> Network:
    gen = torch.Generator().manual_seed(4)
    return Network(
        (
            Conv2d(
                torch.randn(3, 1, 3, 3, generator=gen, dtype=dtype), torch.zeros(3, dtype=dtype)
            ),
            Activation("relu"),
            MaxPool2d(2, 1, 1, dilation=(1, 2), ceil_mode=True),
            AvgPool2d((2, 3), (1, 2), (1, 1), ceil_mode=True, count_include_pad=False),
            Flatten(),
        ),
        (1, 7, 6),
    )


def test_native_round_trip_to_torch_and_summary(tmp_path: Path) -> None:
    net = _pool_net()
    path = save_network(net, tmp_path / "pool.safetensors")
    back = load_network(path)
    x = torch.rand(4, 1, 7, 6, dtype=DT)
    assert torch.equal(back(x), net(x))
    for a, b in zip(net.layers, back.layers, strict=True):
        assert type(a) is type(b)
        if isinstance(a, (AvgPool2d, MaxPool2d)):
            assert vars(a) == vars(b)
    assert torch.equal(to_torch(net)(x), net(x))
    assert layer_summary(net.layers[2]).startswith("MaxPool2d(kernel=(2, 2)")
    assert "dilation=(1, 2)" in layer_summary(net.layers[2])
    assert "count_include_pad=False" in layer_summary(net.layers[3])
    assert not net.is_mlp


def test_block_matrix_folds_avgpool_and_refuses_maxpool() -> None:
    layers = (AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), Flatten())
    net = Network(layers, (2, 5, 6))
    m = block_matrix(net.layers, net.shapes, 0, 2)
    eye = torch.eye(60, dtype=torch.float32).reshape(60, 2, 5, 6)
    torch.testing.assert_close(m, net(eye).T)
    net = _pool_net()
    with pytest.raises(UnsupportedError, match="max pooling, not linear"):
        block_matrix(net.layers, net.shapes, 2, 4)


def test_methods_that_refuse_max_pooling() -> None:
    net = Network(
        (*_pool_net().layers, Dense(torch.ones(2, 63, dtype=DT), torch.zeros(2, dtype=DT))),
        (1, 7, 6),
    )
    ball = LpBall.make(torch.rand(1, 1, 7, 6, dtype=DT), 0.01, 2.0)
    with pytest.raises(UnsupportedError, match="max pooling"):
        bounds(net, ball, "quad")
    # alpha-CROWN runs on the graph engine, whose max pool keeps its fixed lines.
    alpha, crown = bounds(net, ball, "alpha-crown"), bounds(net, ball, "crown")
    assert bool((alpha.lower >= crown.lower).all() and (alpha.upper <= crown.upper).all())
    y = net(ball.sample(300, generator=torch.Generator().manual_seed(0))[0])
    assert bool((alpha.lower <= y.min(0).values).all() and (y.max(0).values <= alpha.upper).all())
    # (the Jacobian methods support max pooling: tests/property/test_jacobian_cnn.py)
