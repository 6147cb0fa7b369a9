"""Jacobian bounds (Fast-Lip, RecurJac) and local Lipschitz constants: exact cases, shapes,
options, and the comparisons the papers make (float64 throughout)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.func import jacrev, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nnbound
from helpers import ALL_ACTIVATIONS, NORMS, PIECEWISE_LINEAR, random_network
from nnbound.errors import InputError, UnsupportedError
from nnbound.jacobian import (
    gradient_dual_norm,
    jacobian_bounds,
    lipschitz_bounds,
    local_lipschitz,
    opnorm_global_lipschitz,
)
from nnbound.network.layers import Activation, Conv2d, Dense, Flatten, Normalize
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall

VARIANTS = (("recurjac", -1, 0), ("recurjac", 1, 0), ("recurjac", 1, 1), ("fastlip", -1, 0))


def exact_jacobian(net: Network, x: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """``(M, S, *input_shape)`` Jacobians of ``C f`` at ``x`` ``(M, *input_shape)``."""

    def f(xx):
        return C @ net(xx.unsqueeze(0)).reshape(-1)

    return vmap(jacrev(f))(x)


def hand_net() -> Network:
    # z1 = x1 + x2 + 2 (in [1, 3] on the unit-half box: active), z2 = x1 - x2 (in [-1, 1]:
    # unstable), output 2 relu(z1) - 3 relu(z2).
    w0 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    b0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    w1 = torch.tensor([[2.0, -3.0]], dtype=torch.float64)
    layers = (Dense(w0, b0), Activation("relu"), Dense(w1, torch.zeros(1, dtype=torch.float64)))
    return Network(layers, (2,))


@pytest.mark.parametrize(("method", "direction", "shift"), VARIANTS)
def test_hand_derived_one_hidden_layer(method: str, direction: int, shift: int) -> None:
    # J = 2 [1, 1] - 3 g [1, -1] with g in [0, 1]: J1 in [-1, 2], J2 in [2, 5].
    net = hand_net()
    ball = LpBall.make(torch.zeros(1, 2, dtype=torch.float64), 0.5, math.inf)
    jb = jacobian_bounds(net, ball, None, method, "crown-general", direction, shift)
    assert jb.lower.shape == (1, 1, 2)
    assert torch.allclose(jb.lower[0, 0], torch.tensor([-1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(jb.upper[0, 0], torch.tensor([2.0, 5.0], dtype=torch.float64))
    assert jb.unsure.tolist() == [[1]]
    # Dual norms of M = max(|L|, |U|) = [2, 5]: q = 1 -> 7, q = 2 -> sqrt(29), q = inf -> 5.
    for p, expected in ((math.inf, 7.0), (2.0, math.sqrt(29.0)), (1.0, 5.0)):
        b = LpBall.make(torch.zeros(1, 2, dtype=torch.float64), 0.5, p)
        lip = local_lipschitz(net, b, None, method, "crown-general", direction, shift)
        # The L1 / L2 balls of radius 0.5 keep z1 > 0 and z2 in [-0.5 sqrt(2), ...]: same g.
        assert lip.item() == pytest.approx(expected, rel=1e-12)


def test_linf_refinement_merges_sure_entries() -> None:
    # Two hidden ReLUs feeding one output through an unstable third: entries of known sign are
    # bounded jointly, which beats the plain sum (and never exceeds it).
    net = random_network("relu", [6, 10, 10, 1], seed=3)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ball = LpBall.make(x, 0.05, math.inf)
    refined = local_lipschitz(net, ball)
    plain = local_lipschitz(net, ball, refine=False)
    assert bool((refined <= plain + 1e-12).all())
    assert bool((refined < plain - 1e-9).any())


@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
@pytest.mark.parametrize(("method", "direction", "shift"), VARIANTS)
def test_eps_zero_is_the_exact_jacobian(
    activation: str, method: str, direction: int, shift: int
) -> None:
    if method == "fastlip" and activation not in PIECEWISE_LINEAR:
        pytest.skip("fastlip is ReLU-only")
    net = random_network(activation, [5, 7, 6, 3], seed=11)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    C = torch.randn(2, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = exact_jacobian(net, x, C)
    ball = LpBall.make(x, 0.0, math.inf)
    jb = jacobian_bounds(net, ball, C, method, "crown-general", direction, shift)
    assert torch.allclose(jb.lower, exact, atol=1e-12) and torch.allclose(
        jb.upper, exact, atol=1e-12
    )
    # A tiny ball: bounds within O(eps) of the exact Jacobian.
    tiny = jacobian_bounds(
        net, LpBall.make(x, 1e-7, 2.0), C, method, "crown-general", direction, shift
    )
    assert (tiny.upper - tiny.lower).abs().max() < 1e-4
    assert torch.allclose(tiny.lower, exact, atol=1e-4)
    for p in NORMS:
        lip = local_lipschitz(
            net, LpBall.make(x, 0.0, p), C, method, "crown-general", direction, shift
        )
        assert torch.allclose(lip, gradient_dual_norm(net, x, C.expand(3, -1, -1), p), rtol=1e-10)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p", NORMS)
def test_recurjac_is_tighter_than_fastlip_on_average(seed: int, p: float) -> None:
    net = random_network("relu", [8, 16, 16, 16, 4], seed=seed)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ball = LpBall.make(x, 0.1, p)
    rj = jacobian_bounds(net, ball, None, "recurjac")
    fl = jacobian_bounds(net, ball, None, "fastlip")
    assert (rj.upper - rj.lower).mean() <= (fl.upper - fl.lower).mean() + 1e-12
    assert local_lipschitz(net, ball, None, "recurjac").mean() <= (
        local_lipschitz(net, ball, None, "fastlip").mean() + 1e-12
    )
    # Both use the same derivative intervals, so the last two layers agree exactly; with
    # several hidden layers RecurJac is strictly tighter somewhere.
    assert bool(((rj.upper - rj.lower) < (fl.upper - fl.lower) - 1e-9).any())


def test_shapes_batch_radii_and_default_spec() -> None:
    net = random_network("tanh", [4, 6, 5], seed=0)
    x = torch.randn(2, 4, dtype=torch.float64)
    ball = LpBall.make(x, torch.tensor([[0.0, 0.1, 0.2], [0.05, 0.1, 0.3]]), 2.0)
    jb = jacobian_bounds(net, ball)
    assert jb.lower.shape == (2, 3, 5, 4) and jb.upper.shape == (2, 3, 5, 4)
    assert jb.unsure.shape == (2, 3, 5) and jb.global_bound.shape == (2, 3)
    lip = local_lipschitz(net, ball)
    assert lip.shape == (2, 3, 5)
    # Larger balls never give smaller constants here (nested balls, same method).
    assert bool((lip[:, 1:] >= lip[:, :-1] - 1e-12).all())
    res = lipschitz_bounds(net, ball, torch.eye(5, dtype=torch.float64)[:2])
    assert res.value.shape == (2, 3, 2) and res.jacobian.method == "recurjac"


def test_public_api_exports() -> None:
    assert nnbound.jacobian_bounds is jacobian_bounds
    assert nnbound.local_lipschitz is local_lipschitz
    assert {"jacobian_bounds", "local_lipschitz"} <= set(nnbound.__all__)


def test_image_network_with_normalize_flatten_and_conv() -> None:
    gen = torch.Generator().manual_seed(5)
    dt = torch.float64

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dt)

    conv = Conv2d(randn(2, 1, 3, 3) * 0.5, torch.zeros(2, dtype=dt))
    layers = (
        Normalize(torch.tensor(0.1, dtype=dt), torch.tensor(0.5, dtype=dt)),
        conv,
        Activation("relu"),
        Flatten(),
        Dense(
            torch.randn(6, 8, generator=gen, dtype=dt) * 0.4,
            torch.randn(6, generator=gen, dtype=dt),
        ),
        Activation("sigmoid"),
        Dense(torch.randn(3, 6, generator=gen, dtype=dt), torch.zeros(3, dtype=dt)),
    )
    net = Network(layers, (1, 4, 4))
    x = torch.rand(2, 1, 4, 4, generator=gen, dtype=dt)
    ball = LpBall.make(x, 0.05, math.inf)
    jb = jacobian_bounds(net, ball)
    assert jb.lower.shape == (2, 3, 1, 4, 4)
    pts = ball.sample(64, generator=gen)
    for b in range(2):
        jac = exact_jacobian(net, pts[b], torch.eye(3, dtype=dt))
        assert bool((jac >= jb.lower[b] - 1e-10).all() and (jac <= jb.upper[b] + 1e-10).all())


def test_network_without_activation_is_exact() -> None:
    w = torch.randn(3, 4, dtype=torch.float64)
    net = Network((Dense(w, torch.zeros(3, dtype=torch.float64)),), (4,))
    ball = LpBall.make(torch.zeros(2, 4, dtype=torch.float64), 1.0, 2.0)
    jb = jacobian_bounds(net, ball)
    assert torch.equal(jb.lower[0], w) and torch.equal(jb.upper[1], w)
    assert torch.allclose(local_lipschitz(net, ball)[0], w.norm(dim=1))


def test_float32_and_global_flag() -> None:
    net = random_network("relu", [4, 8, 8, 3], seed=2, dtype=torch.float32)
    x = torch.zeros(1, 4)
    huge = jacobian_bounds(net, LpBall.make(x, 1e4, math.inf), None, "fastlip")
    small = jacobian_bounds(net, LpBall.make(x, 1e-3, math.inf), None, "fastlip")
    assert huge.lower.dtype == torch.float32
    assert huge.global_bound.tolist() == [True] and small.global_bound.tolist() == [False]
    # Every neuron unstable: the bound is global, so it dominates the Jacobian anywhere.
    far = torch.randn(64, 4) * 50
    jac = exact_jacobian(
        net.to(dtype=torch.float64), far.double(), torch.eye(3, dtype=torch.float64)
    )
    assert bool((jac >= huge.lower[0].double() - 1e-4).all())
    assert bool((jac <= huge.upper[0].double() + 1e-4).all())


def test_opnorm_global_is_above_saturated_local() -> None:
    net = random_network("relu", [6, 12, 12, 4], seed=7)
    x = torch.zeros(1, 6, dtype=torch.float64)
    C = torch.eye(4, dtype=torch.float64)[1:2]
    sat = local_lipschitz(net, LpBall.make(x, 1e5, math.inf), C)
    assert float(sat) <= float(opnorm_global_lipschitz(net, C, math.inf)) + 1e-9


def test_bad_options() -> None:
    net = random_network("tanh", [3, 4, 2], seed=0)
    ball = LpBall.make(torch.zeros(1, 3, dtype=torch.float64), 0.1, 2.0)
    with pytest.raises(UnsupportedError, match="fastlip"):
        jacobian_bounds(net, ball, None, "fastlip")
    with pytest.raises(InputError, match="Jacobian method"):
        jacobian_bounds(net, ball, None, "recurjac2")
    with pytest.raises(InputError, match="layer-wise"):
        jacobian_bounds(net, ball, None, "recurjac", "spectral")
    with pytest.raises(InputError, match="direction"):
        jacobian_bounds(net, ball, None, "recurjac", "crown-general", 0)
    with pytest.raises(InputError, match="shift"):
        jacobian_bounds(net, ball, None, "recurjac", "crown-general", 1, 2)
    with pytest.raises(UnsupportedError, match="ReLU"):
        jacobian_bounds(net, ball, None, "recurjac", "crown-adaptive")
