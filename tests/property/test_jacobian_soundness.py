"""Soundness of Jacobian bounds and Lipschitz constants: the true Jacobian (autograd) at many
points of each ball -- uniform samples, vertices, the arg-extremes of a PGD attack on the outputs
and points pushed by a few gradient steps toward each Jacobian entry's bounds -- lies inside the
element-wise bounds, for every activation, norm, RecurJac direction / shift and Fast-Lip; the
local Lipschitz constant is never below a sampled gradient norm or difference quotient; and a
Jacobian-certified radius never contains a margin flip a PGD attack can find."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.func import jacrev, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import ALL_ACTIVATIONS, NORMS, PIECEWISE_LINEAR, pgd_extremes, random_network
from nnbound.jacobian import jacobian_bounds, lipschitz_from_jacobian
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import dual_norm, lp_norm
from nnbound.tasks.jacobian_radius import jacobian_certified_radius

VARIANTS = (("recurjac", -1, 0), ("recurjac", 1, 0), ("recurjac", 1, 1), ("fastlip", -1, 0))
RADIUS = {math.inf: 0.25, 2.0: 0.6, 1.0: 1.0}
TOL = 1e-9


def _spec_fn(net: Network, C: torch.Tensor):
    def f(x: torch.Tensor) -> torch.Tensor:
        return C @ net(x.unsqueeze(0)).reshape(-1)

    return f


def jacobian_extreme_points(
    net: Network, ball: LpBall, C: torch.Tensor, start: torch.Tensor, steps: int = 6
) -> torch.Tensor:
    """Points ``(N, 2 S d, d)`` reached by projected ascent on each Jacobian entry, up and down,
    from the best of ``start`` ``(N, M, d)`` for that entry (flat inputs)."""
    f = _spec_fn(net, C)
    jac = vmap(vmap(jacrev(f)))  # (N, M, d) -> (N, M, S, d)
    hess = vmap(vmap(jacrev(jacrev(f))))  # -> (N, M, S, d, d)
    n, _, d = start.shape
    s = C.shape[0]
    with torch.no_grad():
        values = jac(start).reshape(n, start.shape[1], s * d)
    sign = torch.cat([torch.ones(s * d), -torch.ones(s * d)]).to(start.dtype)  # up, then down
    best = torch.cat([values.argmax(1), values.argmin(1)], 1)  # (N, 2 S d)
    x = start.gather(1, best.unsqueeze(-1).expand(-1, -1, d)).clone()
    entry = torch.arange(2 * s * d) % (s * d)
    eps = ball.eps.view(-1, 1, 1)
    for t in range(steps):
        h = hess(x).reshape(n, 2 * s * d, s * d, d)
        g = h[:, torch.arange(2 * s * d), entry] * sign.view(1, -1, 1)  # (N, 2Sd, d)
        if ball.p == math.inf:
            step = g.sign()
        elif ball.p == 2.0:
            step = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        else:
            step = torch.zeros_like(g).scatter_(-1, g.abs().argmax(-1, keepdim=True), 1.0)
            step = step * g.sign()
        x = ball.project(x + eps * step * (0.5 / (1 + t)))
    return x


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_true_jacobian_inside_bounds_and_lipschitz_above_samples(activation: str, p: float) -> None:
    seed = ALL_ACTIVATIONS.index(activation) * 10 + NORMS.index(p)
    net = random_network(activation, [4, 6, 6, 3], seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, generator=gen, dtype=torch.float64) * 0.5
    C = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    ball = LpBall.make(x, RADIUS[p], p)
    pts = [ball.sample(96, generator=gen), ball.vertices(48, generator=gen)]
    _, _, pmin, pmax = pgd_extremes(net, ball, C, steps=20, restarts=2, pool=64, return_points=True)
    pts += [pmin, pmax]
    pts.append(jacobian_extreme_points(net, ball, C, torch.cat(pts, 1)))
    pts = torch.cat(pts, 1)  # (N, M, 4)
    f = _spec_fn(net, C)
    true = vmap(vmap(jacrev(f)))(pts)  # (N, M, S, 4)
    q = dual_norm(p)
    grad_norms = torch.linalg.vector_norm(true, q, dim=-1).amax(1)  # (N, S)
    with torch.no_grad():
        out = vmap(vmap(f))(pts)  # (N, M, S)
    perm = torch.randperm(pts.shape[1], generator=gen)
    dist = lp_norm(pts - pts[:, perm], p, 1).unsqueeze(-1)  # (N, M, 1)
    quotients = ((out - out[:, perm]).abs() / dist.clamp_min(1e-12)).amax(1)  # (N, S)
    for method, direction, shift in VARIANTS:
        if method == "fastlip" and activation not in PIECEWISE_LINEAR:
            continue
        jb = jacobian_bounds(net, ball, C, method, "crown-general", direction, shift)
        lo, up = jb.lower.unsqueeze(1), jb.upper.unsqueeze(1)
        scale = 1 + torch.maximum(lo.abs(), up.abs())
        assert bool((true >= lo - TOL * scale).all()), (method, direction, shift, "lower")
        assert bool((true <= up + TOL * scale).all()), (method, direction, shift, "upper")
        lip = lipschitz_from_jacobian(jb, p)
        assert bool((lip >= grad_norms * (1 - 1e-9)).all()), (method, direction, shift)
        assert bool((lip >= quotients * (1 - 1e-9)).all()), (method, direction, shift)


@pytest.mark.parametrize("layer_method", ["ibp", "fastlin", "crown-adaptive", "crown-interval"])
def test_sound_with_every_relu_layer_method(layer_method: str) -> None:
    net = random_network("relu", [5, 8, 8, 8, 2], seed=4)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    ball = LpBall.make(x, 0.15, math.inf)
    pts = torch.cat([ball.sample(128, generator=gen), ball.vertices(128, generator=gen)], 1)
    C = torch.eye(2, dtype=torch.float64)
    true = vmap(vmap(jacrev(_spec_fn(net, C))))(pts)
    for method in ("recurjac", "fastlip"):
        jb = jacobian_bounds(net, ball, C, method, layer_method)
        assert bool((true >= jb.lower.unsqueeze(1) - TOL).all())
        assert bool((true <= jb.upper.unsqueeze(1) + TOL).all())


@pytest.mark.parametrize(
    ("activation", "p"), [("relu", math.inf), ("tanh", 2.0), ("leaky_relu", 1.0)]
)
def test_jacobian_radius_has_no_margin_flip_inside(activation: str, p: float) -> None:
    net = random_network(activation, [5, 10, 10, 4], seed=9)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        logits = net(x)
    labels = logits.argmax(1)
    targets = logits.argsort(1)[:, -2]  # the runner-up: the closest margin
    radius = jacobian_certified_radius(
        net, x, labels, targets, norm=p, lipsteps=8, eps0=0.01, steps=12
    )
    assert bool((radius > 0).all())
    C = torch.zeros(4, 1, 4, dtype=torch.float64)
    C[torch.arange(4), 0, labels] = 1.0
    C[torch.arange(4), 0, targets] = -1.0
    ball = LpBall.make(x, radius, p)
    mins, _ = pgd_extremes(net, ball, C, steps=40, restarts=3)
    assert bool((mins >= -1e-9).all())
    # ... and an attack just beyond a few times the radius usually does flip one: the radius is
    # a lower bound, not a vacuous one.
    mins_far, _ = pgd_extremes(net, LpBall.make(x, radius * 20, p), C, steps=40, restarts=3)
    assert bool((mins_far < 0).any())
