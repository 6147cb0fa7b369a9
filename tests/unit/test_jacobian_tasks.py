"""The Jacobian tasks' building blocks: eps grids, saturation, image selection, the
Lipschitz curve, R_max and the Jacobian-certified radius (small random networks)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import random_network
from nnbound.errors import InputError
from nnbound.jacobian import jacobian_bounds
from nnbound.sets.lp_ball import LpBall
from nnbound.tasks.jacobian_radius import jacobian_certified_radius
from nnbound.tasks.landscape import landscape, max_sign_radius
from nnbound.tasks.lipschitz import (
    class_spec,
    eps_grid,
    lipschitz_curve,
    opnorm_factors,
    saturation_index,
    select_images,
)
from nnbound.tasks.radius import certified_radius


def test_eps_grids_follow_the_reference() -> None:
    assert eps_grid(0.1, 4).tolist() == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    g = eps_grid(0.005, 20, -3, 0)
    assert len(g) == 21 and g[0] == 0 and g[1] == pytest.approx(1e-3) and g[-1] == 1.0
    assert g[9] == pytest.approx(0.01833, abs=1e-5)  # the README's grid
    with pytest.raises(InputError):
        eps_grid(0.1, 0)


def test_saturation_index() -> None:
    assert saturation_index(torch.tensor([1.0, 2.0, 3.0, 3.0, 3.0])) == 2
    assert saturation_index(torch.tensor([1.0, 2.0, 3.0])) is None
    assert saturation_index(torch.tensor([5.0, 5.0])) == 0


def test_select_images_by_class_includes_class_zero() -> None:
    logits = torch.eye(3)[torch.tensor([0, 1, 0, 2, 0])]
    labels = torch.tensor([0, 1, 1, 2, 0])  # row 2 is misclassified
    ch = select_images(logits, labels, "0", num_images=10, seed=1)
    assert ch.rows.tolist() == [0, 4] and ch.classes.tolist() == [0, 0] and ch.forced
    ch = select_images(logits, labels, "least", num_images=3, seed=1)
    assert ch.rows.tolist() == [0, 1, 3] and not ch.forced
    with pytest.raises(InputError):
        select_images(logits, labels, "7", num_images=1, seed=1)


def test_lipschitz_curve_starts_at_the_gradient_norm() -> None:
    net = random_network("relu", [6, 12, 12, 3], seed=1)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    classes = torch.tensor([0, 1, 2])
    grid = torch.tensor([0.0, 0.01, 0.1, 1.0, 100.0, 1000.0], dtype=torch.float64)
    curve = lipschitz_curve(net, x, classes, grid, norm="inf")
    assert curve.values.shape == (3, 6) and curve.unsure.shape == (3, 6)
    assert bool(curve.eps_zero_matches(1e-10).all())
    assert torch.allclose(curve.values[:, 0], curve.grad_norm, rtol=1e-12)
    # Huge balls: every ReLU unstable, the value is a global bound below the opnorm product.
    assert curve.global_bound[:, -1].all() and not curve.global_bound[:, 0].any()
    assert torch.allclose(curve.values[:, -1], curve.values[:, -2])
    assert bool((curve.values[:, -1] <= curve.opnorm + 1e-9).all())


@pytest.mark.parametrize("p", [math.inf, 2.0])
def test_landscape_radius_satisfies_its_condition(p: float) -> None:
    net = random_network("leaky_relu", [5, 10, 10, 3], seed=2)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    classes = net(x).argmax(1)
    r_max, curve = landscape(net, x, classes, norm=p, eps0=0.1, lipsteps=2)
    assert bool((r_max > 0).all())
    spec = class_spec(classes, 3, torch.float64)
    jb = jacobian_bounds(net, LpBall.make(x, r_max, p), spec)
    assert bool((jb.unsure[:, 0] < 5).all())  # some entry has a certain sign at R_max
    assert torch.allclose(curve.eps[:, -1], r_max)
    assert curve.values.shape == (3, 3)
    # float32 network: the radius is confirmed in float64.
    r32 = max_sign_radius(net.to(dtype=torch.float32), x.float(), classes, norm=p, eps0=0.1)
    jb64 = jacobian_bounds(net, LpBall.make(x, r32, p), spec)
    assert bool((jb64.unsure[:, 0] < 5).all())


def test_jacobian_radius_float32_is_confirmed_in_float64() -> None:
    net = random_network("relu", [5, 10, 10, 4], seed=3)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = net(x).argmax(1)
    targets = torch.full((4,), -1)
    kw = {"norm": "inf", "lipsteps": 6, "eps0": 0.01, "steps": 10}
    r64 = jacobian_certified_radius(net, x, labels, targets, **kw)
    r32 = jacobian_certified_radius(net.to(dtype=torch.float32), x.float(), labels, targets, **kw)
    assert bool((r64 > 0).all())
    assert torch.allclose(r32, r64, rtol=1e-3)
    # Same order of magnitude as CROWN's own radius (not vacuous, not absurd), and Fast-Lip's
    # looser Jacobian bounds certify less on average.
    crown = certified_radius(net, x, labels, targets, norm="inf", eps0=0.01, steps=10)
    assert bool((r64 < 10 * crown + 1e-6).all())
    fl = jacobian_certified_radius(net, x, labels, targets, method="fastlip", **kw)
    assert float(fl.mean()) <= float(r64.mean()) + 1e-9


def test_jacobian_radius_bad_arguments() -> None:
    net = random_network("relu", [3, 4, 2], seed=0)
    x = torch.zeros(1, 3, dtype=torch.float64)
    one = torch.tensor([0])
    with pytest.raises(InputError, match="lipsteps"):
        jacobian_certified_radius(net, x, one, torch.tensor([1]), lipsteps=0)
    with pytest.raises(InputError, match="eps"):
        jacobian_certified_radius(net, x, one, torch.tensor([1]), eps0=0.0)


def test_curve_with_kept_operator_norm_factors_is_the_same() -> None:
    """``opnorm=`` (factors built once by a caller) gives the curve built without it, and
    factors of another norm are refused."""
    net = random_network("relu", [6, 12, 8, 4], seed=3)
    x = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    classes = torch.tensor([0, 2, 3])
    grid = torch.tensor([0.0, 0.01, 0.1], dtype=torch.float64)
    for norm in ("inf", "2", "1"):
        plain = lipschitz_curve(net, x, classes, grid, norm=norm)
        kept = lipschitz_curve(net, x, classes, grid, norm=norm, opnorm=opnorm_factors(net, norm))
        torch.testing.assert_close(kept.opnorm, plain.opnorm, rtol=1e-12, atol=0)
        torch.testing.assert_close(kept.values, plain.values, rtol=0, atol=0)
    with pytest.raises(InputError, match="factors of the L2 norm used for the Linf norm"):
        lipschitz_curve(net, x, classes, grid, norm="inf", opnorm=opnorm_factors(net, "2"))
