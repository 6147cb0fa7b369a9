"""Free lines of the derivative relaxations, for alpha-optimised Jacobian bounds
(:mod:`nnbound.jacobian.alpha_jacobian`): the ``parametric`` families of
:class:`~nnbound.ops.derivative.StepDerivativeRelaxation` and
:class:`~nnbound.ops.derivative.SmoothDerivativeRelaxation` (see
:class:`~nnbound.relax.base.ParametricLines`: every ``theta`` in ``[0, 1]`` gives sound lines).

* Step ``alpha + (1 - alpha) H(z)`` on an unstable ``[l, u]`` (``[alpha, 1]`` at 0): the upper
  line ``1 + s z`` with ``s = theta (1 - alpha) / -l`` is >= 1 for ``z >= 0`` and >= ``alpha``
  down to ``z = l``; the lower line ``alpha + s z`` with ``s = theta (1 - alpha) / u`` is <=
  ``alpha`` for ``z <= 0`` and <= 1 up to ``z = u``. ``theta = 0`` is the constant (the
  default), ``theta = 1`` the line through the far corner.
* Smooth ``act'`` on an interval inside one convexity piece: the tangent at ``l + theta (u -
  l)`` lies below a convex piece (above a concave one), for every ``theta``; the chord on the
  other side is already the tightest line. Intervals across an inflection keep their fixed
  lines.

Lines are built in float64, their intercepts moved outward by the same ulp margins as the
fixed lines (for the step: at the slope ``theta`` gives, detached from the gradient; for
smooth derivatives: at the family's largest slope).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nnbound.ops.relaxed_lines import ulp_margin
from nnbound.relax.base import LinearRelaxation, ParametricLines


def _fixed(base: LinearRelaxation) -> tuple[Tensor, ...]:
    """The default lines as ``(N, 1, *shape)``, to broadcast over spec rows."""
    return tuple(
        t.unsqueeze(1)
        for t in (base.lower_slope, base.lower_bias, base.upper_slope, base.upper_bias)
    )


def step_family(
    alpha: float, lower: Tensor, upper: Tensor, base: LinearRelaxation
) -> ParametricLines:
    """The family of ``alpha + (1 - alpha) H(z)`` on ``[lower, upper]`` around ``base`` (the
    relaxation's own lines: the constants, or the corner lines with ``step_lines``)."""
    dtype = lower.dtype
    l = lower.to(torch.float64)
    u = torch.maximum(upper.to(torch.float64), l)
    jump = 1.0 - alpha
    free_up = (l < 0) & (u >= 0) & (jump > 0)
    free_lo = (l <= 0) & (u > 0) & (jump > 0)
    reach = torch.maximum(l.abs(), u.abs())
    s_up = jump / torch.where(free_up, -l, 1.0)
    s_lo = jump / torch.where(free_lo, u, 1.0)
    reach_up, reach_lo = (s_up * reach).unsqueeze(1), (s_lo * reach).unsqueeze(1)
    one, at_alpha = torch.ones_like(reach_up), torch.full_like(reach_lo, alpha)
    default_up = torch.where(free_up & (base.upper_slope > 0), 1.0, 0.0).to(dtype)
    default_lo = torch.where(free_lo & (base.lower_slope > 0), 1.0, 0.0).to(dtype)
    ls, lb, us, ub = _fixed(base)
    s_up_d, s_lo_d = s_up.to(dtype).unsqueeze(1), s_lo.to(dtype).unsqueeze(1)
    f_up, f_lo = free_up.unsqueeze(1), free_lo.unsqueeze(1)

    def make(theta_lower: Tensor | None, theta_upper: Tensor | None) -> LinearRelaxation:
        lo_s, lo_b, up_s, up_b = ls, lb, us, ub
        # the margin at the slope actually used (a constant for the gradient)
        if theta_lower is not None:
            theta_lower = theta_lower.clamp(0.0, 1.0)
            lo_s = torch.where(f_lo, theta_lower * s_lo_d, ls)
            m = ulp_margin(dtype, at_alpha, theta_lower.detach().double() * reach_lo)
            lo_b = torch.where(f_lo, (alpha - m).to(dtype), lb)
        if theta_upper is not None:
            theta_upper = theta_upper.clamp(0.0, 1.0)
            up_s = torch.where(f_up, theta_upper * s_up_d, us)
            m = ulp_margin(dtype, one, theta_upper.detach().double() * reach_up)
            up_b = torch.where(f_up, (1.0 + m).to(dtype), ub)
        lo_s, lo_b, up_s, up_b = torch.broadcast_tensors(lo_s, lo_b, up_s, up_b)
        return LinearRelaxation(lo_s, lo_b, up_s, up_b)

    return ParametricLines(default_lo, default_up, free_lo, free_up, make)


def smooth_family(
    fn: object,
    lower: Tensor,
    upper: Tensor,
    base: LinearRelaxation,
    one_piece: Tensor,
    convex: Tensor,
) -> ParametricLines:
    """The tangent-point family of a smooth derivative ``fn``
    (:class:`~nnbound.ops.derivative.SmoothDerivative`) on ``[lower, upper]``; ``one_piece`` /
    ``convex`` say per entry whether the interval lies in one convexity piece and which."""
    from nnbound.ops.derivative import SmoothDerivative, _tangent, smooth_interval64

    assert isinstance(fn, SmoothDerivative)
    dtype = lower.dtype
    l = lower.to(torch.float64)
    u = torch.maximum(upper.to(torch.float64), l)
    wide = one_piece & (u > l)
    free_lo, free_up = wide & convex, wide & ~convex
    i_lo, i_up = smooth_interval64(fn, l, u)
    reach = torch.maximum(l.abs(), u.abs())
    # the family's largest slope on [l, u] (|g'| at the ends or the inflection points between)
    s_max = torch.maximum(fn.dg(l).abs(), fn.dg(u).abs())
    m_lo = ulp_margin(dtype, i_lo, s_max * reach, i_lo).unsqueeze(1)
    m_up = ulp_margin(dtype, i_up, s_max * reach, i_up).unsqueeze(1)
    half = torch.full_like(lower, 0.5)
    zero = torch.zeros_like(lower)
    ls, lb, us, ub = _fixed(base)
    l1, w1 = l.unsqueeze(1), (u - l).unsqueeze(1)
    f_lo, f_up = free_lo.unsqueeze(1), free_up.unsqueeze(1)

    def tangent(theta: Tensor) -> tuple[Tensor, Tensor]:
        return _tangent(fn, l1 + theta.to(torch.float64).clamp(0.0, 1.0) * w1)

    def make(theta_lower: Tensor | None, theta_upper: Tensor | None) -> LinearRelaxation:
        lo_s, lo_b, up_s, up_b = ls, lb, us, ub
        if theta_lower is not None:
            s, b = tangent(theta_lower)
            lo_s = torch.where(f_lo, s.to(dtype), ls)
            lo_b = torch.where(f_lo, (b - m_lo).to(dtype), lb)
        if theta_upper is not None:
            s, b = tangent(theta_upper)
            up_s = torch.where(f_up, s.to(dtype), us)
            up_b = torch.where(f_up, (b + fn.upper_gap + m_up).to(dtype), ub)
        lo_s, lo_b, up_s, up_b = torch.broadcast_tensors(lo_s, lo_b, up_s, up_b)
        return LinearRelaxation(lo_s, lo_b, up_s, up_b)

    return ParametricLines(
        torch.where(free_lo, half, zero),
        torch.where(free_up, half, zero),
        free_lo,
        free_up,
        make,
    )


__all__ = ["smooth_family", "step_family"]
