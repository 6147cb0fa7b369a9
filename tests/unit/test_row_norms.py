"""The first block's row norms in closed form equal the ones built from identity rows."""

from __future__ import annotations

import math

import pytest
import torch

from nnbound.bounds.row_norms import eye_row_norms, first_block_row_norms
from nnbound.network.layers import Conv2d, Dense, Flatten, Normalize
from nnbound.network.network import Network

DT = torch.float64
QS = (1.0, 2.0, math.inf)


def _check(layers: tuple, input_shape: tuple[int, ...]) -> None:
    net = Network(layers, input_shape)
    end = len(layers)
    for q in QS:
        fast = first_block_row_norms(net.layers, net.shapes, end, q, DT, "cpu")
        slow = eye_row_norms(net.layers, net.shapes, end, q, DT, "cpu", chunk_elements=500)
        assert fast.shape == slow.shape == net.shapes[end]
        torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_dense_with_normalize_around(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    std_in = torch.rand(6, generator=g, dtype=DT) + 0.2
    std_out = -(torch.rand(4, generator=g, dtype=DT) + 0.5)  # a negative std flips signs only
    layers = (
        Normalize(torch.zeros(6, dtype=DT), std_in),
        Dense(torch.randn(4, 6, generator=g, dtype=DT), torch.randn(4, generator=g, dtype=DT)),
        Normalize(torch.ones(4, dtype=DT), std_out),
    )
    _check(layers, (6,))


@pytest.mark.parametrize(
    "stride,padding,dilation,groups",
    [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, 1, 1, 2), (3, 2, 1, 4)],
)
def test_conv_with_input_normalisation(stride, padding, dilation, groups) -> None:
    g = torch.Generator().manual_seed(stride * 7 + padding + groups)
    c_in, c_out = 4, 8
    weight = torch.randn(c_out, c_in // groups, 3, 3, generator=g, dtype=DT)
    std = torch.rand(c_in, 1, 1, generator=g, dtype=DT) + 0.3
    layers = (
        Normalize(torch.zeros(c_in, 1, 1, dtype=DT), std),
        Conv2d(weight, torch.zeros(c_out, dtype=DT), stride, padding, dilation, groups),
        Flatten(),
    )
    _check(layers, (c_in, 9, 7))


def test_two_mixing_layers_take_the_identity_path() -> None:
    g = torch.Generator().manual_seed(3)
    layers = (
        Conv2d(torch.randn(3, 2, 3, 3, generator=g, dtype=DT), torch.zeros(3, dtype=DT)),
        Conv2d(torch.randn(2, 3, 2, 2, generator=g, dtype=DT), torch.zeros(2, dtype=DT)),
    )
    _check(layers, (2, 6, 6))
