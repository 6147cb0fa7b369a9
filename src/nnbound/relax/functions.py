"""Smooth activations and their derivatives, as torch functions (shared by relaxations)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class SmoothFunction:
    """An activation ``f`` with derivative ``df`` (both element-wise torch functions).

    ``gap`` bounds ``|network forward - f|`` for inputs above ``gap_from``, where the network
    computes the activation differently from the smooth ``f`` the relaxation uses (torch's
    softplus returns ``x`` exactly above 20); relaxations of intervals reaching there widen
    their lines by it.
    """

    name: str
    f: Callable[[Tensor], Tensor]
    df: Callable[[Tensor], Tensor]
    gap: float = 0.0
    gap_from: float = math.inf
    slope_point: Callable[[Tensor], Tensor] | None = None
    """For S-shaped functions: ``z >= 0`` with ``df(z) = slope`` (``nan`` where no such point;
    the derivative is even, so ``-z`` is the other one). Used to check a line exactly."""

    def gap_on(self, upper: Tensor) -> Tensor:
        """The widening needed on intervals with upper end ``upper``."""
        return torch.where(upper > self.gap_from, self.gap, 0.0).to(upper.dtype)


def _dtanh(x: Tensor) -> Tensor:
    return 1.0 / torch.cosh(x).square()


def _dsigmoid(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def _darctan(x: Tensor) -> Tensor:
    return 1.0 / (1.0 + x.square())


def _tanh_slope_point(a: Tensor) -> Tensor:  # 1 / cosh(z)^2 = a
    return torch.acosh(1.0 / torch.sqrt(a))


def _sigmoid_slope_point(a: Tensor) -> Tensor:  # s (1 - s) = a, s >= 1/2
    s = 0.5 * (1.0 + torch.sqrt(1.0 - 4.0 * a))
    return torch.log(s) - torch.log1p(-s)


def _arctan_slope_point(a: Tensor) -> Tensor:  # 1 / (1 + z^2) = a
    return torch.sqrt(1.0 / a - 1.0)


TANH = SmoothFunction("tanh", torch.tanh, _dtanh, slope_point=_tanh_slope_point)
SIGMOID = SmoothFunction("sigmoid", torch.sigmoid, _dsigmoid, slope_point=_sigmoid_slope_point)
ARCTAN = SmoothFunction("arctan", torch.atan, _darctan, slope_point=_arctan_slope_point)


def _softplus_exact(x: Tensor) -> Tensor:
    # log(1 + e^x) without torch's threshold (F.softplus returns x for x > 20): the exact
    # function is convex, the thresholded one is not quite.
    return torch.clamp(x, min=0) + torch.log1p(torch.exp(-x.abs()))


# F.softplus(x) = x for x > 20 falls short of log(1 + e^x) by at most log1p(e^-20) < 2.1e-9.
SOFTPLUS = SmoothFunction("softplus", _softplus_exact, torch.sigmoid, gap=2.1e-9, gap_from=20.0)


def elu_function(alpha: float) -> SmoothFunction:
    def f(x: Tensor) -> Tensor:
        return F.elu(x, alpha)

    def df(x: Tensor) -> Tensor:
        return torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(torch.clamp(x, max=0.0)))

    return SmoothFunction("elu", f, df)


S_SHAPED = {"tanh": TANH, "sigmoid": SIGMOID, "arctan": ARCTAN}
"""Functions convex on z < 0 and concave on z > 0 with an even, unimodal derivative."""
