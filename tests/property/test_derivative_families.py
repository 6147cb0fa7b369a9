"""The free-parameter families of the derivative relaxations and of the gradient products
(alpha-optimised ``crown-jacobian``): every parameter in ``[0, 1]`` gives lines / planes that
sandwich the function on its box, checked at random parameters (and the ends) against
sampled points, float32 and float64; the default parameters give the default lines."""

from __future__ import annotations

import pytest
import torch

from nnbound.network.graph import Node
from nnbound.ops.gradient_product import _mixed_planes, default_mix
from nnbound.ops.registry import DEFAULT_OPTIONS, get_op

FAMILIES = ("relu", "leaky_relu", "tanh", "sigmoid", "arctan", "softplus", "gelu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", FAMILIES)
def test_derivative_family_sandwiches_the_derivative(activation: str, dtype: torch.dtype) -> None:
    alpha = 0.3 if activation == "leaky_relu" else 0.0
    node = Node("derivative", ("z",), "d", {}, {"of": activation, "alpha": alpha})
    op = get_op("derivative")
    gen = torch.Generator().manual_seed(FAMILIES.index(activation))
    c = torch.randn(300, generator=gen, dtype=torch.float64) * 3
    w = torch.rand(300, generator=gen, dtype=torch.float64) ** 3 * 6
    w[:10] = 0.0
    c[10:30] = 0.0
    l, u = (c - w).to(dtype), (c + w).to(dtype)
    rel = op.relaxation(node, DEFAULT_OPTIONS)
    fam = rel.parametric(l, u)
    free = fam.free_lower if fam.free_lower is not None else fam.free_upper
    assert free is not None and bool(free.any())
    base = rel.linear(l, u)
    default = fam.make(
        None if fam.default_lower is None else fam.default_lower.unsqueeze(1),
        None if fam.default_upper is None else fam.default_upper.unsqueeze(1),
    )
    for got, want in zip(
        (default.lower_slope, default.upper_slope, default.lower_bias, default.upper_bias),
        (base.lower_slope, base.upper_slope, base.lower_bias, base.upper_bias),
        strict=True,
    ):
        assert torch.allclose(got[:, 0].double(), want.double(), rtol=1e-5, atol=1e-5)
    theta = torch.rand(300, 5, generator=gen, dtype=torch.float64)
    theta[:, 0], theta[:, 1] = 0.0, 1.0
    lines = fam.make(theta.to(dtype), theta.flip(1).to(dtype))
    t = torch.rand(300, 1, 64, generator=gen, dtype=torch.float64)
    z = l.double()[:, None, None] + (u - l).double()[:, None, None] * t
    z = torch.cat([z, l.double()[:, None, None].expand(-1, 1, 1)], -1)
    z = torch.cat([z, u.double()[:, None, None].expand(-1, 1, 1)], -1)
    dz = op.forward(node, z)
    if activation in ("relu", "leaky_relu"):  # the one-sided value 1 at the kink too
        dz = torch.cat([dz, torch.where(z == 0, torch.ones_like(dz), dz)], -1)
        z = torch.cat([z, z], -1)
    ls, lb, us, ub = (
        v.double()[..., None]
        for v in (lines.lower_slope, lines.lower_bias, lines.upper_slope, lines.upper_bias)
    )
    assert bool((ls * z + lb <= dz).all())
    assert bool((us * z + ub >= dz).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d_interval", [False, True])
def test_mixed_product_planes_hold_on_the_box(d_interval: bool, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(int(d_interval))
    n = 200
    dl = torch.randn(1, n, generator=gen, dtype=torch.float64)
    du = dl + torch.rand(1, n, generator=gen, dtype=torch.float64) * 2
    hl = torch.randn(1, n, generator=gen, dtype=torch.float64) * 3
    hu = hl + torch.rand(1, n, generator=gen, dtype=torch.float64) * 5
    bounds = [(dl.to(dtype), du.to(dtype)), (hl.to(dtype), hu.to(dtype))]
    lo0, up0 = default_mix(d_interval, bounds)
    assert bool(((lo0 >= 0) & (lo0 <= 1) & (up0 >= 0) & (up0 <= 1)).all())
    theta = torch.rand(1, 4, n, generator=gen, dtype=torch.float64)
    theta[:, 0], theta[:, 1] = 0.0, 1.0
    planes = _mixed_planes(d_interval, bounds, theta.to(dtype), theta.flip(1).to(dtype))
    s = torch.rand(2, 1, 1, n, 128, generator=gen, dtype=torch.float64)
    s[:, ..., :4] = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)  # corners
    s[1, ..., :4] = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    lo_d, lo_h = (bounds[k][0].double()[:, None, :, None] for k in (0, 1))
    up_d, up_h = (bounds[k][1].double()[:, None, :, None] for k in (0, 1))
    d = lo_d + (up_d - lo_d) * s[0]
    h = lo_h + (up_h - lo_h) * s[1]
    ax_l, ay_l, c_l, ax_u, ay_u, c_u = (
        v.double()[..., None]
        for v in (planes.ax_l, planes.ay_l, planes.c_l, planes.ax_u, planes.ay_u, planes.c_u)
    )
    prod = d * h
    assert bool((ax_l * d + ay_l * h + c_l <= prod).all())
    assert bool((ax_u * d + ay_u * h + c_u >= prod).all())
