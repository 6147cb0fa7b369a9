"""Jacobian-based certified radius: the reference's ``compute_bounds_integral`` (spec §9.1).

eps is certified for a margin ``g = c . f`` iff ``g(x0) - sum_{k=1..n} L(k eps / n) eps / n >= 0``
for every margin row, where ``L(r)`` is the local Lipschitz constant of ``g`` over the p-ball of
radius ``r`` (from Fast-Lip or RecurJac Jacobian bounds) and ``n`` = ``lipsteps``. It is sound:
along the segment from x0 to any x with ``||x - x0||_p <= eps``, the point at distance ``t``
lies in the ball of radius ``t``, so ``g(x) >= g(x0) - integral_0^eps L(t) dt``, and the sum is
an upper Riemann sum of that integral (``L(k eps/n)`` bounds the gradient on the whole
``k``-th piece). The largest such eps is found by the reference's binary search, batched over
inputs; a float32 result is re-certified in float64 (and bisected down where float64 does not
confirm it), as for the layer-bound radius.

Where we differ from the reference: with a data domain (``--bounded-input``) each ball is
intersected with it (the reference ignores the domain on this path); this stays sound because
the segment from a centre inside the domain stays inside it, and it is dropped when a centre
lies outside the domain.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from nnbound.errors import InputError
from nnbound.jacobian.api import check_options
from nnbound.jacobian.lipschitz import local_lipschitz
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import parse_norm
from nnbound.tasks.radius import margin_specs
from nnbound.tasks.search import batched_binary_search, recheck


def _integral_condition(
    net: Network,
    x: Tensor,
    spec: Tensor,
    p: float,
    options: dict,
    lipsteps: int,
    domain: tuple[float, float] | None,
) -> Callable[[Tensor, Tensor], Tensor]:
    margin0 = (spec @ net.forward(x).detach().reshape(x.shape[0], -1, 1)).squeeze(-1)
    fractions = torch.arange(1, lipsteps + 1, dtype=torch.float64) / lipsteps

    def condition(rows: Tensor, eps: Tensor) -> Tensor:
        rows = rows.to(x.device)
        grid = eps.unsqueeze(1) * fractions.unsqueeze(0)  # (b, n): e_k = k eps / n
        ball = LpBall.make(x[rows], grid.to(device=x.device, dtype=x.dtype), p, domain)
        with torch.no_grad():
            lip = local_lipschitz(net, ball, spec[rows], **options)  # (b, n, S)
        spent = lip.to(torch.float64).sum(1) * (eps.to(lip.device) / lipsteps).unsqueeze(1)
        budget = margin0[rows].to(torch.float64) - spent
        return (budget.amin(-1) >= 0).cpu()

    return condition


def jacobian_certified_radius(
    net: Network,
    x: Tensor,
    labels: Tensor,
    targets: Tensor,
    *,
    norm: float | str = "inf",
    method: str = "recurjac",
    layer_method: str = "crown-general",
    direction: int = -1,
    shift: int = 0,
    lipsteps: int = 15,
    eps0: float = 0.005,
    steps: int = 15,
    domain: tuple[float, float] | None = None,
    verify_float64: bool = True,
) -> Tensor:
    """Jacobian-certified radius per input, ``(B,)`` float64.

    Args:
        net: the network (float32 or float64, any device).
        x: inputs ``(B, *input_shape)``.
        labels: ``(B,)`` classes whose margin must stay positive.
        targets: ``(B,)`` target classes, or ``-1`` for untargeted (all other classes).
        norm: perturbation norm ``1``, ``2`` or ``inf``.
        method: ``recurjac`` or ``fastlip``.
        layer_method: layer-wise method of the pre-activation bounds.
        direction, shift: RecurJac's order and forward shift.
        lipsteps: pieces of the Lipschitz integral (the reference's ``--lipsteps``).
        eps0, steps: the binary-search start and number of evaluations.
        domain: intersect the balls with this data box (see the module docstring).
        verify_float64: re-certify float32 results in float64.
    """
    method = check_options(method, layer_method, direction, shift)
    if eps0 <= 0:
        raise InputError(f"the initial eps must be > 0, got {eps0}")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if lipsteps < 1:
        raise InputError(f"lipsteps must be >= 1, got {lipsteps}")
    p = parse_norm(norm)
    x = net.check_input(x)
    labels = torch.as_tensor(labels).reshape(-1).long().to(x.device)
    targets = torch.as_tensor(targets).reshape(-1).long().to(x.device)
    if labels.shape[0] != x.shape[0] or targets.shape[0] != x.shape[0]:
        raise InputError("x, labels and targets must have the same batch size")
    if domain is not None and not bool(((x >= domain[0]) & (x <= domain[1])).all()):
        domain = None  # the integral needs the segment from the centre inside the set
    spec = margin_specs(labels, targets, net.num_outputs, net.dtype)
    options = {
        "method": method,
        "layer_method": layer_method,
        "direction": direction,
        "shift": shift,
    }
    condition = _integral_condition(net, x, spec, p, options, lipsteps, domain)
    radius = batched_binary_search(condition, x.shape[0], eps0, max_steps=steps)
    if verify_float64 and net.dtype != torch.float64:
        cond64 = _integral_condition(
            net.to(dtype=torch.float64),
            x.to(torch.float64),
            spec.to(torch.float64),
            p,
            options,
            lipsteps,
            domain,
        )
        radius = recheck(cond64, radius, steps)
    return radius
