"""The first-layer knee of a radius search (:mod:`nnbound.tasks.knees`): the radius at which
a convolution's neurons over a constant region of the input turn unstable together."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnbound.data.registry import load_dataset
from nnbound.network.layers import Activation, Conv2d, Dense, Flatten
from nnbound.network.load import load_model
from nnbound.network.network import Network
from nnbound.tasks.knees import KNEE_GROUP, first_layer_knee

F64 = torch.float64


def _conv_net(weight: torch.Tensor, bias: torch.Tensor) -> Network:
    """``(1, 10, 10)`` -> conv 3x3 (no padding) -> ReLU -> Dense(3)."""
    g = torch.Generator().manual_seed(0)
    out_c = weight.shape[0]
    dense = Dense(torch.randn(3, out_c * 64, generator=g), torch.zeros(3))
    layers = (Conv2d(weight, bias), Activation("relu"), Flatten(), dense)
    return Network(layers, (1, 10, 10), (0.0, 1.0))  # type: ignore[arg-type]


def _half_constant(value: float) -> torch.Tensor:
    """An image whose left half is ``value`` and right half noise."""
    x = torch.rand(1, 1, 10, 10, generator=torch.Generator().manual_seed(1))
    x[..., :5] = value
    return x


def _channel_radius(w: torch.Tensor, b: torch.Tensor, value: float, q: float) -> float:
    """Where a neuron over the constant region turns unstable: ``|b + value sum w| / ||w||_q``."""
    w64 = w.to(F64).reshape(-1)
    centre = float(b) + value * float(w64.sum())
    return abs(centre) / float(torch.linalg.vector_norm(w64, q))


@pytest.mark.parametrize("p, q", [(math.inf, 1.0), (2.0, 2.0), (1.0, math.inf)])
def test_knee_is_where_a_channel_over_a_constant_region_turns_unstable(p: float, q: float) -> None:
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(2, 1, 3, 3, generator=g)
    bias = torch.tensor([-0.7, -3.0])
    net = _conv_net(weight, bias)
    radii = sorted(_channel_radius(weight[c], bias[c], 0.2, q) for c in range(2))
    assert radii[1] > radii[0] * (1 + KNEE_GROUP)  # two separate knees: the first counts
    got = first_layer_knee(net, _half_constant(0.2), p)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(radii[0], rel=1e-5)


def test_knees_of_channels_close_together_count_as_one_at_the_largest() -> None:
    weight = torch.ones(2, 1, 3, 3)
    bias = torch.tensor([-2.0, -2.01])  # radii 0.2 and 0.201 at a region of 0.02
    net = _conv_net(weight, bias)
    want = _channel_radius(weight[1], bias[1], 0.02, 1.0)
    assert first_layer_knee(net, _half_constant(0.02), math.inf)[0] == pytest.approx(want, 1e-5)


def test_no_knee_without_a_shared_radius() -> None:
    """Noise everywhere (no two patches alike), a dense first layer (no shared weights), or
    a data box (bounds clipped to it, not ``z -+ eps ||w||``): no knee."""
    g = torch.Generator().manual_seed(3)
    conv = _conv_net(torch.randn(2, 1, 3, 3, generator=g), torch.tensor([-0.5, -1.0]))
    noise = torch.rand(2, 1, 10, 10, generator=g)
    assert np.isinf(first_layer_knee(conv, noise, math.inf)).all()
    assert np.isinf(first_layer_knee(conv, _half_constant(0.2), math.inf, (0.0, 1.0))).all()
    dense = Network(
        (Flatten(), Dense(torch.randn(8, 100, generator=g), -torch.ones(8)), Activation("relu")),
        (1, 10, 10),
        (0.0, 1.0),
    )  # type: ignore[arg-type]
    assert np.isinf(first_layer_knee(dense, torch.zeros(2, 1, 10, 10), math.inf)).all()


def test_mnist_cnn_small_knee_lies_at_its_background_channels() -> None:
    """The trained ``mnist-cnn-small``: 6 of its 8 first-layer channels turn unstable over a
    digit's background (pixel 0) at radii 0.3000-0.3017, one knee at the largest of them (a
    seventh at 0.3112 is a knee of its own, past it)."""
    net = load_model("mnist-cnn-small")
    ds = load_dataset("mnist100", input_range=net.input_range)
    knee = first_layer_knee(net, net.check_input(ds.images[:8]), math.inf)
    conv = net.layers[0]
    assert isinstance(conv, Conv2d)
    background = [_channel_radius(conv.weight[c], conv.bias[c], 0.0, 1.0) for c in range(8)]
    near = sorted(r for r in background if 0.299 < r < 0.303)
    assert len(near) == 6
    assert any(0.311 < r < 0.312 for r in background)
    assert knee == pytest.approx(np.full(8, near[-1]), rel=1e-5)
