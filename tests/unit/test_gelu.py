"""GELU (``ops/gelu.py``): a new activation is one file plus one registry line.

The forward pass is ``x Phi(x)`` (torch's exact GELU, ONNX ``Gelu``); the interval is sound and
exact (attained at the ends or at the global minimum ``x* ~ -0.7518``); the lines sandwich
GELU for random intervals of every kind (narrow, wide, one-sided, across the minimum or the
inflection points ``+-sqrt 2``, points) at dense grids and the ends, in float32 and float64;
the derivative interval contains the derivative and is attained; the Lipschitz constant is
``max |GELU'|``; and graphs and chain networks with GELU bound soundly (samples, vertices,
PGD) with IBP and CROWN-general. Nothing outside ``ops/gelu.py`` names GELU: the registry
finds it by its ONNX / torch / Keras names and the chain IR holds it as an activation.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import pgd_extremes, random_network
from nnbound.bounds.api import bounds
from nnbound.bounds.graph_bounds import graph_bounds
from nnbound.network.chain_graph import network_to_graph
from nnbound.network.graph import Node
from nnbound.network.layers import ACTIVATIONS
from nnbound.ops.gelu import F_MIN, LIPSCHITZ, X_MIN, GeluRelaxation
from nnbound.ops.registry import DEFAULT_OPTIONS, by_keras, by_onnx, by_torch, get_op
from nnbound.sets.box import Box
from nnbound.sets.lp_ball import LpBall

F64 = torch.float64
SQRT2 = math.sqrt(2.0)


def _exact(x: Tensor) -> Tensor:
    return x * 0.5 * torch.erfc(-x.to(F64) / SQRT2)


def _intervals(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """float64 intervals: random centres and widths from 0 to 40, plus hand-picked ones
    around the minimum and the inflection points."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(n, generator=gen, dtype=F64) * 3
    scale = torch.tensor([0.0, 1e-4, 0.05, 0.5, 2.0, 8.0, 20.0], dtype=F64)
    r = torch.rand(n, generator=gen, dtype=F64) * scale[torch.randint(0, 7, (n,), generator=gen)]
    special = torch.tensor(
        [
            [X_MIN, X_MIN],
            [-1.0, -0.5],
            [-SQRT2, SQRT2],
            [-SQRT2 - 0.1, 0.0],
            [0.0, SQRT2 + 0.1],
            [-5.0, 5.0],
            [-40.0, -30.0],
            [-8.0, -SQRT2],
            [SQRT2, 9.0],
            [-3.0, -0.75],
            [-0.76, 3.0],
            [-1e-3, 1e-3],
        ],
        dtype=F64,
    )
    return torch.cat([c - r, special[:, 0]]), torch.cat([c + r, special[:, 1]])


def _grid(lo: Tensor, up: Tensor, m: int) -> Tensor:
    t = torch.linspace(0.0, 1.0, m, dtype=F64)
    x = lo.to(F64)[:, None] + (up.to(F64) - lo.to(F64))[:, None] * t
    return x.to(lo.dtype).clamp(min=lo[:, None], max=up[:, None])


def test_forward_is_x_phi_x() -> None:
    x = torch.linspace(-12, 12, 2001, dtype=F64)
    node = Node("gelu", ("x",), "y")
    torch.testing.assert_close(get_op("gelu").forward(node, x), _exact(x), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(get_op("gelu").forward(node, x), F.gelu(x), rtol=0, atol=0)


def test_minimum_and_lipschitz_constants() -> None:
    x = torch.linspace(-4, 4, 400001, dtype=F64)
    f = _exact(x)
    assert abs(float(x[f.argmin()]) - X_MIN) < 1e-4
    assert F_MIN <= float(f.min()) < F_MIN + 1e-9  # the grid misses x* by < 1e-5
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.gelu(xr).sum(), xr)
    assert float(g.abs().max()) <= LIPSCHITZ < float(g.abs().max()) + 1e-9
    assert get_op("gelu").lipschitz(node=Node("gelu", ("x",), "y")) == LIPSCHITZ


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_lines_and_interval_are_sound(dtype: torch.dtype) -> None:
    lo, up = _intervals(1500, 0)
    lo, up = lo.to(dtype), up.to(dtype)
    relax = GeluRelaxation()
    lines = relax.linear(lo, up)
    i_lo, i_up = relax.interval(lo, up)
    x = _grid(lo, up, 801)
    for f in (F.gelu(x).to(F64), _exact(x.to(F64))):  # the working precision and exact
        x64 = x.to(F64)
        low = lines.lower_slope.to(F64)[:, None] * x64 + lines.lower_bias.to(F64)[:, None]
        high = lines.upper_slope.to(F64)[:, None] * x64 + lines.upper_bias.to(F64)[:, None]
        assert float((low - f).max()) <= 0
        assert float((f - high).max()) <= 0
        assert float((i_lo.to(F64)[:, None] - f).max()) <= 0
        assert float((f - i_up.to(F64)[:, None]).max()) <= 0


def test_interval_is_exact_and_lines_are_tight() -> None:
    lo, up = _intervals(400, 1)
    relax = GeluRelaxation()
    i_lo, i_up = relax.interval(lo, up)
    f = _exact(_grid(lo, up, 4001))
    true_lo = torch.minimum(f.amin(1), torch.where((lo <= X_MIN) & (up >= X_MIN), F_MIN, 1e9))
    assert float((true_lo - i_lo).abs().max()) < 1e-6  # the grid misses x* by < 1e-2
    torch.testing.assert_close(i_up, f.amax(1), rtol=1e-13, atol=1e-13)
    # the lines are no further from GELU than the grid slack (and the interval) allows
    lines = relax.linear(lo, up)
    x = _grid(lo, up, 4001)
    gap_up = (lines.upper_slope[:, None] * x + lines.upper_bias[:, None] - f).amin(1)
    gap_lo = (f - lines.lower_slope[:, None] * x - lines.lower_bias[:, None]).amin(1)
    width = up - lo
    slack = 0.8 * (width / 64) ** 2 / 8 + 1e-9
    assert bool((gap_up <= slack + 1e-3 * width).all()) and bool(
        (gap_lo <= slack + 1e-3 * width).all()
    )


def test_convex_and_concave_parts_use_chords_and_tangents() -> None:
    relax = GeluRelaxation()
    lo = torch.tensor([-1.0, 2.0, -9.0], dtype=F64)
    up = torch.tensor([1.0, 6.0, -3.0], dtype=F64)
    lines = relax.linear(lo, up)
    f_lo, f_up = _exact(lo), _exact(up)
    chord = (f_up - f_lo) / (up - lo)
    # convex [-1, 1]: the chord above; concave: the chord below
    torch.testing.assert_close(lines.upper_slope[0], chord[0])
    torch.testing.assert_close(lines.lower_slope[1:], chord[1:])


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_derivative_interval_is_sound_and_attained(dtype: torch.dtype) -> None:
    lo, up = _intervals(600, 2)
    lo, up = lo.to(dtype), up.to(dtype)
    d_lo, d_up = GeluRelaxation().derivative_interval(lo, up)
    x = _grid(lo, up, 2001).to(F64).requires_grad_(True)
    (g,) = torch.autograd.grad(F.gelu(x).sum(), x)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert float((d_lo.to(F64)[:, None] - g).max()) <= tol
    assert float((g - d_up.to(F64)[:, None]).max()) <= tol
    if dtype == F64:  # attained up to the grid step (at most 0.02: f' is flat at +-sqrt 2)
        assert float((g.amin(1) - d_lo).max()) < 1e-4
        assert float((d_up - g.amax(1)).max()) < 1e-4


def test_gelu_is_found_by_name_everywhere() -> None:
    assert [op.name for op in by_onnx("Gelu")] == ["gelu"]
    assert "gelu" in [op.name for op in by_torch("GELU")]
    assert "gelu" in [op.name for op in by_torch("gelu")]
    assert "gelu" in [op.name for op in by_keras("gelu")]
    assert "gelu" in ACTIVATIONS
    assert get_op("gelu").interval(
        Node("gelu", ("x",), "y"), [(torch.tensor([[-1.0]]), torch.tensor([[1.0]]))]
    )[0].item() == pytest.approx(F_MIN, abs=1e-5)
    assert get_op("gelu").relaxation(Node("gelu", ("x",), "y"), DEFAULT_OPTIONS) is not None


# -- graphs and chains ---------------------------------------------------------------------------
def _pgd_inside(graph, input_set, lower: Tensor, upper: Tensor, tol: float) -> None:
    """Samples, vertices and a 20-step PGD per output and side stay inside the bounds."""
    gen = torch.Generator().manual_seed(3)
    pts = torch.cat(
        [input_set.sample(150, generator=gen), input_set.vertices(150, generator=gen)], 1
    )
    n, m = pts.shape[:2]
    with torch.no_grad():
        vals = graph(pts.reshape(n * m, *pts.shape[2:])).reshape(n, m, -1)
    o = vals.shape[-1]
    idx = torch.cat([vals.argmin(1), vals.argmax(1)], 1)
    x = pts[torch.arange(n)[:, None], idx].clone()
    sign = torch.cat([-torch.ones(o), torch.ones(o)]).to(x.dtype)
    which = torch.arange(2 * o) % o
    if isinstance(input_set, Box):
        radius = input_set.radius.unsqueeze(1)
    else:
        radius = input_set.eps.view(-1, 1, 1)
    seen = [vals]
    for t in range(20):
        x.requires_grad_(True)
        out = graph(x.reshape(n * 2 * o, -1)).reshape(n, 2 * o, -1)
        (grad,) = torch.autograd.grad((out[:, torch.arange(2 * o), which] * sign).sum(), x)
        seen.append(out.detach())
        lr = 2.5 / 20 * (0.5 * (1 + math.cos(math.pi * t / 20)) + 0.05)
        with torch.no_grad():
            if isinstance(input_set, Box) or input_set.p == math.inf:
                step = radius * grad.sign()
            else:
                step = radius * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            x = input_set.project(x + lr * step).detach()
    vals = torch.cat(seen, 1).to(F64)
    lo, up = lower.reshape(n, 1, o).to(F64), upper.reshape(n, 1, o).to(F64)
    scale = 1 + vals.abs()
    assert float(((lo - vals) / scale).max()) <= tol
    assert float(((vals - up) / scale).max()) <= tol


@pytest.mark.parametrize("kind", ["inf", "2", "box"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_dense_gelu_dense_graph_bounds_are_sound(kind: str, dtype: torch.dtype) -> None:
    net = random_network("gelu", [5, 8, 6, 3], dtype=F64)
    graph = network_to_graph(net).to(dtype=dtype)
    assert [n.op for n in graph.nodes].count("gelu") == 2
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, generator=gen, dtype=F64).to(dtype)
    if kind == "box":
        r = (torch.rand(2, 5, generator=gen, dtype=F64) * 0.6).to(dtype)
        input_set = Box.make(x - r, x + r)
    else:
        input_set = LpBall.make(x, 0.4 if kind == "inf" else 1.0, p=float(kind))
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    widths = {}
    for method in ("ibp", "crown-general"):
        b = graph_bounds(graph, input_set, method)
        _pgd_inside(graph, input_set, b.lower, b.upper, tol)
        widths[method] = float((b.upper - b.lower).sum())
    assert widths["crown-general"] < widths["ibp"]


def test_chain_network_with_gelu_bounds_are_sound() -> None:
    net = random_network("gelu", [4, 10, 10, 3], dtype=F64)
    ball = LpBall.make(torch.randn(3, 4, dtype=F64), 0.3, p=math.inf)
    for method in ("ibp", "crown-general"):
        b = bounds(net, ball, method)
        mins, maxs = pgd_extremes(net, ball, steps=20, restarts=2)
        assert bool((b.lower <= mins + 1e-10).all()) and bool((maxs <= b.upper + 1e-10).all())
