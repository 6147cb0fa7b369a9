"""What every activation relaxation provides, as a value type.

A relaxation maps pre-activation bounds ``l <= z <= u`` (element-wise tensors of any shape) to
two lines that sandwich the activation on ``[l, u]``::

    lower_slope * z + lower_bias  <=  act(z)  <=  upper_slope * z + upper_bias

Bound propagation picks the upper or the lower line per entry from the sign of the coefficient
it multiplies, so one object serves Fast-Lin, CROWN and CROWN-general alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class LinearRelaxation:
    """Element-wise lines, each tensor shaped like the bounds they came from."""

    lower_slope: Tensor
    lower_bias: Tensor
    upper_slope: Tensor
    upper_bias: Tensor


class Relaxation(Protocol):
    """One activation's relaxation: lines, output interval and derivative interval on [l, u]."""

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        """Sound lines below and above the activation on ``[lower, upper]``."""
        ...

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Bounds of the activation's output on ``[lower, upper]``."""
        ...

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Bounds of the activation's derivative on ``[lower, upper]`` (for Jacobian bounds)."""
        ...

    @property
    def is_piecewise_linear(self) -> bool:
        """True if stable neurons relax exactly whatever their bounds (ReLU, leaky ReLU): then
        only unstable neurons need tight pre-activation bounds."""
        ...

    @property
    def kinks(self) -> tuple[float, ...]:
        """Where a piecewise-linear activation changes slope (empty for smooth ones): a neuron
        is unstable, i.e. relaxed inexactly, when a kink lies strictly inside ``(l, u)``."""
        ...


def straddles(lower: Tensor, upper: Tensor, kinks: tuple[float, ...]) -> Tensor:
    """Where a kink lies strictly inside ``(lower, upper)``: the unstable neurons, whose lines
    depend on their bounds."""
    across = torch.zeros_like(lower, dtype=torch.bool)
    for kink in kinks:
        across |= (lower < kink) & (upper > kink)
    return across


LineMaker = Callable[[Tensor | None, Tensor | None], LinearRelaxation]
"""``(theta_lower, theta_upper) -> lines`` of a :class:`ParametricLines` family."""


@dataclass(frozen=True, eq=False)
class ParametricLines:
    """A family of sound lines on fixed bounds ``[l, u]``, indexed per entry by free
    parameters ``theta`` in ``[0, 1]`` (alpha-CROWN optimises them; every value in the range
    gives lines that sandwich the activation, so projecting onto ``[0, 1]`` keeps any iterate
    sound).

    A relaxation offers one through an optional ``parametric(lower, upper)`` method (ReLU's
    lower slope, the bounded ReLU's two kink slopes, tangent points of S-shaped and convex
    functions); relaxations without one keep their fixed lines.

    Attributes:
        default_lower, default_upper: ``(N, *shape)`` the parameters that give the
            relaxation's own lines (``None``: that line has no parameter).
        free_lower, free_upper: ``(N, *shape)`` where the parameter changes the line
            (``None`` when it has none).
        make: ``(theta_lower, theta_upper) -> lines``; each ``theta`` is ``(N, S, *shape)``
            (or ``None`` for the default), the lines come back ``(N, S, *shape)``
            (broadcastable), differentiable in ``theta``.
    """

    default_lower: Tensor | None
    default_upper: Tensor | None
    free_lower: Tensor | None
    free_upper: Tensor | None
    make: LineMaker
