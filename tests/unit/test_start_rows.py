"""Backward passes start from rows of the last layer's matrix built directly (Dense: a row
gather; Conv2d: the kernel at the neuron's receptive field); they must equal the one-hot rows
carried through the layer's transpose."""

from __future__ import annotations

import math

import pytest
import torch

from nnbound.bounds.linear import start_rows
from nnbound.network.layers import Conv2d, Dense
from nnbound.network.network import Network

DT = torch.float64


def _via_transpose(net: Network, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    layer, in_shape, out_shape = net.layers[0], net.shapes[0], net.shapes[1]
    n, u = idx.shape
    onehot = torch.zeros(n, u, math.prod(out_shape), dtype=DT)
    onehot.scatter_(2, idx.unsqueeze(-1), 1.0)
    onehot = onehot.reshape(n, u, *out_shape)
    const = (onehot * layer.bias_map(out_shape)).reshape(n, u, -1).sum(-1)
    return layer.transpose(onehot, in_shape), const


@pytest.mark.parametrize(
    "stride,padding,dilation,groups",
    [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, 1, 1, 2), (3, 2, 1, 4), (1, 1, 3, 2)],
)
def test_conv_rows_equal_transposed_one_hot_rows(stride, padding, dilation, groups) -> None:
    g = torch.Generator().manual_seed(stride + 10 * padding + 100 * groups + dilation)
    conv = Conv2d(
        torch.randn(8, 4 // groups, 3, 2, generator=g, dtype=DT),
        torch.randn(8, generator=g, dtype=DT),
        stride,
        padding,
        dilation,
        groups,
    )
    net = Network((conv,), (4, 9, 8))
    size = math.prod(net.shapes[1])
    idx = torch.randint(0, size, (3, 17), generator=g)
    a, const, end = start_rows(net.layers, net.shapes, 1, idx, DT, "cpu")
    want_a, want_const = _via_transpose(net, idx)
    assert end == 0
    torch.testing.assert_close(a, want_a, rtol=0, atol=1e-15)
    torch.testing.assert_close(const, want_const, rtol=0, atol=1e-15)


def test_dense_rows_equal_transposed_one_hot_rows() -> None:
    g = torch.Generator().manual_seed(0)
    net = Network(
        (Dense(torch.randn(6, 5, generator=g, dtype=DT), torch.randn(6, dtype=DT)),), (5,)
    )
    idx = torch.randint(0, 6, (2, 4), generator=g)
    a, const, end = start_rows(net.layers, net.shapes, 1, idx, DT, "cpu")
    want_a, want_const = _via_transpose(net, idx)
    assert end == 0
    torch.testing.assert_close(a, want_a, rtol=0, atol=1e-15)
    torch.testing.assert_close(const, want_const, rtol=0, atol=1e-15)
