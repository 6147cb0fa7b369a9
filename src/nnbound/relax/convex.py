"""Relaxations of convex activations (softplus, ELU with alpha <= 1): chord above, tangent
below at the midpoint -- the CROWN-general rule for a convex region. The reference has no
bound code for these; this is the standard choice, not a transcription."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.relax.base import LinearRelaxation, ParametricLines
from nnbound.relax.functions import SmoothFunction
from nnbound.relax.s_shaped import _chord, _outward_margin, _tangent


@dataclass(frozen=True)
class ConvexRelaxation:
    """A convex, increasing activation with an increasing derivative."""

    function: SmoothFunction

    @property
    def is_piecewise_linear(self) -> bool:
        return False

    @property
    def kinks(self) -> tuple[float, ...]:
        return ()

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        fn = self.function
        dtype = lower.dtype
        l = lower.to(torch.float64)
        u = torch.maximum(upper.to(torch.float64), l)
        up_s, up_b = _chord(fn, l, u)
        lo_s, lo_b = _tangent(fn, 0.5 * (l + u))
        reach = torch.maximum(l.abs(), u.abs())
        gap = fn.gap_on(u)
        lo_margin = _outward_margin(dtype, lo_b, lo_s * reach, fn.f(l)) + gap
        up_margin = _outward_margin(dtype, up_b, up_s * reach, fn.f(u)) + gap
        return LinearRelaxation(
            lo_s.to(dtype),
            (lo_b - lo_margin).to(dtype),
            up_s.to(dtype),
            (up_b + up_margin).to(dtype),
        )

    def parametric(self, lower: Tensor, upper: Tensor) -> ParametricLines:
        """alpha-CROWN's family: the lower tangent at any ``d = l + theta (u - l)`` (a tangent
        of a convex function lies below it everywhere); the chord above stays (it is the
        tightest upper line). ``theta = 1/2`` gives :meth:`linear`'s midpoint tangent."""
        fn = self.function
        dtype = lower.dtype
        l = lower.to(torch.float64)
        u = torch.maximum(upper.to(torch.float64), l)
        base = self.linear(lower, upper)
        reach = torch.maximum(l.abs(), u.abs()).unsqueeze(1)
        f_l, gap = fn.f(l).unsqueeze(1), fn.gap_on(u).unsqueeze(1)
        l1, u1 = l.unsqueeze(1), u.unsqueeze(1)

        def make(theta_lower: Tensor | None, theta_upper: Tensor | None) -> LinearRelaxation:
            del theta_upper
            ls, lb, us, ub = (
                t.unsqueeze(1)
                for t in (base.lower_slope, base.lower_bias, base.upper_slope, base.upper_bias)
            )
            if theta_lower is not None:
                d = torch.minimum(
                    torch.maximum(l1 + theta_lower.to(torch.float64) * (u1 - l1), l1), u1
                )
                s, b = _tangent(fn, d)
                margin = _outward_margin(dtype, b, s * reach, f_l) + gap
                ls, lb = s.to(dtype), (b - margin).to(dtype)
            return LinearRelaxation(ls, lb, us, ub)

        free = torch.ones_like(lower, dtype=torch.bool)
        return ParametricLines(torch.full_like(lower, 0.5), None, free, None, make)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        fn = self.function
        gap = fn.gap_on(upper)
        return fn.f(lower) - gap, fn.f(upper) + gap

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return self.function.df(lower), self.function.df(upper)
