"""ReLU and leaky ReLU relaxations (Fast-Lin's parallel lines, CROWN's adaptive lower line)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.relax.base import LinearRelaxation, ParametricLines


class LowerSlope(enum.Enum):
    """How an unstable (l < 0 < u) ReLU's lower line is chosen (its upper line is always the
    chord from (l, 0) to (u, u))."""

    PARALLEL = "parallel"
    """Fast-Lin: same slope as the upper line, through the origin."""
    ADAPTIVE = "adaptive"
    """CROWN-adaptive: slope 1 if ``|u| >= |l|`` else 0 (ties -> 1, as the reference's
    ``crown_adaptive_bound``)."""
    ADAPTIVE_STRICT = "adaptive-strict"
    """CROWN-general's ReLU rule: slope 1 only if ``|u| > |l|`` (ties -> 0, reference
    ``relu_lb_pn``)."""
    ZERO = "zero"
    """Always slope 0 (the triangle relaxation's lower face y >= 0)."""


@dataclass(frozen=True)
class LeakyReluRelaxation:
    """``max(z, alpha * z)`` for ``0 <= alpha <= 1`` (alpha = 0 is plain ReLU).

    Unstable neurons: upper line is the chord ``(u - alpha l)/(u - l) z + l u (alpha - 1)/(u - l)``;
    the lower line follows ``lower`` (for leaky ReLU the adaptive choice is between slopes 1
    and alpha, both through the origin).
    """

    alpha: float = 0.0
    lower: LowerSlope = LowerSlope.ADAPTIVE

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            from nnbound.errors import UnsupportedError

            raise UnsupportedError(
                f"leaky ReLU slope {self.alpha} outside [0, 1] is not convex; no relaxation"
            )

    @property
    def is_piecewise_linear(self) -> bool:
        return True

    @property
    def kinks(self) -> tuple[float, ...]:
        return (0.0,)

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        a = self.alpha
        active = lower >= 0
        inactive = upper <= 0
        unstable = ~(active | inactive)
        width = torch.where(unstable, upper - lower, torch.ones_like(upper))
        chord_slope = (upper - a * lower) / width
        chord_bias = lower * upper * (a - 1.0) / width
        one = torch.ones_like(lower)
        stable_slope = torch.where(active, one, one * a)
        upper_slope = torch.where(unstable, chord_slope, stable_slope)
        upper_bias = torch.where(unstable, chord_bias, torch.zeros_like(lower))
        if self.lower is LowerSlope.PARALLEL:
            unstable_lower = chord_slope
        elif self.lower is LowerSlope.ADAPTIVE:
            unstable_lower = torch.where(upper.abs() >= lower.abs(), one, one * a)
        elif self.lower is LowerSlope.ADAPTIVE_STRICT:
            unstable_lower = torch.where(upper.abs() > lower.abs(), one, one * a)
        else:
            unstable_lower = one * a
        lower_slope = torch.where(unstable, unstable_lower, stable_slope)
        return LinearRelaxation(lower_slope, torch.zeros_like(lower), upper_slope, upper_bias)

    def parametric(self, lower: Tensor, upper: Tensor) -> ParametricLines:
        """alpha-CROWN's family: an unstable neuron's lower line ``s z`` with any slope
        ``s = alpha + theta (1 - alpha)`` in ``[alpha, 1]`` lies below ``max(z, alpha z)``
        (below ``z`` for ``z >= 0`` as ``s <= 1``, below ``alpha z`` for ``z <= 0`` as
        ``s >= alpha``); stable neurons and the upper chord stay fixed."""
        base = self.linear(lower, upper)
        a = self.alpha
        free = (lower < 0) & (upper > 0)
        if a >= 1.0:  # the identity: nothing to choose
            free = torch.zeros_like(free)
        span = max(1.0 - a, 1e-30)
        default = torch.where(free, (base.lower_slope - a) / span, torch.zeros_like(lower))

        def make(theta_lower: Tensor | None, theta_upper: Tensor | None) -> LinearRelaxation:
            del theta_upper  # the upper chord is the tightest upper line: no parameter
            fixed = base.lower_slope.unsqueeze(1)
            if theta_lower is None:
                slope = fixed
            else:
                slope = torch.where(free.unsqueeze(1), a + theta_lower * (1.0 - a), fixed)
            return LinearRelaxation(
                slope,
                torch.zeros_like(fixed),
                base.upper_slope.unsqueeze(1),
                base.upper_bias.unsqueeze(1),
            )

        return ParametricLines(default, None, free, None, make)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        a = self.alpha
        return torch.maximum(lower, a * lower), torch.maximum(upper, a * upper)

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        a = self.alpha
        # The reference's relu_grad_bounds: l >= 0 -> [1, 1], u <= 0 -> [a, a], else [a, 1].
        lo = torch.where(lower >= 0, torch.ones_like(lower), torch.full_like(lower, a))
        hi = torch.where(upper <= 0, torch.full_like(upper, a), torch.ones_like(upper))
        hi = torch.where(lower >= 0, torch.ones_like(upper), hi)
        return lo, hi


def ReluRelaxation(lower: LowerSlope = LowerSlope.ADAPTIVE) -> LeakyReluRelaxation:
    """The ReLU relaxation (a leaky ReLU with slope 0)."""
    return LeakyReluRelaxation(0.0, lower)
