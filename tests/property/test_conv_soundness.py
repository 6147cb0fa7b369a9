"""Bounds of small random CNNs: sound against random, vertex and PGD points, and equal to the
bounds of the same network with every conv unrolled into a dense matrix."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import methods_for, pgd_extremes, unrolled
from nnbound.bounds.api import bounds
from nnbound.network.layers import Activation, Conv2d, Dense, Flatten, Normalize
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall


def random_cnn(activation: str, seed: int) -> Network:
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    layers = (
        Normalize(
            torch.tensor([0.1], dtype=torch.float64).view(1, 1, 1),
            torch.tensor([0.5], dtype=torch.float64).view(1, 1, 1),
        ),
        Conv2d(rnd(3, 1, 3, 3, scale=0.5), rnd(3, scale=0.2), stride=2, padding=1),
        Activation(activation),
        Conv2d(rnd(4, 3, 3, 3, scale=0.3), rnd(4, scale=0.2), stride=1, padding=1),
        Activation(activation),
        Flatten(),
        Dense(rnd(5, 36, scale=1 / 6), rnd(5, scale=0.2)),
    )
    return Network(layers, (1, 6, 6), name=f"cnn-{activation}")


@pytest.mark.parametrize("activation", ["relu", "tanh", "brelu"])
@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_cnn_bounds_sound_and_equal_to_unrolled(activation: str, p: float) -> None:
    net = random_cnn(activation, seed=7)
    flat = unrolled(net)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 6, 6, generator=gen, dtype=torch.float64)
    assert torch.allclose(net(x), flat(x), atol=1e-12)
    ball = LpBall.make(x, 0.15, p)
    pts = torch.cat([ball.sample(1500, generator=gen), ball.vertices(1500, generator=gen)], 1)
    y = net(pts.reshape(-1, 1, 6, 6)).reshape(3, -1, 5)
    for method in methods_for(activation):
        b = bounds(net, ball, method)
        assert torch.all(b.lower.unsqueeze(1) <= y + 1e-9), method
        assert torch.all(y <= b.upper.unsqueeze(1) + 1e-9), method
        lo, hi = pgd_extremes(net, ball, None, steps=30, restarts=2)
        assert torch.all(b.lower <= lo + 1e-9) and torch.all(hi <= b.upper + 1e-9), method
        bf = bounds(flat, ball, method)
        assert torch.allclose(b.lower, bf.lower, atol=1e-9), method
        assert torch.allclose(b.upper, bf.upper, atol=1e-9), method
