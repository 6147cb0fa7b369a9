"""Bounds of small random CNNs with average and max pooling: sound against random, vertex and
PGD points for every method and norm, average pooling equal to the network unrolled into
dense matrices, and max-pool bounds against an exhaustive grid."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import methods_for, pgd_extremes, unrolled
from nnbound.bounds.api import bounds
from nnbound.network.layers import (
    Activation,
    AvgPool2d,
    Conv2d,
    Dense,
    Flatten,
    MaxPool2d,
    Normalize,
)
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall

DT = torch.float64
EPS = {math.inf: 0.08, 2.0: 0.25, 1.0: 0.5}


def pool_cnn(kind: str, activation: str, seed: int) -> Network:
    """``avg``: conv -> avg pool (ceil, no padding count) -> act -> conv -> act -> avg pool;
    ``max``: conv -> act -> overlapping max pool -> conv -> max pool (dilated, ceil, straight
    after the conv) -> act; ``mixed``: conv -> max pool -> avg pool -> act. Input (1, 7, 7)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=DT) * scale

    norm = Normalize(torch.tensor([0.1], dtype=DT).view(1, 1, 1), torch.tensor([0.5], dtype=DT))
    act = Activation(activation)
    if kind == "avg":
        body = [
            Conv2d(rnd(3, 1, 3, 3, scale=0.5), rnd(3, scale=0.2), padding=1),
            AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
            act,
            Conv2d(rnd(4, 3, 2, 2, scale=0.4), rnd(4, scale=0.2)),
            act,
            AvgPool2d(2, 1, 1),
        ]
    elif kind == "max":
        body = [
            Conv2d(rnd(3, 1, 3, 3, scale=0.5), rnd(3, scale=0.2), padding=1),
            act,
            MaxPool2d(3, 2, 1),
            Conv2d(rnd(4, 3, 2, 2, scale=0.4), rnd(4, scale=0.2), padding=1),
            MaxPool2d(2, 1, dilation=(2, 1), ceil_mode=True),
            act,
        ]
    else:
        body = [
            Conv2d(rnd(3, 1, 2, 2, scale=0.5), rnd(3, scale=0.2), stride=1),
            MaxPool2d(2, 1),
            AvgPool2d(2, 2, 1, count_include_pad=False),
            act,
        ]
    probe = Network((norm, *body, Flatten()), (1, 7, 7))
    width = probe.num_outputs
    layers = (
        norm,
        *body,
        Flatten(),
        Dense(rnd(4, width, scale=1 / math.sqrt(width)), rnd(4, scale=0.2)),
    )
    return Network(layers, (1, 7, 7), name=f"{kind}-{activation}")


CASES = [("avg", "relu"), ("max", "relu"), ("mixed", "relu"), ("max", "tanh"), ("avg", "sigmoid")]


@pytest.mark.parametrize(("kind", "activation"), CASES)
@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_pool_cnn_bounds_are_sound(kind: str, activation: str, p: float) -> None:
    net = pool_cnn(kind, activation, seed=11)
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, 1, 7, 7, generator=gen, dtype=DT)
    ball = LpBall.make(x, EPS[p], p)
    pts = torch.cat([ball.sample(600, generator=gen), ball.vertices(600, generator=gen)], 1)
    y = net(pts.reshape(-1, 1, 7, 7)).reshape(2, -1, 4)
    lo, hi = pgd_extremes(net, ball, None, steps=25, restarts=2)
    methods = [*methods_for(activation), "spectral"]
    if kind == "avg" and activation == "relu":
        methods.append("alpha-crown")  # average pooling is linear: alpha-CROWN handles it
    for method in methods:
        b = bounds(net, ball, method)
        assert torch.all(b.lower.unsqueeze(1) <= y + 1e-9), method
        assert torch.all(y <= b.upper.unsqueeze(1) + 1e-9), method
        assert torch.all(b.lower <= lo + 1e-9) and torch.all(hi <= b.upper + 1e-9), method


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_avgpool_cnn_equals_unrolled(activation: str, p: float) -> None:
    net = pool_cnn("avg", activation, seed=3)
    flat = unrolled(net)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 7, 7, generator=gen, dtype=DT)
    torch.testing.assert_close(net(x), flat(x), rtol=0, atol=1e-12)
    ball = LpBall.make(x, EPS[p] / 2, p)
    # reference=True bounds every neuron by its backward pass only, so the bounds depend on
    # the function and the relaxations, not on how the linear maps are split into layers.
    linear = [m for m in methods_for(activation) if m in ("fastlin", "crown-adaptive")]
    for method in [*linear, "crown-general"]:
        b = bounds(net, ball, method, reference=True)
        bf = bounds(flat, ball, method, reference=True)
        torch.testing.assert_close(b.lower, bf.lower, rtol=0, atol=1e-9, msg=method)
        torch.testing.assert_close(b.upper, bf.upper, rtol=0, atol=1e-9, msg=method)
    b, bf = bounds(net, ball, "spectral"), bounds(flat, ball, "spectral")
    torch.testing.assert_close(b.lower, bf.lower, rtol=0, atol=1e-9)


def test_max_pool_bounds_contain_the_exhaustive_range() -> None:
    """A 2x2 input, a 1x1 conv to 3 channels, ReLU, a global max pool, a dense layer: every
    method's bounds contain the range found on a 17^4 grid of the box (and its vertices), and
    CROWN's lower bound is no more than the grid minimum."""
    gen = torch.Generator().manual_seed(8)
    layers = (
        Conv2d(
            torch.randn(3, 1, 1, 1, generator=gen, dtype=DT),
            torch.randn(3, generator=gen, dtype=DT) * 0.3,
        ),
        Activation("relu"),
        MaxPool2d(2),
        Flatten(),
        Dense(torch.randn(2, 3, generator=gen, dtype=DT), torch.zeros(2, dtype=DT)),
    )
    net = Network(layers, (1, 2, 2))
    center = torch.tensor([[[[0.1, -0.2], [0.3, 0.05]]]], dtype=DT)
    eps = 0.4
    ball = LpBall.make(center, eps, math.inf)
    axis = torch.linspace(-eps, eps, 17, dtype=DT)
    grid = torch.stack(torch.meshgrid(*([axis] * 4), indexing="ij"), -1).reshape(-1, 1, 2, 2)
    corners = torch.tensor(list(itertools.product((-eps, eps), repeat=4)), dtype=DT)
    pts = torch.cat([grid, corners.reshape(-1, 1, 2, 2)]) + center
    y = net(pts)
    true_lo, true_hi = y.min(0).values, y.max(0).values
    for method in methods_for("relu"):
        b = bounds(net, ball, method)
        assert torch.all(b.lower[0] <= true_lo + 1e-12), method
        assert torch.all(true_hi <= b.upper[0] + 1e-12), method
    crown = bounds(net, ball, "crown")
    assert torch.all(crown.lower[0] <= true_lo + 1e-12)
    assert torch.all(crown.lower[0] > true_lo - 2.0)  # finite and not absurdly loose
