"""The ``landscape`` task (spec §9.3): the largest radius R_max within which some entry of the
Jacobian of the predicted logit has a certain sign -- so the ball contains no stationary point.

``R_max`` is found by the reference's binary search (start ``--eps``, the reference's 100
evaluations, upper limits 100 / 10 / 1 for p = 1 / 2 / inf) with the condition "the number of
Jacobian entries of unknown sign is below the input size", batched over inputs; a float32
result is re-checked in float64 like every certified radius. Then the local Lipschitz constants
at ``linspace(0, R_max, lipsteps + 1)`` (the last one is ``lipschitz_max``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nnbound.bounds.spectral import SpectralFactors
from nnbound.jacobian.alpha_jacobian import NO_ALPHA, JacobianAlpha
from nnbound.jacobian.api import check_options, jacobian_bounds
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import parse_norm
from nnbound.tasks.lipschitz import LipschitzCurve, class_spec, lipschitz_curve
from nnbound.tasks.search import batched_binary_search, recheck

UPPER_LIMITS = {1.0: 100.0, 2.0: 10.0, math.inf: 1.0}
MAX_STEPS = 100


def _sign_condition(net: Network, x: Tensor, spec: Tensor, p: float, options: dict):
    n_inputs = net.num_inputs

    def condition(rows: Tensor, eps: Tensor) -> Tensor:
        rows = rows.to(x.device)
        ball = LpBall.make(x[rows], eps.to(device=x.device, dtype=x.dtype), p)
        with torch.no_grad():
            jac = jacobian_bounds(net, ball, spec[rows], **options)
        return (jac.unsure.amax(-1) < n_inputs).cpu()

    return condition


def max_sign_radius(
    net: Network,
    x: Tensor,
    classes: Tensor,
    *,
    norm: float | str = "inf",
    method: str = "recurjac",
    layer_method: str = "crown-general",
    direction: int = -1,
    shift: int = 0,
    eps0: float = 0.005,
    verify_float64: bool = True,
) -> Tensor:
    """R_max per input ``(B,)`` float64 (see the module docstring)."""
    method = check_options(method, layer_method, direction, shift)
    p = parse_norm(norm)
    x = net.check_input(x)
    spec = class_spec(classes.to(x.device), net.num_outputs, net.dtype)
    options = {
        "method": method,
        "layer_method": layer_method,
        "direction": direction,
        "shift": shift,
    }
    cond = _sign_condition(net, x, spec, p, options)
    radius = batched_binary_search(
        cond, x.shape[0], eps0, max_steps=MAX_STEPS, upper_limit=UPPER_LIMITS[p]
    )
    if verify_float64 and net.dtype != torch.float64:
        cond64 = _sign_condition(
            net.to(dtype=torch.float64), x.to(torch.float64), spec.to(torch.float64), p, options
        )
        radius = recheck(cond64, radius, 30)
    return radius


def landscape(
    net: Network,
    x: Tensor,
    classes: Tensor,
    *,
    norm: float | str = "inf",
    method: str = "recurjac",
    layer_method: str = "crown-general",
    direction: int = -1,
    shift: int = 0,
    eps0: float = 0.005,
    lipsteps: int = 15,
    alpha: JacobianAlpha = NO_ALPHA,
    opnorm: SpectralFactors | None = None,
) -> tuple[Tensor, LipschitzCurve]:
    """``(R_max (B,), curve)``: the curve's grid is ``linspace(0, R_max_b, lipsteps + 1)``
    (``alpha``: crown-jacobian's alpha-optimisation of the curve, not of the sign search;
    ``opnorm``: as :func:`~nnbound.tasks.lipschitz.lipschitz_curve`'s)."""
    r_max = max_sign_radius(
        net,
        x,
        classes,
        norm=norm,
        method=method,
        layer_method=layer_method,
        direction=direction,
        shift=shift,
        eps0=eps0,
    )
    fractions = torch.linspace(0.0, 1.0, lipsteps + 1, dtype=torch.float64)
    grid = r_max.unsqueeze(1) * fractions.unsqueeze(0)
    curve = lipschitz_curve(
        net,
        x,
        classes,
        grid,
        norm=norm,
        method=method,
        layer_method=layer_method,
        direction=direction,
        shift=shift,
        alpha=alpha,
        opnorm=opnorm,
    )
    return r_max, curve
