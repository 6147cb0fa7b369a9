"""Certified robustness radius: the largest eps whose margin lower bound stays positive."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from nnbound.bounds.api import bounds
from nnbound.bounds.methods import ALL_METHODS
from nnbound.bounds.spectral import spectral_lipschitz
from nnbound.errors import InputError
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import parse_norm
from nnbound.sets.spec import all_margins_spec, margin_spec
from nnbound.tasks.search import batched_binary_search, bisect_down
from nnbound.tasks.targets import UNTARGETED


def margin_specs(labels: Tensor, targets: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(B, S, classes)`` margins: one row ``e_y - e_t`` per targeted input, all ``classes - 1``
    rows for an untargeted one (targeted rows are padded by repeating the row, which leaves
    the minimum over rows unchanged)."""
    untargeted = targets == UNTARGETED
    if bool(untargeted.all()):
        return all_margins_spec(labels, num_classes, dtype)
    if not bool(untargeted.any()):
        return margin_spec(labels, targets, num_classes, dtype)
    full = all_margins_spec(labels, num_classes, dtype)
    safe_t = torch.where(untargeted, (labels + 1) % num_classes, targets)
    single = margin_spec(labels, safe_t, num_classes, dtype).expand_as(full)
    return torch.where(untargeted.view(-1, 1, 1), full, single)


def _certify_fn(
    net: Network,
    x: Tensor,
    spec: Tensor,
    p: float,
    method: str,
    domain: tuple[float, float] | None,
    reference: bool,
) -> Callable[[Tensor, Tensor], Tensor]:
    def condition(rows: Tensor, eps: Tensor) -> Tensor:
        rows = rows.to(x.device)
        ball = LpBall.make(x[rows], eps.to(device=x.device, dtype=x.dtype), p, domain)
        b = bounds(net, ball, method, spec[rows], reference=reference)
        return (b.lower.amin(-1) > 0).cpu()

    return condition


def certified_radius(
    net: Network,
    x: Tensor,
    labels: Tensor,
    targets: Tensor,
    *,
    norm: float | str = "inf",
    method: str = "crown",
    eps0: float = 0.005,
    steps: int = 15,
    domain: tuple[float, float] | None = None,
    verify_float64: bool = True,
    reference: bool = False,
) -> Tensor:
    """Certified radius per input, ``(B,)`` float64.

    Args:
        net: the network (float32 or float64, any device).
        x: inputs ``(B, *input_shape)``.
        labels: ``(B,)`` classes whose margin must stay positive.
        targets: ``(B,)`` target classes, or ``-1`` for untargeted (all other classes).
        norm: perturbation norm ``1``, ``2`` or ``inf``.
        method: any bound method (``spectral`` uses the closed form ``margin / Lipschitz``).
        eps0, steps: the reference's binary-search start and number of evaluations.
        domain: clip the ball to this data box (off by default, as in the reference).
        verify_float64: when ``net`` is float32, re-certify each final radius in float64 and,
            where float64 does not confirm it, bisect below it in float64 -- so a reported
            radius never rests on float32 rounding.
        reference: reproduce the reference's layer-wise bounds exactly.
    """
    if method not in ALL_METHODS:
        raise InputError(f"unknown bound method {method!r}; choose from {', '.join(ALL_METHODS)}")
    if eps0 <= 0:
        raise InputError(f"the initial eps must be > 0, got {eps0}")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    p = parse_norm(norm)
    x = net.check_input(x)
    labels = torch.as_tensor(labels).reshape(-1).long().to(x.device)
    targets = torch.as_tensor(targets).reshape(-1).long().to(x.device)
    if labels.shape[0] != x.shape[0] or targets.shape[0] != x.shape[0]:
        raise InputError("x, labels and targets must have the same batch size")
    spec = margin_specs(labels, targets, net.num_outputs, net.dtype)
    if method == "spectral":
        net64 = net.to(dtype=torch.float64)
        spec64 = spec.to(torch.float64)
        x64 = x.to(torch.float64)
        margin = (spec64 @ net64.forward(x64).reshape(x.shape[0], -1, 1)).squeeze(-1)
        lip = spectral_lipschitz(net64, spec64, p)
        return (margin / lip).clamp_min(0).amin(-1).cpu()
    condition = _certify_fn(net, x, spec, p, method, domain, reference)
    radius = batched_binary_search(condition, x.shape[0], eps0, max_steps=steps)
    if verify_float64 and net.dtype != torch.float64:
        net64 = net.to(dtype=torch.float64)
        cond64 = _certify_fn(
            net64, x.to(torch.float64), spec.to(torch.float64), p, method, domain, reference
        )
        check = torch.nonzero(radius > 0).squeeze(1)
        if check.numel():
            ok = cond64(check, radius[check])
            bad = check[~ok]
            if bad.numel():
                sub = lambda rows, eps: cond64(bad[rows], eps)  # noqa: E731
                radius[bad] = bisect_down(sub, radius[bad], steps)
    return radius
