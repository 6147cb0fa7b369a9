"""Relaxations of convex activations (softplus, ELU with alpha <= 1): chord above, tangent
below at the midpoint -- the CROWN-general rule for a convex region. The reference has no
bound code for these; this is the standard choice, not a transcription."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.relax.base import LinearRelaxation
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

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        fn = self.function
        gap = fn.gap_on(upper)
        return fn.f(lower) - gap, fn.f(upper) + gap

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return self.function.df(lower), self.function.df(upper)
