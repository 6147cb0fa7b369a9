"""``layerwise_bounds(last_signs_only=True)``: the last ReLU layer gets only the side of each
bound that can settle its state. Its states must be the full pass's, every earlier layer's
bounds the full pass's, and every bound still hold at sampled points of the ball."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import random_network
from nnbound.bounds.methods import layerwise_bounds
from nnbound.sets.lp_ball import LpBall


def _prefix_values(net, points: torch.Tensor, end: int) -> torch.Tensor:
    out = points
    for layer in net.layers[:end]:
        out = layer.forward(out)
    return out


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    act=st.sampled_from(["relu", "leaky_relu"]),
    depth=st.integers(1, 4),
    p=st.sampled_from([math.inf, 2.0, 1.0]),
    eps=st.floats(0.01, 1.0),
    method=st.sampled_from(["crown-general", "crown-adaptive", "fastlin"]),
)
def test_states_and_inner_bounds_equal_the_full_pass(seed, act, depth, p, eps, method):
    net = random_network(act, [6] + [12] * depth + [3], seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    ball = LpBall.make(x, torch.full((4,), eps, dtype=torch.float64), p)
    full = layerwise_bounds(net, ball, method).intermediate.pre
    signs = layerwise_bounds(net, ball, method, last_signs_only=True).intermediate.pre
    last = max(full)
    for i in full:
        lo, up = signs[i]
        if i < last:
            torch.testing.assert_close(lo, full[i][0], rtol=0, atol=0)
            torch.testing.assert_close(up, full[i][1], rtol=0, atol=0)
        else:
            assert torch.equal(lo >= 0, full[i][0] >= 0)
            assert torch.equal(up <= 0, full[i][1] <= 0)
            # never tighter than the full pass, and still sound at sampled points
            # (up to the rounding of differently grouped products)
            assert bool((lo <= full[i][0] + 1e-12).all()) and bool((up >= full[i][1] - 1e-12).all())
    radius = torch.full((4,), eps, dtype=torch.float64)
    direction = torch.randn(4, 256, 6, generator=gen, dtype=torch.float64)
    if p == math.inf:
        direction = direction.sign()
    direction = direction / torch.linalg.vector_norm(direction, p, dim=-1, keepdim=True)
    points = x.unsqueeze(1) + radius[:, None, None] * direction
    values = _prefix_values(net, points.reshape(-1, 6), last).reshape(4, 256, -1)
    lo, up = signs[last]
    assert bool((values >= lo.unsqueeze(1) - 1e-9).all())
    assert bool((values <= up.unsqueeze(1) + 1e-9).all())


@pytest.mark.parametrize("act", ["tanh", "brelu"])
def test_other_activations_keep_both_sides(act):
    """Smooth activations and a bounded ReLU (two kinks) read both bounds: nothing changes."""
    net = random_network(act, [5, 10, 10, 2], seed=1)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ball = LpBall.make(x, torch.full((3,), 0.3, dtype=torch.float64), math.inf)
    full = layerwise_bounds(net, ball, "crown-general").intermediate.pre
    signs = layerwise_bounds(net, ball, "crown-general", last_signs_only=True).intermediate.pre
    for i in full:
        torch.testing.assert_close(signs[i], full[i], rtol=0, atol=0)
