"""Bounds of a float32 network hold for the real network (issue 19 #3).

With every neuron stable the network is affine on the ball, so the worst point of a spec row
is the vertex against the sign of its gradient, and its value is known to float64 precision.
Computed in float32, CROWN's lower bound of a logit came out above that value (the issue
found 2.2e-5 on a margin); :func:`nnbound.bounds` now computes in float64 and rounds outward.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import random_network
from nnbound.bounds.api import bounds
from nnbound.bounds.outward import round_down, round_up
from nnbound.network.chain_graph import network_to_graph
from nnbound.sets.box import Box
from nnbound.sets.lp_ball import LpBall

SIZES = [20, 60, 60, 5]
EPS = 1e-3


def _stable_case(seed: int):
    """A float32 ReLU network whose large biases keep every neuron on one side of its kink
    over the ball (so the bound of every method but spectral is exact in real arithmetic),
    and its float64 twin (the same weights, exactly)."""
    net32 = random_network("relu", SIZES, seed=seed, bias_scale=20.0).to(dtype=torch.float32)
    x = torch.randn(4, SIZES[0], generator=torch.Generator().manual_seed(seed)).float()
    return net32, net32.to(dtype=torch.float64), x


def _worst_vertex_values(net64, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per output, the network's float64 value at the ball's vertex against the gradient's
    sign: the exact minimum of an output that is affine on the ball, ``(B, outputs)``."""
    xs = x.double().requires_grad_(True)
    out = net64(xs)
    values = []
    for s in range(out.shape[1]):
        (grad,) = torch.autograd.grad(out[:, s].sum(), xs, retain_graph=True)
        vertex = x.double() - eps.double()[:, None] * grad.sign()
        values.append(net64(vertex)[:, s].detach())
    return torch.stack(values, 1)


def _is_affine_on_ball(net64, x, eps) -> bool:
    b = bounds(net64, LpBall.make(x.double(), eps.double(), "inf"), "ibp")
    return all(bool(((lo > 0) | (up < 0)).all()) for lo, up in b.intermediate.pre.values())


@pytest.mark.parametrize("method", ["crown", "ibp", "crown-general", "fastlin", "alpha-crown"])
def test_float32_lower_bounds_stay_below_the_worst_point(method: str) -> None:
    for seed in range(3):
        net32, net64, x = _stable_case(seed)
        ball = LpBall.make(x, EPS, "inf")
        assert _is_affine_on_ball(net64, x, ball.eps)
        b = bounds(net32, ball, method)
        assert b.lower.dtype == torch.float32
        worst = _worst_vertex_values(net64, x, ball.eps)
        assert bool((b.lower.double() <= worst).all()), (method, seed)


def test_the_float32_pass_itself_violates_which_is_why_it_is_not_reported() -> None:
    # The evidence for the fix: without the float64 pass the float32 bound of some logit is
    # above a point's value (kept as a test so a change that makes float32 exact is noticed).
    above = 0.0
    for seed in range(3):
        net32, net64, x = _stable_case(seed)
        ball = LpBall.make(x, EPS, "inf")
        raw = bounds(net32, ball, "crown", outward=False)
        worst = _worst_vertex_values(net64, x, ball.eps)
        above = max(above, float((raw.lower.double() - worst).max()))
    assert above > 0


def test_box_and_graph_inputs_are_rounded_outward_too() -> None:
    net32, net64, x = _stable_case(1)
    box = Box.make(x - EPS, x + EPS)
    worst = _worst_vertex_values(net64, x, torch.full((4,), EPS, dtype=torch.float64))
    for net in (net32, network_to_graph(net32)):
        b = bounds(net, box, "crown")
        assert b.lower.dtype == torch.float32
        # the box is the float32 box: its radius is EPS up to float32 rounding of x +- EPS
        assert bool((b.lower.double() <= worst + 1e-9).all())


def test_intermediate_bounds_are_float32_and_contain_the_float64_ones() -> None:
    net32, net64, x = _stable_case(2)
    ball = LpBall.make(x, EPS, "inf")
    b32 = bounds(net32, ball, "crown")
    b64 = bounds(net64, LpBall.make(x.double(), ball.eps.double(), "inf"), "crown")
    for k, (lo, up) in b32.intermediate.pre.items():
        assert lo.dtype == torch.float32
        assert bool((lo.double() <= b64.intermediate.pre[k][0]).all())
        assert bool((up.double() >= b64.intermediate.pre[k][1]).all())


def test_rounding_moves_strictly_outward_and_nan_becomes_the_trivial_bound() -> None:
    x = torch.tensor([0.1, -3.7, 1e-30, 0.0, 2.0**-10, float("nan"), math.inf, -math.inf])
    x = x.double()
    lo, up = round_down(x, torch.float32), round_up(x, torch.float32)
    finite = torch.isfinite(x)
    assert bool((lo.double()[finite] < x[finite]).all())
    assert bool((up.double()[finite] > x[finite]).all())
    assert lo[5] == -math.inf and up[5] == math.inf
    assert lo[7] == -math.inf and up[6] == math.inf  # a trivial bound stays trivial
