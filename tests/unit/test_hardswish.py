"""The hardswish activation (:mod:`nnbound.ops.hardswish`, MobileNetV3): its lines, interval
and derivative interval contain the function on every interval (kinks at -3 and 3, the
parabola's minimum at -3/2, wide and degenerate intervals; float32 and float64), and CROWN
bounds of a hardswish network hold at samples, vertices and PGD points, as a chain and as a
graph."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnbound.bounds.api import bounds
from nnbound.bounds.graph_bounds import graph_bounds
from nnbound.network.from_torch import from_torch
from nnbound.network.from_torch_graph import from_torch_graph
from nnbound.network.network import Network
from nnbound.ops.hardswish import HardswishRelaxation
from nnbound.sets.lp_ball import LpBall

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import check_points_within, pgd_extremes


def _intervals(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    parts_l, parts_u = [], []
    for scale in (0.3, 2.0, 5.0, 50.0):
        a = torch.randn(4000, generator=gen, dtype=torch.float64) * scale
        b = torch.randn(4000, generator=gen, dtype=torch.float64) * scale
        parts_l.append(torch.minimum(a, b))
        parts_u.append(torch.maximum(a, b))
    edges = torch.tensor(
        [
            [-3, 3],
            [-3, -3],
            [3, 3],
            [-5, 5],
            [-1.5, -1.5],
            [-2, -1],
            [2.9, 3.1],
            [-3.1, -2.9],
            [-1e4, 1e4],
            [0, 0],
            [-7, -4],
            [4, 9],
            [-3, -1.5],
            [-1.5, 3],
        ],
        dtype=torch.float64,
    )
    l = torch.cat([*parts_l, edges[:, 0]]).to(dtype)
    u = torch.cat([*parts_u, edges[:, 1]]).to(dtype)
    return l, u


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lines_interval_and_derivative_contain_hardswish(dtype: torch.dtype) -> None:
    relax = HardswishRelaxation()
    l, u = _intervals(dtype)
    lines = relax.linear(l, u)
    lo, hi = relax.interval(l, u)
    d_lo, d_hi = relax.derivative_interval(l, u)
    assert bool((lines.lower_slope.isfinite() & lines.upper_bias.isfinite()).all())
    for t in torch.linspace(0, 1, 257, dtype=torch.float64):
        z = (l.double() + t * (u.double() - l.double())).to(dtype)
        z = torch.minimum(torch.maximum(z, l), u)
        h = F.hardswish(z)
        assert bool((lines.lower_slope * z + lines.lower_bias <= h).all())
        assert bool((h <= lines.upper_slope * z + lines.upper_bias).all())
        assert bool(((lo <= h) & (h <= hi)).all())
        zz = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.hardswish(zz).sum(), zz)
        assert bool(((d_lo <= g) & (g <= d_hi)).all())


def test_lines_are_exact_where_hardswish_is_linear_and_touch_the_parabola() -> None:
    relax = HardswishRelaxation()
    l = torch.tensor([-9.0, 4.0, -2.0], dtype=torch.float64)
    u = torch.tensor([-4.0, 8.0, 1.0], dtype=torch.float64)
    lines = relax.linear(l, u)
    torch.testing.assert_close(lines.lower_slope, torch.tensor([0.0, 1.0, 1.0 / 3.0]).double())
    torch.testing.assert_close(lines.upper_slope, torch.tensor([0.0, 1.0, 1.0 / 3.0]).double())
    # on [-2, 1] (inside the parabola): the chord above, the midpoint tangent below
    mid = torch.tensor(-0.5, dtype=torch.float64)
    assert abs(float(lines.lower_slope[2] * mid + lines.lower_bias[2] - F.hardswish(mid))) < 1e-12
    assert abs(float(lines.upper_bias[2] - (F.hardswish(u[2]) - u[2] / 3.0))) < 1e-12


def _module(dtype: torch.dtype) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        m = nn.Sequential(
            nn.Linear(5, 16), nn.Hardswish(), nn.Linear(16, 16), nn.Hardswish(), nn.Linear(16, 3)
        )
        with torch.no_grad():
            m[0].weight.mul_(4.0)  # pre-activations across both kinks
    return m.to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_crown_bounds_of_a_hardswish_network_hold_as_chain_and_graph(dtype: torch.dtype) -> None:
    module = _module(dtype)
    net = from_torch(module, (5,))
    assert isinstance(net, Network) and net.layers[1].name == "hardswish"
    graph = from_torch_graph(module, (5,))
    gen = torch.Generator().manual_seed(1)
    ball = LpBall.make(torch.randn(2, 5, generator=gen, dtype=torch.float64).to(dtype), 0.3, "inf")
    _, _, pmin, pmax = pgd_extremes(net, ball, steps=30, restarts=3, return_points=True)
    pts = torch.cat(
        [ball.sample(64, generator=gen), ball.vertices(32, generator=gen), pmin, pmax], 1
    )
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    for method in ("ibp", "crown-general"):
        for b in (bounds(net, ball, method), graph_bounds(graph, ball, method)):
            below, above = check_points_within(net, pts, None, b.lower, b.upper)
            assert below <= tol and above <= tol, (method, below, above)
            assert bool((b.upper - b.lower < 50.0).all())
