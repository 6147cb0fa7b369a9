"""alpha-CROWN: never looser than CROWN, sound under sampled / vertex / PGD probes, usable
through ``bounds`` and ``certified_radius``; split constraints and priors in the engine; the
``Box`` input set."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import check_points_within, pgd_extremes, random_network
from nnbound.bounds.alpha_crown import linear_bounds
from nnbound.bounds.api import bounds
from nnbound.bounds.methods import ALL_METHODS
from nnbound.errors import UnsupportedError
from nnbound.network.chain_graph import network_to_graph
from nnbound.sets.box import Box
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.spec import all_margins_spec
from nnbound.tasks.radius import certified_radius

F64 = torch.float64
TOL = 1e-9


def _ball(kind: str, n: int, d: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=F64)
    if kind == "box":
        lo = x - torch.rand(n, d, generator=gen, dtype=F64) * 0.5
        hi = x + torch.rand(n, d, generator=gen, dtype=F64) * 0.5
        return Box.make(lo, hi), x
    p = {"inf": math.inf, "2": 2.0, "1": 1.0}[kind]
    return LpBall.make(x, {"inf": 0.25, "2": 0.6, "1": 1.0}[kind], p), x


def _box_pgd(net, box: Box, spec: torch.Tensor, steps: int = 40) -> tuple:
    """Min and max of every spec row over each box by sign-gradient descent/ascent from the
    centre (``pgd_extremes`` steps by a scalar eps, which a box does not have)."""
    n, s = spec.shape[:2]
    sign = torch.cat([torch.ones(s), -torch.ones(s)]).to(F64)  # +1: minimise
    rows = torch.cat([spec, spec], 1)  # (N, 2S, out)
    x = box.center.unsqueeze(1).expand(n, 2 * s, -1).clone()
    width = (box.upper - box.lower).unsqueeze(1)
    for t in range(steps):
        x.requires_grad_(True)
        val = (net(x.reshape(-1, x.shape[-1])).reshape(n, 2 * s, -1) * rows).sum(-1)
        (g,) = torch.autograd.grad((val * sign).sum(), x)
        with torch.no_grad():
            x = box.project(x - 0.2 * (1 - t / steps) * width * g.sign())
    with torch.no_grad():
        val = (net(x.reshape(-1, x.shape[-1])).reshape(n, 2 * s, -1) * rows).sum(-1)
    return val[:, :s], val[:, s:]


@pytest.mark.parametrize(
    ("activation", "kind", "seed"),
    [
        ("relu", "inf", 0),
        ("relu", "2", 1),
        ("relu", "1", 2),
        ("relu", "box", 3),
        ("leaky_relu", "inf", 4),
        ("leaky_relu", "box", 5),
    ],
)
def test_never_looser_than_crown_and_sound(activation: str, kind: str, seed: int) -> None:
    net = random_network(activation, [5, 16, 16, 16, 4], seed=seed)
    ball, x = _ball(kind, 3, 5, seed)
    spec = all_margins_spec(net(x).argmax(1), 4, F64)
    crown = bounds(net, ball, "crown", spec)
    alpha = bounds(net, ball, "alpha-crown", spec)
    assert alpha.method == "alpha-crown"
    assert torch.all(alpha.lower >= crown.lower) and torch.all(alpha.upper <= crown.upper)
    assert torch.all(alpha.lower <= alpha.upper)
    # Probes: uniform samples, vertices and PGD minimisers/maximisers of every spec row.
    gen = torch.Generator().manual_seed(seed)
    points = torch.cat([ball.sample(300, generator=gen), ball.vertices(300, generator=gen)], 1)
    below, above = check_points_within(net, points, spec, alpha.lower, alpha.upper)
    assert below <= TOL and above <= TOL
    if isinstance(ball, Box):
        mins, maxs = _box_pgd(net, ball, spec)
    else:
        mins, maxs = pgd_extremes(net, ball, spec, steps=30, restarts=2, pool=64)
    assert torch.all(alpha.lower <= mins + TOL) and torch.all(maxs <= alpha.upper + TOL)
    # Intermediate bounds hold too.
    flat = points.reshape(-1, 5)
    for j, (lo, up) in alpha.intermediate.pre.items():
        pre = net.prefix(j).forward(flat).reshape(3, -1, lo.shape[1])
        assert torch.all(lo.unsqueeze(1) <= pre + TOL) and torch.all(pre <= up.unsqueeze(1) + TOL)


def test_optimisation_tightens_on_average() -> None:
    net = random_network("relu", [6, 24, 24, 24, 3], seed=11)
    ball, _ = _ball("inf", 4, 6, 11)
    crown = bounds(net, ball, "crown")
    alpha = bounds(net, ball, "alpha-crown")
    gap_crown = float((crown.upper - crown.lower).mean())
    gap_alpha = float((alpha.upper - alpha.lower).mean())
    assert gap_alpha < 0.97 * gap_crown, (gap_alpha, gap_crown)


def test_registered_and_covers_smooth_activations() -> None:
    """alpha-CROWN runs on the graph engine: a tanh network gets optimised tangent points,
    never looser than CROWN-general and sound."""
    assert "alpha-crown" in ALL_METHODS
    net = random_network("tanh", [3, 8, 2], seed=0)
    ball = LpBall.make(torch.zeros(1, 3, dtype=F64), 0.5)
    general = bounds(net, ball, "crown-general")
    alpha = bounds(net, ball, "alpha-crown")
    assert torch.all(alpha.lower >= general.lower) and torch.all(alpha.upper <= general.upper)
    y = net(ball.sample(2000, generator=torch.Generator().manual_seed(0))[0])
    assert torch.all(alpha.lower <= y.min(0).values) and torch.all(y.max(0).values <= alpha.upper)


def test_certified_radius_with_alpha_crown() -> None:
    net = random_network("relu", [4, 16, 16, 3], seed=7)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(7), dtype=F64)
    labels = net(x).argmax(1)
    targets = torch.full_like(labels, -1)
    r_crown = certified_radius(net, x, labels, targets, method="crown", steps=10)
    r_alpha = certified_radius(net, x, labels, targets, method="alpha-crown", steps=10)
    assert torch.all(r_alpha >= r_crown * (1 - 1e-6))
    # Every radius is certified: the bound at it proves every margin positive.
    spec = all_margins_spec(labels, 3, F64)
    ok = r_alpha > 0
    b = bounds(net, LpBall.make(x[ok], r_alpha[ok]), "alpha-crown", spec[ok])
    assert torch.all(b.lower > 0)


def test_box_of_equal_radii_matches_the_inf_ball() -> None:
    net = random_network("relu", [5, 12, 12, 3], seed=2)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    ball = LpBall.make(x, 0.2)
    box = Box.make(x - 0.2, x + 0.2)
    for method in ("ibp", "crown", "fastlin", "crown-general"):
        a, b = bounds(net, ball, method), bounds(net, box, method)
        assert torch.allclose(a.lower, b.lower, atol=1e-12) and torch.allclose(a.upper, b.upper)
    for method in ("spectral", "quad"):
        with pytest.raises(UnsupportedError, match="Lp ball"):
            bounds(net, box, method)


def test_box_geometry() -> None:
    lo = torch.tensor([[0.0, -1.0], [2.0, 2.0]], dtype=F64)
    hi = torch.tensor([[1.0, 1.0], [2.0, 3.0]], dtype=F64)
    box = Box.make(lo, hi)
    gen = torch.Generator().manual_seed(0)
    s, v = box.sample(50, generator=gen), box.vertices(50, generator=gen)
    assert s.shape == (2, 50, 2) and bool(box.contains(s).all()) and bool(box.contains(v).all())
    assert bool(((v == lo.unsqueeze(1)) | (v == hi.unsqueeze(1))).all())
    far = torch.tensor([[5.0, -5.0], [0.0, 2.5]], dtype=F64)
    assert torch.equal(box.project(far), torch.tensor([[1.0, -1.0], [2.0, 2.5]], dtype=F64))
    assert box.contains(far).tolist() == [False, False]
    a = torch.tensor([[[1.0, -2.0]], [[0.5, 1.0]]], dtype=F64)
    low, up = box.concretize(a)
    assert low.flatten().tolist() == [-2.0, 3.0] and up.flatten().tolist() == [3.0, 4.0]
    assert box.rows(torch.tensor([1])).lower.tolist() == [[2.0, 2.0]]
    with pytest.raises(Exception, match="lower > upper"):
        Box.make(hi, lo)


def test_split_phases_are_sound_on_their_sub_domain() -> None:
    """With a neuron fixed active (or inactive), the bounds hold at every sampled input whose
    neuron has that phase, and are at least as tight as without the split."""
    net = random_network("relu", [4, 10, 10, 2], seed=9)
    graph = network_to_graph(net)
    box = Box.make(-torch.ones(1, 4, dtype=F64), torch.ones(1, 4, dtype=F64))
    spec = torch.eye(2, dtype=F64).unsqueeze(0)
    free = linear_bounds(graph, box, spec)
    j = 1  # the first activation layer
    name = graph.nodes[j].inputs[0]  # its input tensor
    lo, up = free.pre[name]
    unstable = torch.nonzero((lo[0] < 0) & (up[0] > 0)).squeeze(1)
    assert unstable.numel() > 0
    k = int(unstable[0])
    x = box.sample(20000, generator=torch.Generator().manual_seed(0))[0]
    z = net.prefix(j).forward(x)[:, k]
    y = net(x)
    for phase in (1, -1):
        s = torch.zeros(1, 10, dtype=torch.int8)
        s[0, k] = phase
        res = linear_bounds(graph, box, spec, splits={name: s}, prior=free.pre, steps=25)
        keep = z >= 0 if phase > 0 else z <= 0
        assert not bool(res.empty.any())
        assert torch.all(res.lower[0] <= y[keep].min(0).values + TOL)
        assert torch.all(res.lower >= free.lower - TOL)
    # A phase that contradicts the bounds proves the sub-domain empty.
    stable_neg = torch.nonzero(up[0] < -1e-3).squeeze(1)
    if stable_neg.numel():
        s = torch.zeros(1, 10, dtype=torch.int8)
        s[0, int(stable_neg[0])] = 1
        assert bool(linear_bounds(graph, box, spec, splits={name: s}).empty.all())
